"""Global-scope allocation across layers whose scales differ: the default
(``score_norm="rms"``, ``max_layer_sparsity="auto"``) never empties a layer and
still meets the total; ``score_norm=None, max_layer_sparsity=None`` restores
the raw global threshold (which does empty a layer)."""
import copy
import warnings

import pytest
import torch
from torch import nn

import tilesparse
from tilesparse import Pruner, sparsify
from tilesparse.patterns import masks_for, resolve_max_layer_sparsity


def _ffn_block():
    """The new user's block of issue 11, at random init: the 1024->256 layer's
    weights are half the size of the 256->1024 layer's (fan-in 1024 vs 256)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.LayerNorm(256), nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256))


def _scaled_mlp(scales=(100.0, 1.0, 0.01)):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
    with torch.no_grad():
        for lin, c in zip((model[0], model[2], model[4]), scales):
            lin.weight.mul_(c)
    return model


def _layer_sparsity(model):
    return {k: v["sparsity"] for k, v in tilesparse.sparsity_summary(model).items()}


def test_default_sparsify_keeps_every_layer_of_the_ffn_block():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "pruned entirely" warning either
        model = sparsify(_ffn_block(), 0.75)
    per = _layer_sparsity(model)
    assert abs(per["__total__"] - 0.75) <= 0.5 * 128 / (2 * 256 * 1024)  # half a tile row segment
    for name in ("1", "3"):
        assert per[name] <= resolve_max_layer_sparsity("auto", 0.75) + 1e-9
        assert abs(per[name] - 0.75) < 0.05, per  # same distribution after normalising: near uniform


def test_raw_threshold_opt_out_reproduces_the_empty_layer():
    with pytest.warns(UserWarning, match="pruned entirely"):
        model = sparsify(_ffn_block(), 0.75, score_norm=None, max_layer_sparsity=None)
    per = _layer_sparsity(model)
    assert per["3"] == 1.0 and abs(per["__total__"] - 0.75) < 1e-3


@pytest.mark.parametrize("pattern", ["tw", "ew", "bw"])
def test_default_global_scope_on_layers_scaled_by_1e4(pattern):
    """Layers scaled by 100, 1 and 0.01: no layer is emptied or pruned beyond the
    cap, and the total meets the target (within a block for bw)."""
    model = sparsify(_scaled_mlp(), 0.75, tile=32, pattern=pattern)
    per = _layer_sparsity(model)
    cap = resolve_max_layer_sparsity("auto", 0.75)
    tol = 32 * 32 / per_numel(model) if pattern == "bw" else 0.5 * 32 / per_numel(model) * 2
    assert abs(per["__total__"] - 0.75) <= tol, per
    for name in ("0", "2", "4"):
        assert per[name] <= cap + 1e-9, per
    if pattern != "bw":
        # normalised: the scales no longer decide, the layers stay near the target
        assert max(abs(per[n] - 0.75) for n in ("0", "2", "4")) < 0.06, per


def per_numel(model):
    return tilesparse.sparsity_summary(model)["__total__"]["numel"]


def test_rms_normalised_masks_do_not_depend_on_layer_scale():
    """Scaling one layer's weights by a constant leaves every mask unchanged."""
    base = sparsify(_scaled_mlp((1.0, 1.0, 1.0)), 0.7, tile=32)
    scaled = sparsify(_scaled_mlp((1e3, 1.0, 1e-3)), 0.7, tile=32)
    for i in (0, 2, 4):
        assert torch.equal(base[i].mask, scaled[i].mask)


def test_cap_alone_bounds_a_small_layer_and_keeps_the_total():
    """Raw scores with the default cap: the small layer (and the 128-fan-in one,
    whose init is smaller than the first's) are pruned at the cap, and the
    threshold re-solved over the first layer still meets the total."""
    model = sparsify(_scaled_mlp((1.0, 1.0, 1e-3)), 0.75, tile=32, score_norm=None)
    per = _layer_sparsity(model)
    cap = resolve_max_layer_sparsity("auto", 0.75)
    for name in ("2", "4"):
        assert abs(per[name] - cap) <= 0.5 * 32 / (128 * 64) + 1e-9, per
    assert abs(per["__total__"] - 0.75) <= 32 / per_numel(model)
    assert per["0"] < 0.75


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_auto_cap_follows_the_target(sparsity):
    assert resolve_max_layer_sparsity("auto", sparsity) == pytest.approx(1 - (1 - sparsity) / 4)
    assert resolve_max_layer_sparsity(None, sparsity) is None
    assert resolve_max_layer_sparsity(0.8, sparsity) == 0.8
    mats = [torch.rand(64, 64, dtype=torch.float64), torch.rand(64, 64, dtype=torch.float64) * 1e-4]
    masks = masks_for("tw", mats, sparsity, 16, score_norm=None)
    per = [1 - m.double().mean().item() for m in masks]
    assert per[1] <= resolve_max_layer_sparsity("auto", sparsity) + 0.5 * 16 / 4096
    assert abs(sum(per) / 2 - sparsity) <= 16 / 4096


def test_pruner_default_keeps_every_layer():
    model = _ffn_block()
    pruner = Pruner(model, 0.75, schedule=[(0, 0.5), (1, 0.75)])
    for _ in range(2):
        pruner.step()
        assert all(s < 1.0 for s in pruner.layer_sparsity().values())
    assert abs(_layer_sparsity(model)["__total__"] - 0.75) < 1e-3


def test_allocation_argument_errors():
    for kw, err, match in ((dict(score_norm="l2"), ValueError, "score_norm must be 'rms' or None"),
                           (dict(max_layer_sparsity="max"), ValueError, "max_layer_sparsity must be a float, 'auto'"),
                           (dict(max_layer_sparsity=1.5), ValueError, "max_layer_sparsity must be in"),
                           (dict(max_layer_sparsity=True), TypeError, "max_layer_sparsity must be a float")):
        model = _scaled_mlp()
        before = copy.deepcopy(model)
        with pytest.raises(err, match=match):
            sparsify(model, 0.5, tile=32, **kw)
        assert all(type(a) is type(b) for a, b in zip(model, before))  # nothing was swapped
        with pytest.raises(err, match=match):
            Pruner(_scaled_mlp(), 0.5, tile=32, **kw)
        with pytest.raises(err, match=match):
            masks_for("tw", [torch.rand(8, 8)] * 2, 0.5, 4, **kw)
