"""Exact structure of every pattern's mask, checked by brute force, and achieved sparsity."""
import math

import pytest
import torch

from tilesparse import patterns
from tilesparse.patterns import masks_for, mask_for, tew_masks
from tilesparse.testing import is_tile_wise


def _scores(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, k, generator=g, dtype=torch.float64) + 1e-3


def _seg_scores_bruteforce(scores, mask, tile):
    """Per (tile, input feature) of a 1-D TW mask: (segment score, kept, elements),
    computed with plain Python loops over the tiles of consecutive outputs."""
    out = []
    n, k = scores.shape
    for t0 in range(0, n, tile):
        rows = list(range(t0, min(t0 + tile, n)))
        g = len(rows)
        for j in range(k):
            ss = math.sqrt(sum(float(scores[r, j]) ** 2 for r in rows)) / g
            out.append((ss, bool(mask[rows[0], j]), g))
    return out


@pytest.mark.parametrize("n,k,tile,s", [(64, 40, 16, 0.75), (70, 33, 16, 0.5), (50, 20, 64, 0.3)])
def test_tw_structure_and_sparsity(n, k, tile, s):
    sc = _scores(n, k)
    m = mask_for("tw", sc, s, tile)
    assert m.dtype == torch.bool and m.shape == (n, k)
    assert is_tile_wise(m, tile)
    # every output feature inside a tile keeps exactly the same input features
    for t0 in range(0, n, tile):
        blk = m[t0:t0 + tile]
        assert bool((blk == blk[0]).all())
    # within half a pruning unit (one row of the widest tile) of the target
    assert abs((1 - m.double().mean().item()) - s) <= 0.5 * tile / (n * k) + 1e-12
    # pruned segments never score above kept ones (per-layer threshold)
    segs = _seg_scores_bruteforce(sc, m, tile)
    kept = [x for x, kp, _ in segs if kp]
    pruned = [x for x, kp, _ in segs if not kp]
    assert max(pruned) <= min(kept)


def test_tw_2d_prunes_whole_columns_first():
    sc = _scores(96, 24)
    m = mask_for("tw", sc, 0.75, 16, col_sparsity=0.5)
    assert is_tile_wise(m, 16)
    dead = ~m.any(dim=1)
    assert int(dead.sum()) == 48  # 50% of the output features pruned entirely
    # the dead columns are those of lowest L2 norm
    colscore = sc.norm(dim=1)
    assert colscore[dead].max() <= colscore[~dead].min()
    assert abs((1 - m.double().mean().item()) - 0.75) <= 0.5 * 16 / (96 * 24) + 1e-12
    # "sqrt" split: 1 - sqrt(1 - 0.75) = 0.5
    m2 = mask_for("tw", sc, 0.75, 16, col_sparsity="sqrt")
    assert torch.equal(m, m2)


def test_tw_k_align():
    sc = _scores(64, 50)
    m = mask_for("tw", sc, 0.6, 16, k_align=8)
    for t0 in range(0, 64, 16):
        kept = int(m[t0].sum())
        assert kept % 8 == 0 or kept == 50


def test_tew_parts():
    sc = _scores(64, 40, seed=3)
    s, delta = 0.7, 0.05
    tw, res = tew_masks(sc, s, delta, 16)
    assert is_tile_wise(tw, 16)
    assert not bool((tw & res).any())
    assert int(res.sum()) == round(delta * sc.numel())
    # the residue holds the best-scored weights among those the TW part pruned
    pruned_scores = sc[~tw & ~res]
    assert sc[res].min() >= pruned_scores.max()
    union = mask_for("tew", sc, s, 16, delta=delta)
    assert torch.equal(union, tw | res)
    # the TW part was pruned at s + delta
    assert abs((1 - tw.double().mean().item()) - (s + delta)) <= 0.5 * 16 / sc.numel() + 1e-12
    assert abs((1 - union.double().mean().item()) - s) <= 0.5 * 16 / sc.numel() + 1e-12


def test_ew_exact_count_and_order():
    sc = _scores(30, 17)
    m = mask_for("ew", sc, 0.8)
    assert int(m.sum()) == sc.numel() - round(0.8 * sc.numel())
    assert sc[~m].max() <= sc[m].min()


@pytest.mark.parametrize("n", [64, 70])
def test_vw_balanced_vectors(n):
    sc = _scores(n, 12)
    s = 0.75
    m = mask_for("vw", sc, s)
    for v0 in range(0, n, 16):
        for j in range(12):
            vec_m, vec_s = m[v0:v0 + 16, j], sc[v0:v0 + 16, j]
            length = vec_m.numel()
            assert int(vec_m.sum()) == round((1 - s) * length)  # same count in every (full) vector
            if bool(vec_m.any()) and bool((~vec_m).any()):
                assert vec_s[~vec_m].max() <= vec_s[vec_m].min()
    full = (n // 16) * 16
    assert abs((1 - m[:full].double().mean().item()) - s) < 1e-12


def test_bw_whole_blocks():
    sc = _scores(100, 70)
    s = 0.6
    m = mask_for("bw", sc, s)
    for r0 in range(0, 100, 32):
        for c0 in range(0, 70, 32):
            blk = m[r0:r0 + 32, c0:c0 + 32]
            assert bool(blk.all()) or not bool(blk.any())  # a union of whole 32x32 blocks
    # within one (largest) block of the target
    assert abs((1 - m.double().mean().item()) - s) <= 32 * 32 / (100 * 70)


@pytest.mark.parametrize("k", [16, 18])
def test_nm_two_of_four(k):
    sc = _scores(20, k)
    m = mask_for("nm", sc, 0.5)
    for r in range(20):
        for c0 in range(0, k, 4):
            grp_m, grp_s = m[r, c0:c0 + 4], sc[r, c0:c0 + 4]
            assert int(grp_m.sum()) == min(2, grp_m.numel())
            if bool((~grp_m).any()):
                assert grp_s[~grp_m].max() <= grp_s[grp_m].min()
    assert mask_for("nm", sc, None).equal(m)


@pytest.mark.parametrize("score_norm", [None, "rms"])
def test_global_tw_threshold_is_one_threshold_across_layers(score_norm):
    """One threshold on the row segments of all layers: on the raw scores with
    score_norm=None, on each layer's scores over their RMS with "rms"."""
    tile = 16
    raw = [_scores(64, 40, 1) * 1.0, _scores(48, 24, 2) * 0.7, _scores(35, 30, 3) * 1.3]
    raw[0][:, :8] *= 3.0  # uneven importance inside a layer, so layers still differ after normalising
    mats = raw if score_norm is None else [x / x.square().mean().sqrt() for x in raw]
    s = 0.6
    masks = masks_for("tw", raw, s, tile, scope="global", score_norm=score_norm, max_layer_sparsity=None)
    total = sum(x.numel() for x in mats)
    pruned = sum(int((~m).sum()) for m in masks)
    assert abs(pruned / total - s) <= 0.5 * tile / total + 1e-12
    kept, prn = [], []
    for sc, m in zip(mats, masks):
        assert is_tile_wise(m, tile)
        for x, kp, _ in _seg_scores_bruteforce(sc, m, tile):
            (kept if kp else prn).append(x)
    assert max(prn) <= min(kept)
    # layers end at different sparsities
    per = [1 - m.double().mean().item() for m in masks]
    assert max(per) - min(per) > 0.05


def test_global_tw_2d_and_layer_scope():
    tile = 16
    mats = [_scores(64, 40, 1), _scores(48, 24, 2) * 0.5]
    masks = masks_for("tw", mats, 0.75, tile, scope="global", col_sparsity=0.3)
    total = sum(x.numel() for x in mats)
    pruned = sum(int((~m).sum()) for m in masks)
    assert abs(pruned / total - 0.75) <= 0.02
    dead_elems = sum(int((~m.any(dim=1)).sum()) * m.shape[1] for m in masks)
    assert abs(dead_elems / total - 0.3) <= 40 / total + 1e-12  # one column of the widest layer
    for m in masks:
        assert is_tile_wise(m, tile)
    layer = masks_for("tw", mats, 0.75, tile, scope="layer")
    for m in layer:
        assert abs((1 - m.double().mean().item()) - 0.75) <= 0.5 * tile / m.numel() + 1e-12


def test_global_cap():
    mats = [_scores(64, 64, 1), _scores(64, 64, 2) * 0.01]  # raw: second layer would be pruned entirely
    uncapped = masks_for("tw", mats, 0.5, 16, scope="global", score_norm=None, max_layer_sparsity=None)
    assert not bool(uncapped[1].any())
    capped = masks_for("tw", mats, 0.5, 16, scope="global", score_norm=None, max_layer_sparsity=0.8)
    per = [1 - m.double().mean().item() for m in capped]
    assert per[1] <= 0.8 + 0.5 * 16 / 4096
    assert abs((per[0] + per[1]) / 2 - 0.5) <= 16 / 4096
    ew = masks_for("ew", mats, 0.5, scope="global", score_norm=None, max_layer_sparsity=0.8)
    assert abs((1 - ew[1].double().mean().item()) - 0.8) < 1e-3


def test_global_ew_and_bw():
    mats = [_scores(40, 40, 1), _scores(64, 33, 2) * 0.5]
    ew = masks_for("ew", mats, 0.7, scope="global", score_norm=None, max_layer_sparsity=None)
    allk = torch.cat([sc[m] for sc, m in zip(mats, ew)])
    allp = torch.cat([sc[~m] for sc, m in zip(mats, ew)])
    assert allp.max() <= allk.min()
    assert sum(int((~m).sum()) for m in ew) == round(0.7 * sum(x.numel() for x in mats))
    bw = masks_for("bw", mats, 0.7, scope="global", block=8)
    for m in bw:
        for r0 in range(0, m.shape[0], 8):
            for c0 in range(0, m.shape[1], 8):
                blk = m[r0:r0 + 8, c0:c0 + 8]
                assert bool(blk.all()) or not bool(blk.any())


def test_global_tew():
    mats = [_scores(64, 40, 1), _scores(48, 24, 2) * 0.6]
    out = masks_for("tew", mats, 0.6, 16, scope="global", delta=0.04)
    total = sum(x.numel() for x in mats)
    assert sum(int(r.sum()) for _, r in out) == round(0.04 * total)
    for tw, r in out:
        assert is_tile_wise(tw, 16)
        assert not bool((tw & r).any())


def test_validation_messages():
    sc = _scores(16, 8)
    with pytest.raises(ValueError, match="pattern"):
        mask_for("zz", sc, 0.5)
    with pytest.raises(TypeError, match="pattern"):
        mask_for(3, sc, 0.5)
    with pytest.raises(ValueError, match="sparsity"):
        mask_for("tw", sc, 1.5, 8)
    with pytest.raises(ValueError, match="sparsity"):
        mask_for("nm", sc, 0.75)
    with pytest.raises(ValueError, match="col_sparsity"):
        mask_for("tw", sc, 0.5, 8, col_sparsity=0.7)
    with pytest.raises(ValueError, match="scores"):
        mask_for("ew", torch.rand(3), 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        mask_for("ew", -sc, 0.5)
    with pytest.raises(ValueError, match="sparsity \\+ delta"):
        tew_masks(sc, 0.8, 0.3, 8)
    with pytest.raises(ValueError, match="scope"):
        masks_for("tw", [sc], 0.5, 8, scope="model")
    with pytest.raises(ValueError, match="tile"):
        mask_for("tw", sc, 0.5, 0)
    assert set(patterns.PATTERNS) == {"tw", "tew", "ew", "vw", "bw", "nm"}
