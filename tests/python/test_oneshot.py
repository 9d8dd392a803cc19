"""tilesparse.oneshot: calibrated sequential reconstruction, allocation, patterns, errors.

References are independent of the implementation: the reconstructed weights
are compared with ``torch.linalg.lstsq`` solutions of the ridge problem built
from the raw calibration inputs, and quality with plain magnitude pruning.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tilesparse
from tilesparse import TileSparseConv2d, TileSparseLinear, sparsity_summary
from tilesparse.calibration import gemm_inputs, input_groups
from tilesparse.nn import MaskedLinear
from tilesparse.oneshot import allocate, oneshot


def _inputs(n=512, k=32, rank=None, seed=0):
    """Correlated inputs (a fixed mixing per (k, rank): one distribution); ``seed`` draws the sample."""
    mix = torch.randn(k if rank is None else rank, k, generator=torch.Generator().manual_seed(1234 + k))
    x = torch.randn(n, mix.shape[0], generator=torch.Generator().manual_seed(seed)) @ mix + 0.3
    return x


def _rel_err(model, ref, x):
    with torch.no_grad():
        y, y0 = model(x), ref(x)
    return float(((y - y0) ** 2).sum() / (y0 ** 2).sum())


def _ridge_lstsq(X, target, lam):
    """min ||X v - t||^2 + lam ||v||^2 for every column of target, by lstsq on the stacked system."""
    A = torch.cat([X, lam ** 0.5 * torch.eye(X.shape[1], dtype=X.dtype)])
    b = torch.cat([target, target.new_zeros(X.shape[1], target.shape[1])])
    return torch.linalg.lstsq(A, b).solution


def _batches(x, size=128):
    return [x[i:i + size] for i in range(0, len(x), size)]


def test_single_layer_matches_lstsq_reference():
    torch.manual_seed(1)
    lin = nn.Linear(32, 64)
    x = _inputs()
    dense = copy.deepcopy(lin)
    damp = 1e-3
    m = oneshot(nn.Sequential(lin), _batches(x), 0.5, tile=16, allocation="uniform", damp=damp, progress=False)
    mod = m[0]
    assert isinstance(mod, TileSparseLinear) and not mod.finalized
    X = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    lam = damp * float((x.double() ** 2).sum(0).mean())
    target = (X @ torch.cat([dense.weight, dense.bias[:, None]], 1).double().t())
    keep = mod.keep_mask()
    for t in range(4):
        rows = slice(16 * t, 16 * (t + 1))
        R = keep[16 * t].nonzero().flatten()
        assert bool((keep[rows] == keep[16 * t]).all())  # tile-wise
        cols = torch.cat([R, torch.tensor([32])])
        ref = _ridge_lstsq(X[:, cols], target[:, rows], lam)
        torch.testing.assert_close(mod.weight[rows][:, R].double(), ref[:-1].t(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mod.bias[rows].double(), ref[-1], rtol=1e-4, atol=1e-5)
    assert float(mod.weight.detach()[~keep].abs().max()) == 0.0


def test_sequential_targets_dense_outputs_from_pruned_inputs():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 32))
    dense = copy.deepcopy(net)
    x = _inputs()
    damp = 1e-3
    m = oneshot(net, _batches(x), 0.5, tile=16, allocation="uniform", damp=damp, progress=False)
    with torch.no_grad():
        xs = torch.relu(m[0](x)).double()           # inputs of layer 2 in the pruned model
        y_dense = dense(x).double()                  # the dense model's output: the target
    X = torch.cat([xs, torch.ones(len(x), 1, dtype=xs.dtype)], 1)
    lam = damp * float((xs ** 2).sum(0).mean())
    keep = m[2].keep_mask()
    for t in range(2):
        rows = slice(16 * t, 16 * (t + 1))
        cols = torch.cat([keep[16 * t].nonzero().flatten(), torch.tensor([48])])
        ref = _ridge_lstsq(X[:, cols], y_dense[:, rows], lam)
        torch.testing.assert_close(m[2].weight[rows][:, cols[:-1]].double(), ref[:-1].t(), rtol=1e-4, atol=1e-5)
    # and the one-shot model is far closer to the dense one than magnitude pruning
    mag = tilesparse.sparsify(copy.deepcopy(dense), 0.5, 16, "tw", scope="layer")
    assert _rel_err(m, dense, _inputs(seed=5)) < 0.9 * _rel_err(mag, dense, _inputs(seed=5))


def _mlp():
    return nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 32))


@pytest.mark.parametrize("pattern", ["tw", "tew", "ew", "vw", "bw", "nm"])
def test_every_pattern_beats_magnitude(pattern):
    net = _mlp()
    x, xt = _inputs(), _inputs(seed=3)
    s = 0.5 if pattern == "nm" else 0.75
    kw = dict(block=8) if pattern == "bw" else {}
    m = oneshot(copy.deepcopy(net), _batches(x), s, pattern=pattern, tile=16, progress=False, **kw)
    mag = tilesparse.sparsify(copy.deepcopy(net), s, 16, pattern, scope="layer", delta=0.02 if pattern == "tew" else 0.0)
    summary = sparsity_summary(m)
    assert abs(summary["__total__"]["sparsity"] - s) < 0.01
    assert len(summary) == 4
    e, e_mag = _rel_err(m, net, xt), _rel_err(mag, net, xt)
    assert e < 0.9 * e_mag, (e, e_mag)
    expect = TileSparseLinear if pattern in ("tw", "tew") else MaskedLinear
    assert all(isinstance(m[i], expect) for i in (1, 3, 5))
    if pattern == "tew":
        assert m[1].has_residue


def test_total_sparsity_exact_and_bounds_respected():
    # layer 1 sees rank-4 inputs (prunable almost for free), layer 3 full-rank ones
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    x = _inputs(rank=4)
    m = oneshot(copy.deepcopy(net), _batches(x), 0.6, tile=16, bounds=(0.2, 0.9), progress=False)
    per = [m[i].sparsity for i in (0, 2, 4)]
    numel = [m[i].weight.numel() for i in (0, 2, 4)]
    pruned = sum(s * n for s, n in zip(per, numel))
    assert abs(pruned - 0.6 * sum(numel)) <= 16  # one row segment of one tile
    assert all(0.2 - 16 / n - 1e-9 <= s <= 0.9 + 16 / n + 1e-9 for s, n in zip(per, numel)), per
    assert max(per) > min(per) + 0.1  # non-uniform
    tight = oneshot(copy.deepcopy(net), _batches(x), 0.6, tile=16, bounds=(0.55, 0.65), progress=False)
    assert all(0.55 - 0.01 <= tight[i].sparsity <= 0.65 + 0.01 for i in (0, 2, 4))


def test_allocation_prunes_the_redundant_layer_and_lowers_the_error():
    torch.manual_seed(3)
    # the first layer's inputs have rank 6: most of its input features are redundant
    net = nn.Sequential(nn.Linear(48, 64), nn.Tanh(), nn.Linear(64, 64))
    x, xt = _inputs(k=48, rank=6), _inputs(k=48, rank=6, seed=4)
    alloc = oneshot(copy.deepcopy(net), _batches(x), 0.7, tile=16, bounds=(0.0, 0.95), progress=False)
    uni = oneshot(copy.deepcopy(net), _batches(x), 0.7, tile=16, allocation="uniform", progress=False)
    assert alloc[0].sparsity > alloc[2].sparsity
    assert _rel_err(alloc, net, xt) < _rel_err(uni, net, xt)


def test_allocate_takes_cheapest_increments_first():
    # layer a: error grows slowly; layer b: fast. total 150 of 200.
    a = [(0.0, 0.0), (50.0, 0.01), (100.0, 0.05)]
    b = [(0.0, 0.0), (50.0, 0.5), (100.0, 2.0)]
    out = allocate([a, b], 150.0)
    assert out == pytest.approx([100.0, 50.0])
    assert sum(allocate([a, b], 75.0)) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="bounds"):
        allocate([a, b], 250.0)


def test_greedy_obs_selection_does_not_lose_to_scores():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(64, 64))
    x, xt = _inputs(k=64), _inputs(k=64, seed=6)
    kw = dict(tile=16, allocation="uniform", sequential=False, progress=False)
    e_score = _rel_err(oneshot(copy.deepcopy(net), _batches(x), 0.75, **kw), net, xt)
    e_obs = _rel_err(oneshot(copy.deepcopy(net), _batches(x), 0.75, selection="obs", **kw), net, xt)
    assert e_obs <= e_score * 1.02


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding="same")
        self.fc = nn.Linear(32 * 4 * 4, 16)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def test_gemm_inputs_are_im2col():
    conv = nn.Conv2d(4, 8, 3, padding="same", stride=1, dilation=2)
    x = torch.randn(2, 4, 7, 7)
    rows = gemm_inputs(conv, x)
    y = (rows @ conv.weight.reshape(8, -1).t() + conv.bias).reshape(2, 49, 8).transpose(1, 2).reshape(2, 8, 7, 7)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


def test_conv_net_beats_magnitude():
    net = _ConvNet()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, 8, 8, generator=g).abs()
    xt = torch.randn(32, 3, 8, 8, generator=g).abs()
    filt = lambda mod, fqn: fqn in ("c2", "fc")  # noqa: E731
    m = oneshot(copy.deepcopy(net), _batches(x, 32), 0.75, tile=8, filter_fn=filt, progress=False)
    assert isinstance(m.c2, TileSparseConv2d)
    assert abs(sparsity_summary(m)["__total__"]["sparsity"] - 0.75) < 0.01
    mag = tilesparse.sparsify(copy.deepcopy(net), 0.75, 8, "tw", filter_fn=filt, scope="layer")
    assert _rel_err(m, net, xt) < 0.7 * _rel_err(mag, net, xt)


def _tiny_bert():
    transformers = pytest.importorskip("transformers", reason="the tiny-BERT test needs transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def test_tiny_bert_dict_batches_and_input_groups():
    bert = _tiny_bert()
    g = torch.Generator().manual_seed(0)
    calib = [{"input_ids": torch.randint(0, 100, (8, 16), generator=g),
              "attention_mask": torch.ones(8, 16, dtype=torch.int64)} for _ in range(4)]
    test = {"input_ids": torch.randint(0, 100, (8, 16), generator=g)}
    filt = lambda mod, fqn: fqn.startswith("encoder.") and isinstance(mod, nn.Linear)  # noqa: E731
    mods = {f: m for f, m in bert.named_modules() if filt(m, f)}
    groups = input_groups(bert, mods, calib[0])
    att = "encoder.layer.0.attention."
    assert groups[0] == [att + "self.query", att + "self.key", att + "self.value"]
    assert len(groups) == 8 and sum(map(len, groups)) == 12
    m = oneshot(copy.deepcopy(bert), calib, 0.5, tile=32, filter_fn=filt, progress=False)
    mag = tilesparse.sparsify(copy.deepcopy(bert), 0.5, 32, "tw", filter_fn=filt, scope="layer")
    with torch.no_grad():
        y0 = bert(**test).last_hidden_state
        e = float(((m(**test).last_hidden_state - y0) ** 2).mean())
        e_mag = float(((mag(**test).last_hidden_state - y0) ** 2).mean())
    assert e < e_mag
    assert abs(sparsity_summary(m)["__total__"]["sparsity"] - 0.5) < 0.01


def test_errors():
    x = _batches(_inputs())
    with pytest.raises(ValueError, match="nothing to prune"):
        oneshot(nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 8)), x, 0.5, tile=128)
    with pytest.raises(ValueError, match="calib is empty"):
        oneshot(_mlp(), [], 0.5, tile=16)
    with pytest.raises(ValueError, match="calib is empty"):
        oneshot(_mlp(), iter(()), 0.5, tile=16)
    with pytest.raises(ValueError, match="bounds"):
        oneshot(_mlp(), x, 0.5, tile=16, bounds=(0.6, 0.9))
    with pytest.raises(ValueError, match="sparsity"):
        oneshot(_mlp(), x, 1.0, tile=16)
    with pytest.raises(ValueError, match="'nm'"):
        oneshot(_mlp(), x, 0.75, pattern="nm")
    with pytest.raises(ValueError, match="pattern"):
        oneshot(_mlp(), x, 0.5, pattern="xx")
    with pytest.raises(ValueError, match="selection"):
        oneshot(_mlp(), x, 0.5, pattern="ew", selection="obs")
    with pytest.raises(TypeError, match="forward_fn"):
        oneshot(_mlp(), x, 0.5, tile=16, forward_fn=3)
    grouped = nn.Sequential(nn.Conv2d(4, 32, 3, groups=2))
    with pytest.raises(ValueError, match="grouped"):
        oneshot(grouped, [torch.randn(2, 4, 6, 6)], 0.5, tile=8, filter_fn=lambda m, f: True)
    lonely = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    with pytest.raises(ValueError, match="did not call"):
        oneshot(lonely, x, 0.5, tile=16, forward_fn=lambda m, b: m[0](b))


def test_unit_keeps_aligned_runs():
    net = _mlp()
    x, xt = _inputs(), _inputs(seed=3)
    m = oneshot(copy.deepcopy(net), _batches(x), 0.75, tile=16, unit=8, progress=False)
    for i in (1, 3, 5):
        keep = m[i].keep_mask()
        runs = keep.view(keep.shape[0], -1, 8)
        assert bool((runs.all(-1) | ~runs.any(-1)).all())  # every aligned run of 8 inputs kept or pruned whole
    assert abs(sparsity_summary(m)["__total__"]["sparsity"] - 0.75) < 0.02
    mag = tilesparse.sparsify(copy.deepcopy(net), 0.75, 16, "tw", scope="layer", unit=8)
    assert _rel_err(m, net, xt) < _rel_err(mag, net, xt)


def test_dense_input_cache_changes_only_the_cost(monkeypatch):
    """Without blocks: ``cache_budget`` (dense inputs of consecutive groups
    from one dense forward) and ``stat_budget`` give the same weights as one dense forward per
    group; a large budget captures the remaining groups in one pass."""
    import importlib

    mod = importlib.import_module("tilesparse.oneshot")
    bert = _tiny_bert()
    g = torch.Generator().manual_seed(0)
    calib = [{"input_ids": torch.randint(0, 100, (4, 8 + 4 * i), generator=g),
              "attention_mask": torch.ones(4, 8 + 4 * i, dtype=torch.int64)} for i in range(3)]
    filt = lambda m, fqn: fqn.startswith("encoder.") and isinstance(m, nn.Linear)  # noqa: E731
    real = mod.capture_inputs
    runs = {}
    for budgets in ((0, 0), (1 << 30, 1 << 28), (80_000, 1 << 28)):
        chunks = []
        monkeypatch.setattr(mod, "capture_inputs", lambda mods, *a, **k: chunks.append(len(mods)) or real(mods, *a, **k))
        m = oneshot(copy.deepcopy(bert), calib, 0.5, tile=32, filter_fn=filt, cache_budget=budgets[0], blocks=None,
                    stat_budget=budgets[1], progress=False)
        runs[budgets] = torch.cat([p.detach().flatten() for p in m.parameters()])
        if budgets[0] == 0:
            assert chunks == []
        elif budgets[0] == 1 << 30:
            assert chunks == [7]  # 8 input groups; the first one is read directly
        else:
            assert len(chunks) > 1 and sum(chunks) == 7
    ref = runs[(0, 0)]
    for budgets, w in runs.items():
        assert torch.equal(w, ref), budgets


def test_capture_inputs_and_cached_reference_rows():
    from tilesparse.calibration import capture_inputs, input_statistics

    net = _mlp()
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[1].weight.mul_(0.5)
    batches = _batches(_inputs(n=300))
    rows = capture_inputs([other[3], other[5]], other, batches)
    assert [len(r) for r in rows] == [len(batches)] * 2
    with torch.no_grad():
        h = [other[2](other[1](other[0](b))) for b in batches]
    assert all(torch.equal(r, x) for r, x in zip(rows[0], h))
    H1, C1, n1 = input_statistics(net[3], net, batches, with_ones=True, ref_module=other[3], ref_model=other)
    H2, C2, n2 = input_statistics(net[3], net, batches, with_ones=True, ref_rows=rows[0])
    assert n1 == n2 == 300 and torch.equal(H1, H2) and torch.allclose(C1, C2, rtol=1e-12, atol=1e-9)
