"""Mask selection (tile_segment_scores, tile_mask, tile_mask_threshold) checked
against brute-force Python references from tilesparse.testing: the TW
structure, the achieved sparsity, k_align, 2-D column pruning, thresholds and
ties."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse import ops
from tilesparse.testing import (device_params, is_tile_wise, mask_sparsity, reference_column_scores,
                                reference_lowest_columns, reference_segment_scores)

DEVICES = device_params()


def _scores(n, k, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, k, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def _round_half_up(x: float) -> int:
    """std::llround for non-negative x (what "round(sparsity * size)" means here)."""
    return int(math.floor(x + 0.5))


def _column_count(n, k, sparsity, col_sparsity):
    """Whole output features the column step of 2-D TW prunes: round(col_sparsity * N),
    capped so that columns alone never exceed the overall target (which keeps the
    achieved sparsity within one row segment of it)."""
    count = _round_half_up(col_sparsity * n)
    return min(count, _round_half_up(sparsity * n * k) // k) if k > 0 else count


def _survivors(scores, col_sparsity, sparsity=None):
    """Output features left by the column step of 2-D TW (all of them for 1-D)."""
    n, k = scores.shape
    if col_sparsity <= 0:
        return list(range(n)), []
    count = _column_count(n, k, col_sparsity if sparsity is None else sparsity, col_sparsity)
    pruned = reference_lowest_columns(reference_column_scores(scores), count)
    return [c for c in range(n) if c not in set(pruned)], pruned


def _tile_groups(cols, tile):
    return [cols[s:s + tile] for s in range(0, len(cols), tile)]


def _check_selection(scores, mask, tile, sparsity, col_sparsity, k_align):
    """Every property a tile_mask output must have, checked independently."""
    n, k = scores.shape
    assert mask.dtype == torch.bool and mask.shape == (n, k)
    mask = mask.cpu()
    assert is_tile_wise(mask, tile)

    # k_align: each output feature keeps 0, all K, or a multiple of k_align rows.
    kept_per_feature = mask.sum(1)
    assert bool(((kept_per_feature % k_align == 0) | (kept_per_feature == k)).all()), kept_per_feature

    # 2-D: the lowest-L2 columns (see _column_count) are pruned whole.
    survivors, col_pruned = _survivors(scores, col_sparsity, sparsity)
    if col_pruned:
        assert not bool(mask[col_pruned].any()), "a column chosen by the column step keeps weights"

    # Rows: inside each regrouped tile, the kept rows outrank the pruned rows.
    seg = reference_segment_scores(scores, tile, survivors)
    for t, group in enumerate(_tile_groups(survivors, tile)):
        keep = mask[group[0]]
        assert bool((mask[group] == keep).all()), f"tile {t} of the regrouped survivors is not uniform"
        if keep.any() and (~keep).any():
            assert float(seg[t][keep].min()) >= float(seg[t][~keep].max()), f"tile {t} prunes a better row"
    # k_align = 1: one global ranking across tiles.
    if k_align == 1 and seg.numel():
        rows_kept = torch.stack([mask[g[0]] for g in _tile_groups(survivors, tile)])
        if rows_kept.any() and (~rows_kept).any():
            assert float(seg[rows_kept].min()) >= float(seg[~rows_kept].max()), "a better segment was pruned"

    # Achieved sparsity: within half a pruning unit (widest tile x k_align
    # rows) of the target.
    target = _round_half_up(sparsity * n * k)
    pruned = n * k - int(mask.sum())
    assert len(col_pruned) * k <= target
    unit = min(tile, max(1, len(survivors))) * min(k_align, max(k, 1))
    assert abs(pruned - target) <= unit / 2, (pruned, target, unit)


# ---------------------------------------------------------------------------
# The checker itself
# ---------------------------------------------------------------------------
def test_is_tile_wise_rejects_non_tile_wise_masks():
    """The structural checker is not vacuous: it accepts TW masks and rejects others."""
    eye = torch.eye(4, dtype=torch.bool)
    assert not is_tile_wise(eye, 2)
    assert is_tile_wise(eye, 1)
    m = torch.zeros(6, 3, dtype=torch.bool)
    m[[0, 2]] = torch.tensor([True, False, True])  # feature 1 pruned: 0 and 2 form one tile
    assert is_tile_wise(m, 2)
    m[2, 1] = True
    assert not is_tile_wise(m, 2)


# ---------------------------------------------------------------------------
# tile_segment_scores
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,k,tile", [(16, 7, 4), (10, 5, 4), (1, 3, 8), (9, 1, 2), (13, 6, 64)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_segment_scores_match_reference(device, n, k, tile, dtype):
    """out[t, r] = ||scores[tile t, r]||_2 / width of tile t, partial last tile included."""
    s = _scores(n, k, seed=n * k, dtype=dtype, device=device)
    out = ops.tile_segment_scores(s, tile)
    assert out.dtype == dtype and out.device == s.device
    assert out.shape == (math.ceil(n / tile), k)
    torch.testing.assert_close(out.double().cpu(), reference_segment_scores(s, tile), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quantile", [0.0, 0.3, 0.8, 1.0])
def test_segment_scores_with_col_threshold_regroup_survivors(device, quantile):
    """With col_threshold, features whose column score is below it are dropped and
    the survivors are regrouped, in order, into tiles before scoring."""
    s = _scores(23, 6, seed=3, device=device)
    col = reference_column_scores(s)
    thr = float(col.quantile(quantile))
    survivors = [c for c in range(23) if float(col[c]) >= thr]
    out = ops.tile_segment_scores(s, 4, col_threshold=thr)
    assert out.shape == (math.ceil(len(survivors) / 4), 6)
    torch.testing.assert_close(out.cpu(), reference_segment_scores(s, 4, survivors))


# ---------------------------------------------------------------------------
# tile_mask: properties over random problems
# ---------------------------------------------------------------------------
@settings(max_examples=150)
@given(n=st.integers(1, 40), k=st.integers(1, 24), tile=st.integers(1, 12), sparsity=st.floats(0.0, 0.95),
       col_share=st.sampled_from([0.0, 0.0, 0.3, 0.5, 1.0]), k_align=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_tile_mask_properties(n, k, tile, sparsity, col_share, k_align, seed):
    """Random shapes (N not a multiple of the tile, K=1, ...), sparsities 0..0.95,
    1-D and 2-D TW, k_align 1..5: every property of _check_selection holds."""
    s = _scores(n, k, seed)
    col_sparsity = col_share * sparsity
    mask = ops.tile_mask(s, tile, sparsity, col_sparsity, k_align)
    _check_selection(s, mask, tile, sparsity, col_sparsity, k_align)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,k,tile,sparsity,col_sparsity,k_align", [
    (300, 70, 128, 0.75, 0.0, 1),
    (300, 70, 128, 0.75, 0.5, 1),
    (256, 96, 64, 0.9, 0.0, 8),
    (200, 33, 32, 0.5, 0.25, 4),
    (64, 64, 16, 0.95, 0.5, 16),
    (5, 40, 8, 0.6, 0.0, 1),  # one partial tile
    (40, 1, 8, 0.5, 0.0, 1),  # K = 1
])
def test_tile_mask_realistic_sizes(device, n, k, tile, sparsity, col_sparsity, k_align):
    """Layer-sized problems, on every device: all selection properties hold."""
    s = _scores(n, k, seed=7, device=device)
    mask = ops.tile_mask(s, tile, sparsity, col_sparsity, k_align)
    assert mask.device == s.device
    _check_selection(s, mask, tile, sparsity, col_sparsity, k_align)


@pytest.mark.parametrize("n,k,tile", [(16, 10, 4), (24, 7, 8), (9, 13, 3), (8, 8, 8)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.33, 0.5, 0.77, 0.95])
def test_tile_mask_exact_1d_reference(n, k, tile, sparsity):
    """Brute force for 1-D TW, k_align=1 and full tiles: every pruning unit has the
    same size, so the mask prunes the P lowest row segments (global ranking), P the
    smallest count whose pruned size is nearest the target."""
    s = _scores(n, k, seed=n + k)
    target = _round_half_up(sparsity * n * k)
    P = min(range(n // tile * k + 1), key=lambda p: (abs(p * tile - target), p))
    seg = reference_segment_scores(s, tile)
    order = sorted(range(seg.numel()), key=lambda i: float(seg.view(-1)[i]))
    keep_seg = torch.ones(seg.numel(), dtype=torch.bool)
    keep_seg[order[:P]] = False
    expected = keep_seg.view(seg.shape).repeat_interleave(tile, dim=0)
    assert torch.equal(ops.tile_mask(s, tile, sparsity), expected)


def test_tile_mask_zero_sparsity_keeps_everything():
    """sparsity=0 keeps every weight (1-D), also with k_align not dividing K."""
    s = _scores(10, 7)
    assert bool(ops.tile_mask(s, 4, 0.0).all())
    assert bool(ops.tile_mask(s, 4, 0.0, k_align=3).all())


@pytest.mark.parametrize("k_align", [3, 4, 16])
def test_tile_mask_k_align_kept_rows(k_align):
    """Kept rows per tile: a multiple of k_align or all K (K=10 is no multiple of
    3 or 4; k_align=16 > K leaves only 0 or K)."""
    s = _scores(32, 10, seed=k_align)
    for sparsity in (0.2, 0.5, 0.8):
        mask = ops.tile_mask(s, 8, sparsity, k_align=k_align)
        per_tile = mask.view(4, 8, 10)[:, 0].sum(1)
        assert all(int(c) % k_align == 0 or int(c) == 10 for c in per_tile), per_tile
        _check_selection(s, mask, 8, sparsity, 0.0, k_align)


# ---------------------------------------------------------------------------
# 2-D TW
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n,col_sparsity", [(20, 0.2), (37, 0.3), (64, 0.75), (10, 0.05), (7, 0.5)])
def test_2d_prunes_exactly_the_lowest_l2_columns(n, col_sparsity):
    """sparsity == col_sparsity: the column step prunes whole output features, the
    ones with the lowest L2 norm, as many as fit in the target; rows finish the rest."""
    s = _scores(n, 9, seed=n)
    s = s * torch.linspace(0.5, 2.0, n, dtype=torch.float64)[torch.randperm(n)].unsqueeze(1)  # distinct norms
    mask = ops.tile_mask(s, 4, col_sparsity, col_sparsity)
    zero_cols = (~mask.any(1)).nonzero().flatten().tolist()
    count = _column_count(n, 9, col_sparsity, col_sparsity)
    expected = sorted(s.norm(dim=1).argsort()[:count].tolist())
    assert set(expected) <= set(zero_cols)
    _check_selection(s, mask, 4, col_sparsity, col_sparsity, 1)


def test_2d_regroups_survivors_into_tiles():
    """After column pruning the survivors are regrouped in order: a tile of 2-D TW
    spans non-adjacent output features, and they share one row set."""
    s = _scores(24, 12, seed=5)
    s[1::3] *= 0.01  # every third feature is weak and gets pruned by the column step
    mask = ops.tile_mask(s, 4, 0.6, 0.34)  # round(0.34 * 24) = 8 features
    survivors, pruned = _survivors(s, 0.34)
    assert set(range(1, 24, 3)) <= set(pruned)
    first_tile = survivors[:4]
    assert first_tile[-1] - first_tile[0] > 3  # non-contiguous tile
    assert bool((mask[first_tile] == mask[first_tile[0]]).all())
    _check_selection(s, mask, 4, 0.6, 0.34, 1)


# ---------------------------------------------------------------------------
# Importance: the best weights survive
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("col_sparsity", [0.0, 0.4])
def test_planted_large_rows_and_columns_survive(device, col_sparsity):
    """Rows planted with large magnitude survive in every tile even at 90%
    sparsity; with 2-D TW, planted strong columns survive and planted weak
    columns are pruned."""
    n, k, tile = 64, 40, 8
    s = _scores(n, k, seed=11)
    planted_rows = [3, 17, 38]
    s[:, planted_rows] *= 100.0
    strong_cols, weak_cols = [5, 20, 41], [7, 30, 50]
    if col_sparsity:
        s[strong_cols] *= 50.0
        s[weak_cols] *= 1e-3
    mask = ops.tile_mask(s.to(device), tile, 0.9, col_sparsity).cpu()
    kept = mask.any(1)
    assert bool(mask[kept][:, planted_rows].all())
    if col_sparsity:
        assert bool(kept[strong_cols].all()) and not bool(kept[weak_cols].any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tile_mask_accepts_low_precision_and_strided_scores(dtype):
    """Scores of any float dtype select the same mask as the same values in
    float64; a transposed (non-contiguous) view selects the same as its copy."""
    s = _scores(30, 12, seed=2).to(dtype)
    expected = ops.tile_mask(s.double(), 8, 0.6, 0.2, 2)
    assert torch.equal(ops.tile_mask(s, 8, 0.6, 0.2, 2), expected)
    st_ = s.t().contiguous().t()
    assert not st_.is_contiguous()
    assert torch.equal(ops.tile_mask(st_, 8, 0.6, 0.2, 2), expected)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_tile_mask_empty_scores(shape):
    """Empty score matrices give empty masks of the same shape."""
    s = torch.rand(*shape, dtype=torch.float64)
    assert ops.tile_mask(s, 4, 0.5).shape == shape
    assert ops.tile_mask(s, 4, 0.5, 0.5).shape == shape
    assert ops.tile_mask_threshold(s, 4, 0.1, 0.1).shape == shape


# ---------------------------------------------------------------------------
# Ties
# ---------------------------------------------------------------------------
def test_ties_are_deterministic():
    """All-equal scores: repeated calls, dtypes and memory layouts agree."""
    s = torch.ones(40, 12, dtype=torch.float64)
    masks = [ops.tile_mask(s, 8, 0.5, 0.25, 2) for _ in range(3)]
    masks.append(ops.tile_mask(s.float(), 8, 0.5, 0.25, 2))
    masks.append(ops.tile_mask(torch.ones(12, 40).t(), 8, 0.5, 0.25, 2))
    assert all(torch.equal(m, masks[0]) for m in masks)
    _check_selection(s, masks[0], 8, 0.5, 0.25, 2)


def test_tie_rules():
    """Documented tie-breaks: among equal columns the lower index is pruned first;
    within a tile, among equal rows the higher index is pruned first."""
    s = torch.ones(8, 6, dtype=torch.float64)
    cols_pruned = ops.tile_mask(s, 4, 0.25, 0.25)
    assert (~cols_pruned.any(1)).nonzero().flatten().tolist() == [0, 1]
    one_tile = ops.tile_mask(s, 8, 0.5)
    expected = torch.zeros(8, 6, dtype=torch.bool)
    expected[:, :3] = True
    assert torch.equal(one_tile, expected)


# ---------------------------------------------------------------------------
# tile_mask_threshold
# ---------------------------------------------------------------------------
def _expected_threshold_mask(s, tile, thr, survivors, k_align=1):
    """Brute force: in each regrouped tile keep the best rows, as few as a valid
    count (multiple of k_align, or K) allows while keeping every segment >= thr."""
    n, k = s.shape
    seg = reference_segment_scores(s, tile, survivors)
    mask = torch.zeros(n, k, dtype=torch.bool)
    for t, group in enumerate(_tile_groups(survivors, tile)):
        above = int((seg[t] >= thr).sum())
        count = next(c for c in range(above, k + 1) if c % k_align == 0 or c == k)
        order = sorted(range(k), key=lambda r: (-float(seg[t, r]), r))
        keep = torch.zeros(k, dtype=torch.bool)
        keep[order[:count]] = True
        mask[group] = keep
    return mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k_align", [1, 3])
@pytest.mark.parametrize("quantile", [0.0, 0.25, 0.5, 0.9])
def test_threshold_keeps_segments_at_or_above(device, k_align, quantile):
    """1-D: with k_align=1 a segment is kept iff its score >= threshold; with
    k_align>1 every such segment is kept and the rest of the unit is filled
    with the tile's next-best rows."""
    s = _scores(30, 11, seed=13)
    thr = float(reference_segment_scores(s, 8).quantile(quantile))
    mask = ops.tile_mask_threshold(s.to(device), 8, thr, k_align=k_align).cpu()
    assert torch.equal(mask, _expected_threshold_mask(s, 8, thr, list(range(30)), k_align))
    if k_align == 1:
        seg = reference_segment_scores(s, 8)
        assert torch.equal(mask, (seg >= thr).repeat_interleave(8, 0)[:30])


@pytest.mark.parametrize("col_quantile", [0.2, 0.6])
def test_threshold_2d_uses_col_threshold(col_quantile):
    """2-D threshold form: features with column score < col_threshold are pruned
    whole, and segments are scored on the regrouped survivors (the same tiles
    tile_segment_scores(..., col_threshold) reports)."""
    s = _scores(29, 9, seed=17)
    col = reference_column_scores(s)
    col_thr = float(col.quantile(col_quantile))
    survivors = [c for c in range(29) if float(col[c]) >= col_thr]
    seg = ops.tile_segment_scores(s, 4, col_threshold=col_thr)
    thr = float(seg.quantile(0.5))
    mask = ops.tile_mask_threshold(s, 4, thr, col_threshold=col_thr)
    assert torch.equal(mask, _expected_threshold_mask(s, 4, thr, survivors))
    assert not bool(mask[[c for c in range(29) if c not in survivors]].any())


def test_global_threshold_across_two_layers():
    """One threshold from the quantile of both layers' segment scores prunes each
    layer by its own segment scores: the pruned-segment count overall matches the
    quantile, the layer with larger scores is pruned less, and planted strong
    rows survive in every tile."""
    tile, q = 8, 0.6
    a = _scores(48, 32, seed=1)
    b = 3.0 * _scores(40, 24, seed=2)
    a[:, [4, 9]] *= 100.0  # planted important input features of layer a
    seg_a, seg_b = ops.tile_segment_scores(a, tile), ops.tile_segment_scores(b, tile)
    thr = float(torch.cat([seg_a.flatten(), seg_b.flatten()]).quantile(q))
    mask_a, mask_b = ops.tile_mask_threshold(a, tile, thr), ops.tile_mask_threshold(b, tile, thr)
    for s, seg, mask in ((a, seg_a, mask_a), (b, seg_b, mask_b)):
        assert is_tile_wise(mask, tile)
        assert torch.equal(mask, (seg >= thr).repeat_interleave(tile, 0)[:s.shape[0]])
    pruned_segments = int((~mask_a[::tile]).sum()) + int((~mask_b[::tile]).sum())
    total = seg_a.numel() + seg_b.numel()
    assert abs(pruned_segments / total - q) <= 1.0 / total + 1e-9
    assert mask_sparsity(mask_b) < mask_sparsity(mask_a)
    assert bool(mask_a[:, [4, 9]].all())


def test_threshold_ties_keep_equal_scores():
    """A segment whose score equals the threshold is kept (>=), for every tie."""
    s = torch.ones(8, 6, dtype=torch.float64)
    thr = float(ops.tile_segment_scores(s, 4)[0, 0])
    assert bool(ops.tile_mask_threshold(s, 4, thr).all())
    assert not bool(ops.tile_mask_threshold(s, 4, math.nextafter(thr, math.inf)).any())
