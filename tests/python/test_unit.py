"""The ``unit`` mask option: aligned runs ``[u*unit, (u+1)*unit)`` of input
features of a tile kept or pruned together, through the operators, the
patterns, sparsify, Pruner, the modules and torch.ao, checked against
references written here (run scores from ``reference_segment_scores``)."""
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tilesparse
from tilesparse import Pruner, TileLayout, TileSparseConv2d, TileSparseLinear, ops, sparsify
from tilesparse.ao import TileWiseSparsifier
from tilesparse.patterns import masks_for, mask_for, tew_masks
from tilesparse.testing import device_params, is_tile_wise, reference_segment_scores, reference_tw_linear

DEVICES = device_params()


def _scores(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, k, generator=g, dtype=torch.float64)


def _runs(k, unit):
    return [(b, min(k, b + unit)) for b in range(0, k, unit)]


def runs_whole(mask: torch.Tensor, unit: int) -> bool:
    """Every output feature keeps each aligned run whole or not at all."""
    mask = mask.reshape(-1, mask.shape[-1]).cpu()
    for b, e in _runs(mask.shape[1], unit):
        part = mask[:, b:e]
        if not bool((part.all(1) | ~part.any(1)).all()):
            return False
    return True


def reference_run_scores(scores, tile, unit, cols=None):
    """[T, U]: root mean square of the segment scores over each aligned run."""
    seg = reference_segment_scores(scores, tile, cols)
    return torch.stack([seg[:, b:e].square().mean(1).sqrt() for b, e in _runs(scores.shape[1], unit)], 1) \
        if seg.numel() else seg.new_zeros(seg.shape[0], 0)


def _check_unit_selection(s, mask, tile, sparsity, unit, k_align=1):
    n, k = s.shape
    assert is_tile_wise(mask, tile)
    assert runs_whole(mask, unit), "a run is kept in part"
    runs = _runs(k, unit)
    a = max(1, k_align // unit)
    kept_runs = torch.stack([mask[:, b] for b, _ in runs], 1).sum(1)
    assert bool(((kept_runs % a == 0) | (kept_runs == len(runs))).all()), kept_runs
    if a == 1:  # 1-D, single-run groups: one ranking of runs across tiles
        rs = reference_run_scores(s, tile, unit)
        kept = torch.stack([mask[t * tile, [b for b, _ in runs]] for t in range(rs.shape[0])])
        if kept.any() and (~kept).any():
            assert float(rs[~kept].max()) <= float(rs[kept].min()) * (1 + 1e-12), "a better run was pruned"
    target = math.floor(sparsity * n * k + 0.5)
    pruned = n * k - int(mask.sum())
    assert abs(pruned - target) <= min(tile, n) * min(max(k_align, unit), k) / 2, (pruned, target)


# ---------------------------------------------------------------------------
# operators
# ---------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 40), tile=st.integers(1, 12), sparsity=st.floats(0.0, 0.95),
       unit=st.sampled_from([2, 3, 4, 8, 16]), align_mult=st.sampled_from([0, 0, 1, 2]), seed=st.integers(0, 2**16))
def test_tile_mask_unit_properties(n, k, tile, sparsity, unit, align_mult, seed):
    """Random shapes (K not a multiple of unit, unit > K, partial tiles),
    k_align 1 or a multiple of unit: runs are whole, kept runs outrank pruned
    ones, and the sparsity is within half a group of the target."""
    s = _scores(n, k, seed)
    k_align = unit * align_mult if align_mult else 1
    mask = ops.tile_mask(s, tile, sparsity, 0.0, k_align, unit)
    _check_unit_selection(s, mask, tile, sparsity, unit, k_align)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,k,tile,sparsity,col_sparsity,unit", [
    (300, 96, 128, 0.75, 0.0, 8),
    (256, 100, 64, 0.75, 0.0, 16),  # K % unit != 0: a partial last run
    (200, 64, 32, 0.5, 0.25, 8),    # 2-D TW
])
def test_tile_mask_unit_realistic_sizes(device, n, k, tile, sparsity, col_sparsity, unit):
    s = _scores(n, k, seed=5).to(device)
    mask = ops.tile_mask(s, tile, sparsity, col_sparsity, 1, unit)
    assert mask.device == s.device
    mask = mask.cpu()
    assert is_tile_wise(mask, tile) and runs_whole(mask, unit)
    target = math.floor(sparsity * n * k + 0.5)
    assert abs(n * k - int(mask.sum()) - target) <= tile * unit / 2


def test_unit_one_is_the_default():
    s = _scores(50, 30, 1)
    for sp, cs, ka in ((0.6, 0.0, 1), (0.75, 0.3, 4)):
        assert torch.equal(ops.tile_mask(s, 8, sp, cs, ka, 1), ops.tile_mask(s, 8, sp, cs, ka))
    assert torch.equal(ops.tile_segment_scores(s, 8, None, 1), ops.tile_segment_scores(s, 8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("unit", [1, 3, 8, 64])
def test_segment_scores_with_unit_are_run_rms(device, unit):
    s = _scores(21, 30, 2)
    out = ops.tile_segment_scores(s.to(device), 4, None, unit)
    assert out.shape == (6, math.ceil(30 / unit)) and out.device.type == torch.device(device).type
    torch.testing.assert_close(out.cpu(), reference_run_scores(s, 4, unit))


@pytest.mark.parametrize("unit", [2, 5])
def test_threshold_with_unit_keeps_runs_at_or_above(unit):
    s = _scores(30, 23, 3)
    rs = reference_run_scores(s, 8, unit)
    thr = float(rs.median())
    mask = ops.tile_mask_threshold(s, 8, thr, None, 1, unit)
    expected = torch.zeros_like(mask)
    for t in range(rs.shape[0]):
        for u, (b, e) in enumerate(_runs(23, unit)):
            expected[t * 8:(t + 1) * 8, b:e] = bool(rs[t, u] >= thr)
    assert torch.equal(mask, expected)


# ---------------------------------------------------------------------------
# patterns: global threshold, TEW
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["tw", "tew"])
@pytest.mark.parametrize("unit,k_align", [(8, 1), (8, 16), (4, 2)])
def test_global_masks_with_unit(pattern, unit, k_align):
    """One threshold on the runs of every layer: every layer's TW part is made
    of whole runs, and the total meets the target within half a group."""
    mats = [_scores(64, 40, 1), _scores(48, 36, 2) * 0.5, _scores(70, 20, 3) * 2.0]
    s, delta = 0.7, (0.02 if pattern == "tew" else 0.0)
    out = masks_for(pattern, mats, s, 16, scope="global", unit=unit, k_align=k_align, delta=delta)
    tws = [o[0] if pattern == "tew" else o for o in out]
    for m in tws:
        assert is_tile_wise(m, 16) and runs_whole(m, unit)
        a = max(1, k_align // unit)
        kept_runs = torch.stack([m[:, b] for b, _ in _runs(m.shape[1], unit)], 1).sum(1)
        assert bool(((kept_runs % a == 0) | (kept_runs == len(_runs(m.shape[1], unit)))).all())
    total = sum(x.numel() for x in mats)
    kept = sum(int(m.sum()) for m in tws)
    group = 16 * max(unit, k_align)
    assert abs((total - kept) - round((s + delta) * total)) <= group / 2 * len(mats)
    if pattern == "tew":
        for tw, res in out:
            assert not bool((tw & res).any())
        assert abs(sum(int(r.sum()) for _, r in out) - round(delta * total)) <= 1


@pytest.mark.parametrize("unit,k_align", [(4, 1), (8, 1), (8, 16), (3, 6), (4, 2)])
@pytest.mark.parametrize("col_sparsity", [0.0, 0.2])
def test_global_threshold_of_one_layer_equals_the_count_selection(unit, k_align, col_sparsity):
    """For a single weight (random scores, no ties) the threshold that
    tw_global_threshold solves for, applied by tile_mask_threshold, selects
    exactly what tile_mask selects by count: the Python group sizes (partial
    last run, partial last tile, k_align groups) match the core's."""
    from tilesparse.patterns import tw_global_threshold

    s = _scores(75, 37, seed=unit * 10 + k_align)  # partial tile (75 = 4 x 16 + 11) and partial run
    for sp in (0.3, 0.6, 0.85):
        cs = col_sparsity * sp
        thr, col_thr = tw_global_threshold([s], sp, 16, cs, k_align, unit)
        by_thr = ops.tile_mask_threshold(s, 16, thr, col_thr, k_align, unit)
        if cs == 0:  # the column step's count rule differs from a column threshold by design
            assert torch.equal(by_thr, ops.tile_mask(s, 16, sp, 0.0, k_align, unit))
        assert runs_whole(by_thr, unit) and is_tile_wise(by_thr, 16)
        assert abs(int((~by_thr).sum()) - round(sp * s.numel())) <= 16 * max(unit, k_align) / 2 + 37 / 2


def test_mask_for_and_tew_masks_take_unit():
    s = _scores(40, 30, 4)
    assert runs_whole(mask_for("tw", s, 0.6, 8, unit=8), 8)
    tw, res = tew_masks(s, 0.6, 0.05, 8, unit=8)
    assert runs_whole(tw, 8) and not runs_whole(tw | res, 8)


# ---------------------------------------------------------------------------
# modules: tw_linear equals the dense masked reference; state_dict round trips
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("unit", [8, 16])
def test_linear_with_unit_matches_dense_masked_reference(device, unit):
    torch.manual_seed(0)
    lin = nn.Linear(100, 96).double().to(device)  # K = 100: a partial last run
    mod = TileSparseLinear.from_dense(lin, 0.75, tile=32, unit=unit, copy=True)
    assert mod.unit == unit and f"unit={unit}" in repr(mod)
    mask = mod.mask.cpu()
    assert is_tile_wise(mask, 32) and runs_whole(mask, unit)
    x = torch.randn(7, 100, dtype=torch.float64, device=device, requires_grad=True)
    ref = reference_tw_linear(x, lin.weight, mod.mask, lin.bias)
    torch.testing.assert_close(mod(x), ref)
    mod.finalize()
    torch.testing.assert_close(mod(x), ref)
    layout = mod.layout()
    torch.testing.assert_close(ops.tw_linear(x, mod.values, layout, mod.bias), ref)
    assert torch.equal(layout.mask().cpu(), mask)


@pytest.mark.parametrize("finalized", [False, True])
def test_state_dict_round_trip_keeps_unit(finalized):
    torch.manual_seed(1)
    mod = TileSparseLinear.from_dense(nn.Linear(64, 64), 0.75, tile=16, unit=8)
    if finalized:
        mod.finalize()
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    buf.seek(0)
    fresh = TileSparseLinear(64, 64, tile=16)
    assert fresh.unit == 1
    fresh.load_state_dict(torch.load(buf))
    assert fresh.unit == 8 and fresh.finalized == finalized
    assert torch.equal(fresh.tw_mask(), mod.tw_mask()) and runs_whole(fresh.tw_mask(), 8)
    x = torch.randn(3, 64)
    torch.testing.assert_close(fresh(x), mod(x), rtol=0, atol=0)
    # the other state, and a deepcopy, keep it too
    other = TileSparseLinear(64, 64, tile=16)
    if not finalized:
        other.finalize()
    other.load_state_dict(mod.state_dict())
    assert other.unit == 8 and copy.deepcopy(mod).unit == 8


def test_state_dict_without_unit_loads_as_unit_one_and_bad_claims_are_rejected():
    torch.manual_seed(2)
    mod = TileSparseLinear.from_dense(nn.Linear(32, 32), 0.5, tile=8, unit=4)
    sd = mod.state_dict()
    old = {k: v for k, v in sd.items() if not k.endswith("_extra_state")}  # saved before `unit` existed
    fresh = TileSparseLinear(32, 32, tile=8)
    fresh.load_state_dict(old)
    assert fresh.unit == 1 and torch.equal(fresh.mask, mod.mask)
    # a unit=8 claim on a mask made of runs of 4 only: refused, naming the buffer
    bad = dict(sd)
    m8 = TileSparseLinear.from_dense(nn.Linear(32, 32), 0.5, tile=8, unit=8)
    bad["_extra_state"] = m8.state_dict()["_extra_state"]
    lone = torch.zeros(32, 32, dtype=torch.bool)
    lone[:, [0, 1, 2, 3, 12, 13, 14, 15]] = True  # runs of 4, never a whole run of 8
    bad["mask"] = lone
    with pytest.raises(RuntimeError, match="mask is not made of aligned runs of unit=8"):
        TileSparseLinear(32, 32, tile=8).load_state_dict(bad)


def test_set_mask_checks_unit_and_leaves_the_module_unchanged():
    mod = TileSparseLinear(16, 8, tile=4)
    good = torch.zeros(8, 16, dtype=torch.bool)
    good[:, 8:16] = True
    mod.set_mask(good, unit=8)
    assert mod.unit == 8
    bad = torch.zeros(8, 16, dtype=torch.bool)
    bad[:, 4:12] = True  # straddles the runs [0, 8) and [8, 16)
    with pytest.raises(ValueError, match=r"output feature 0 keeps part of input features \[0, 8\)"):
        mod.set_mask(bad, unit=8)
    assert torch.equal(mod.mask, good) and mod.unit == 8
    mod.set_mask(bad)  # no claim: unit 1
    assert mod.unit == 1
    for v, err in ((0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="unit"):
            mod.set_mask(good, unit=v)


def test_conv_with_unit_matches_dense_masked_reference():
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 32, 3, padding=1).double()  # K = 72, runs of 16 leave a partial run of 8
    mod = TileSparseConv2d.from_dense(conv, 0.6, tile=16, unit=16, copy=True)
    w = mod.gemm_view(mod.mask)[0]
    assert runs_whole(w, 16) and mod.unit == 16
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    ref = F.conv2d(x, conv.weight * mod.mask, conv.bias, padding=1)
    torch.testing.assert_close(mod(x), ref)


# ---------------------------------------------------------------------------
# sparsify, Pruner, torch.ao
# ---------------------------------------------------------------------------
def _mlp():
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 96))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sparsify_with_unit(scope):
    model = sparsify(_mlp(), 0.75, tile=32, unit=8, scope=scope)
    total = pruned = 0
    for mod in model.modules():
        if isinstance(mod, TileSparseLinear):
            assert mod.unit == 8 and runs_whole(mod.mask, 8) and is_tile_wise(mod.mask, 32)
            total += mod.mask.numel()
            pruned += int((~mod.mask).sum())
            if scope == "layer":
                assert abs(int((~mod.mask).sum()) - 0.75 * mod.mask.numel()) <= 32 * 8 / 2
    assert abs(pruned - 0.75 * total) <= 3 * 32 * 8 / 2
    x = torch.randn(5, 64)
    dense = tilesparse.densify(copy.deepcopy(model))
    torch.testing.assert_close(model(x), dense(x))


def test_pruner_schedule_with_unit():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = Pruner(model, 0.75, tile=32, unit=8, schedule=[(0, 0.25), (2, 0.5), (4, 0.75)], optimizer=opt)
    assert "unit=8" in repr(pruner)
    x = torch.randn(8, 64)
    for _ in range(5):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        pruner.step()
        for mod in pruner.modules.values():
            assert runs_whole(mod.mask, 8) and mod.unit == 8
    assert abs(tilesparse.sparsity_summary(model)["__total__"]["sparsity"] - 0.75) < 0.02


def test_ao_sparsifier_with_unit():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    sp = TileWiseSparsifier(sparsity_level=0.5, tile=16, unit=8)
    sp.prepare(model, config=None)
    sp.step()
    model = sp.convert_to_tilesparse(model)
    for i in (0, 2):
        assert model[i].unit == 8 and runs_whole(model[i].mask, 8)
        assert abs(float((~model[i].mask).double().mean()) - 0.5) <= 16 * 8 / 2 / 4096


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("unit,k_align,match", [
    (0, 1, "unit must be positive, got 0"),
    (-8, 1, "unit must be positive, got -8"),
    (8, 12, "k_align and unit must divide one another, got k_align=12, unit=8"),
])
def test_bad_unit_errors(unit, k_align, match):
    s = _scores(16, 16)
    with pytest.raises(ValueError, match=match):
        ops.tile_mask(s, 4, 0.5, 0.0, k_align, unit)
    with pytest.raises(ValueError, match=match):
        ops.tile_mask_threshold(s, 4, 0.1, None, k_align, unit)
    with pytest.raises(ValueError, match=match.split(",")[0]):
        mask_for("tw", s, 0.5, 4, unit=unit, k_align=k_align)
    with pytest.raises(ValueError, match=match.split(",")[0]):
        sparsify(_mlp(), 0.5, tile=32, unit=unit, k_align=k_align)
    with pytest.raises(ValueError, match=match.split(",")[0].replace("must be positive", "must be (a )?positive")):
        TileWiseSparsifier(0.5, tile=16, unit=unit, k_align=k_align)
    if unit <= 0:
        with pytest.raises(ValueError, match="unit must be positive"):
            ops.tile_segment_scores(s, 4, None, unit)


def test_unit_type_and_pattern_errors():
    with pytest.raises(TypeError, match="unit must be an int"):
        sparsify(_mlp(), 0.5, tile=32, unit=8.0)
    with pytest.raises(TypeError, match="unit must be an int"):
        mask_for("tw", _scores(8, 8), 0.5, 4, unit=True)
    with pytest.raises(ValueError, match="unit applies to the tile patterns only"):
        sparsify(_mlp(), 0.5, pattern="ew", unit=8)
    with pytest.raises(ValueError, match="unit must be positive"):
        Pruner(_mlp(), 0.5, tile=32, unit=0)


def test_fake_kernels_check_unit_and_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        s = torch.empty(20, 30, dtype=torch.float64)
        assert ops.tile_segment_scores(s, 8, None, 8).shape == (3, 4)
        assert ops.tile_mask(s, 8, 0.5, 0.0, 16, 8).shape == (20, 30)
        with pytest.raises(RuntimeError, match="k_align and unit must divide one another"):
            ops.tile_mask(s, 8, 0.5, 0.0, 12, 8)
        with pytest.raises(RuntimeError, match="unit must be positive"):
            ops.tile_mask_threshold(s, 8, 0.1, None, 1, 0)
