"""Keep-masks of the sparsity patterns tilesparse prunes with, and their baselines.

Every function takes ``scores``: a non-negative importance per weight of a GEMM
weight ``W[N, K]`` (PyTorch Linear orientation: N output features, K input
features; ``|w|`` for magnitude), and returns a bool keep-mask (True = kept) of
the same shape.

===========  ===================================================================
``"tw"``     tile-wise (the product): ``tile`` consecutive output features share
             the set of kept input features; ``col_sparsity > 0`` selects 2-D TW.
             Runs on :func:`tilesparse.ops.tw_linear`.
``"tew"``    tile + element-wise: TW at ``sparsity + delta``, then the top
             ``delta`` fraction (of all weights) of the pruned weights is
             restored. Runs as ``tw_linear`` plus a small unstructured residue.
``"ew"``     unstructured (element-wise) magnitude pruning.
``"vw"``     vector-wise: ``1 x vector`` (16) vectors along the *output*
             dimension (``vector`` consecutive output features at one input
             feature); every vector keeps the same number of weights (balanced).
``"bw"``     block-wise: whole ``block`` (32 x 32) blocks of ``W[N, K]``.
``"nm"``     N:M (2:4) along K: every group of ``m`` consecutive input features
             of an output feature keeps ``n``.
===========  ===================================================================

Only ``tw``/``tew`` run faster; the others run as a mask times a dense weight
(``F.linear``/``F.conv2d``) for accuracy comparisons.

:func:`mask_for` prunes one weight; :func:`masks_for` prunes a list of weights
either with one global threshold across them (``scope="global"``, on scores
normalised per weight, with a per-weight sparsity cap) or at the same ratio
each (``scope="layer"``).

``unit`` (tile patterns): the pruning unit inside a tile is an aligned run of
``unit`` consecutive input features, kept or pruned together, so the kernels
gather kept features as contiguous 16/32-byte runs (unit 8/16 in 16-bit types).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import ops

__all__ = [
    "PATTERNS",
    "mask_for",
    "masks_for",
    "tw_mask",
    "tew_masks",
    "ew_mask",
    "vw_mask",
    "bw_mask",
    "nm_mask",
    "resolve_col_sparsity",
    "resolve_max_layer_sparsity",
    "tw_global_threshold",
    "check_unit",
    "misaligned_run",
]

PATTERNS = ("tw", "tew", "ew", "vw", "bw", "nm")
TILE_PATTERNS = ("tw", "tew")
ColSparsity = Union[float, str]


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------
def _check_scores(scores) -> Tensor:
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [out_features, in_features], got shape {tuple(scores.shape)}")
    if not (scores.dtype.is_floating_point):
        raise TypeError(f"scores must be floating-point, got {scores.dtype}")
    return scores


def _check_fraction(name: str, value, upper_inclusive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if upper_inclusive else ')'}, got {value}")
    return value


def _check_pos_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def check_pattern(pattern) -> str:
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    return pattern


def resolve_col_sparsity(col_sparsity: ColSparsity, sparsity: float) -> float:
    """The column (output feature) sparsity of 2-D TW for a total ``sparsity``.

    A float is used as given (and must be <= ``sparsity``); ``"sqrt"`` splits
    the target evenly over the two steps as the original work does:
    ``1 - sqrt(1 - sparsity)`` of the columns, then as much of each tile's rows.
    """
    if isinstance(col_sparsity, str):
        if col_sparsity != "sqrt":
            raise ValueError(f"col_sparsity must be a float or 'sqrt', got {col_sparsity!r}")
        return 1.0 - math.sqrt(1.0 - sparsity)
    col = _check_fraction("col_sparsity", col_sparsity)
    if col > sparsity + 1e-12:
        raise ValueError(f"col_sparsity must be <= sparsity ({sparsity}), got {col}")
    return min(col, sparsity)


def _as_double_cpu(scores: Tensor) -> Tensor:
    s = scores.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores must be finite")
    if bool((s < 0).any()):
        raise ValueError("scores must be non-negative")
    return s.contiguous()


def _keep_top(flat_scores: Tensor, keep: int) -> Tensor:
    """Bool mask keeping the ``keep`` largest entries (ties: lower index kept)."""
    out = torch.zeros(flat_scores.numel(), dtype=torch.bool)
    if keep > 0:
        order = torch.argsort(flat_scores, descending=True, stable=True)
        out[order[:keep]] = True
    return out


def _closest_prefix(elems: Tensor, target: float) -> int:
    """Length p of the prefix of ``elems`` whose sum is closest to ``target``."""
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(elems.to(torch.float64), 0)])
    return int(torch.argmin((cum - target).abs()))


def _threshold_between(sorted_scores: Tensor, p: int) -> float:
    """A threshold that puts exactly the first ``p`` of ``sorted_scores`` (ascending)
    strictly below it (up to ties): the midpoint between entries p-1 and p."""
    n = sorted_scores.numel()
    if p <= 0:
        return -1.0  # scores are non-negative: keeps everything
    if p >= n:
        return float(sorted_scores[-1]) * 2.0 + 1.0  # prunes everything
    lo, hi = float(sorted_scores[p - 1]), float(sorted_scores[p])
    return hi if lo == hi else 0.5 * (lo + hi)


# ---------------------------------------------------------------------------
# tile-wise
# ---------------------------------------------------------------------------
def check_unit(k_align, unit) -> Tuple[int, int]:
    """Validated ``(k_align, unit)``: positive ints that divide one another
    (``k_align`` 1 or a multiple of ``unit``, or a divisor of it)."""
    k_align = _check_pos_int("k_align", k_align)
    unit = _check_pos_int("unit", unit)
    if k_align % unit and unit % k_align:
        raise ValueError(f"k_align and unit must divide one another (e.g. unit=8 with k_align=1, 8 or 16), "
                         f"got k_align={k_align}, unit={unit}")
    return k_align, unit


def misaligned_run(mask: Tensor, unit: int) -> Optional[Tuple[int, int]]:
    """``(output feature, run)`` of the first aligned run of ``unit`` input
    features ``[run*unit, (run+1)*unit)`` that ``mask[N, K]`` keeps only in part,
    or None when every kept feature set is a union of whole runs."""
    if unit <= 1 or mask.numel() == 0:
        return None
    n, k = mask.shape
    runs = -(-k // unit)
    padded = mask.new_zeros(n, runs * unit)
    padded[:, :k] = mask
    kept = padded.view(n, runs, unit).sum(2)
    length = torch.full((runs,), unit, dtype=kept.dtype, device=kept.device)
    length[-1] = k - unit * (runs - 1)
    bad = ((kept != 0) & (kept != length)).nonzero()
    return None if bad.numel() == 0 else (int(bad[0, 0]), int(bad[0, 1]))


def tw_mask(scores: Tensor, sparsity: float, tile: int = 128, col_sparsity: ColSparsity = 0.0,
            k_align: int = 1, unit: int = 1) -> Tensor:
    """Tile-wise keep-mask at ``sparsity`` (:func:`tilesparse.ops.tile_mask`);
    ``unit``: aligned runs of input features kept or pruned together."""
    _check_scores(scores)
    sparsity = _check_fraction("sparsity", sparsity)
    col = resolve_col_sparsity(col_sparsity, sparsity)
    k_align, unit = check_unit(k_align, unit)
    return ops.tile_mask(scores, _check_pos_int("tile", tile), sparsity, col, k_align, unit)


def _residue(scores: Tensor, tw: Tensor, count: int) -> Tensor:
    """The ``count`` best-scored weights among those ``tw`` prunes."""
    s = scores.detach().to(torch.float64).flatten().clone()
    pruned = ~tw.flatten().cpu()
    s[~pruned] = -1.0
    count = min(count, int(pruned.sum()))
    return _keep_top(s, count).view(tw.shape).to(tw.device)


def tew_masks(scores: Tensor, sparsity: float, delta: float, tile: int = 128, col_sparsity: ColSparsity = 0.0,
              k_align: int = 1, unit: int = 1) -> Tuple[Tensor, Tensor]:
    """TEW: ``(tw_mask, residue_mask)``, disjoint; their union keeps ``1 - sparsity``.

    The TW part is pruned at ``sparsity + delta``; the residue restores the
    ``round(delta * numel)`` best-scored pruned weights.
    """
    _check_scores(scores)
    sparsity = _check_fraction("sparsity", sparsity)
    delta = _check_fraction("delta", delta)
    if sparsity + delta >= 1.0:
        raise ValueError(f"sparsity + delta must be < 1, got {sparsity} + {delta}")
    tw = tw_mask(scores, sparsity + delta, tile, col_sparsity, k_align, unit)
    return tw, _residue(scores, tw, int(round(delta * scores.numel())))


# ---------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------
def ew_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Unstructured: keeps the ``round((1 - sparsity) * numel)`` best weights."""
    _check_scores(scores)
    sparsity = _check_fraction("sparsity", sparsity)
    keep = scores.numel() - int(round(sparsity * scores.numel()))
    return _keep_top(_as_double_cpu(scores).flatten(), keep).view(scores.shape).to(scores.device)


def _keep_top_along(s: Tensor, dim: int, keep: int) -> Tensor:
    """Keeps the ``keep`` best entries along ``dim`` (ties: lower index kept)."""
    out = torch.zeros(s.shape, dtype=torch.bool)
    if keep > 0:
        order = torch.argsort(s, dim=dim, descending=True, stable=True)
        out.scatter_(dim, order.narrow(dim, 0, min(keep, s.shape[dim])), True)
    return out


def vw_mask(scores: Tensor, sparsity: float, vector: int = 16) -> Tensor:
    """Vector-wise (balanced): each ``1 x vector`` vector along the output
    dimension (``vector`` consecutive output features at one input feature)
    keeps its ``round((1 - sparsity) * vector)`` best weights. A trailing
    partial vector of length r keeps ``round((1 - sparsity) * r)``."""
    _check_scores(scores)
    sparsity = _check_fraction("sparsity", sparsity)
    vector = _check_pos_int("vector", vector)
    s = _as_double_cpu(scores)
    n, k = s.shape
    out = torch.zeros(n, k, dtype=torch.bool)
    full = (n // vector) * vector
    if full:
        grouped = s[:full].view(n // vector, vector, k)
        out[:full] = _keep_top_along(grouped, 1, int(round((1 - sparsity) * vector))).view(full, k)
    if full < n:
        out[full:] = _keep_top_along(s[full:], 0, int(round((1 - sparsity) * (n - full))))
    return out.to(scores.device)


def _block_scores(s: Tensor, bh: int, bwid: int):
    """Per-block mean squared score and element count of ``s[N, K]`` cut into
    ``bh x bwid`` blocks (edge blocks partial), flattened row-major."""
    n, k = s.shape
    nb_r, nb_c = -(-n // bh), -(-k // bwid)
    padded = s.new_zeros(nb_r * bh, nb_c * bwid)
    padded[:n, :k] = s
    count = torch.zeros_like(padded)
    count[:n, :k] = 1
    ss = (padded ** 2).view(nb_r, bh, nb_c, bwid).sum((1, 3)).flatten()
    cnt = count.view(nb_r, bh, nb_c, bwid).sum((1, 3)).flatten()
    return ss / cnt.clamp_min(1), cnt


def _expand_blocks(keep: Tensor, n: int, k: int, bh: int, bwid: int) -> Tensor:
    """The ``[N, K]`` element mask of a per-block keep vector from _block_scores."""
    nb_r, nb_c = -(-n // bh), -(-k // bwid)
    full = keep.view(nb_r, 1, nb_c, 1).expand(nb_r, bh, nb_c, bwid).reshape(nb_r * bh, nb_c * bwid)
    return full[:n, :k].contiguous()


def bw_mask(scores: Tensor, sparsity: float, block: Union[int, Sequence[int]] = 32, *,
            at_most: bool = False) -> Tensor:
    """Block-wise: the mask is a union of whole ``block`` blocks of ``W[N, K]``
    (edge blocks may be partial). Blocks are ranked by mean squared score and
    pruned lowest first while that brings the pruned count closer to target
    (``at_most``: while it stays <= target)."""
    _check_scores(scores)
    sparsity = _check_fraction("sparsity", sparsity)
    bh, bwid = (block, block) if isinstance(block, int) else tuple(block)
    _check_pos_int("block", bh)
    _check_pos_int("block", bwid)
    s = _as_double_cpu(scores)
    n, k = s.shape
    score, blk_n = _block_scores(s, bh, bwid)
    order = torch.argsort(score, stable=True)
    if at_most:
        cum = torch.cumsum(blk_n[order], 0)
        p = int((cum <= sparsity * n * k + 1e-9).sum())
    else:
        p = _closest_prefix(blk_n[order], sparsity * n * k)
    keep = torch.ones(score.numel(), dtype=torch.bool)
    keep[order[:p]] = False
    return _expand_blocks(keep, n, k, bh, bwid).to(scores.device)


def nm_mask(scores: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """N:M along K: each group of ``m`` consecutive input features of an output
    feature keeps its ``n`` best (a trailing partial group keeps ``min(n, len)``)."""
    _check_scores(scores)
    n = _check_pos_int("n", n)
    m = _check_pos_int("m", m)
    if n > m:
        raise ValueError(f"n must be <= m, got n={n}, m={m}")
    s = _as_double_cpu(scores)
    rows, k = s.shape
    out = torch.zeros(rows, k, dtype=torch.bool)
    full = (k // m) * m
    if full:
        out[:, :full] = _keep_top_along(s[:, :full].reshape(rows, k // m, m), 2, n).view(rows, full)
    if full < k:
        out[:, full:] = _keep_top_along(s[:, full:], 1, n)
    return out.to(scores.device)


# ---------------------------------------------------------------------------
# one weight
# ---------------------------------------------------------------------------
def mask_for(pattern: str, scores: Tensor, sparsity: Optional[float], tile: int = 128, *,
             col_sparsity: ColSparsity = 0.0, delta: float = 0.0, k_align: int = 1, unit: int = 1,
             vector: int = 16, block: Union[int, Sequence[int]] = 32, n: int = 2, m: int = 4) -> Tensor:
    """Bool keep-mask of ``pattern`` for one ``scores[N, K]`` at ``sparsity``.

    For ``"tew"`` this is the union of the TW part and the residue (see
    :func:`tew_masks` for the two parts). For ``"nm"`` the sparsity is fixed
    at ``1 - n/m``: pass ``None`` or that value.
    """
    check_pattern(pattern)
    _check_scores(scores)
    if pattern == "nm":
        if sparsity is not None and abs(float(sparsity) - (1 - n / m)) > 1e-9:
            raise ValueError(f"pattern 'nm' ({n}:{m}) has a fixed sparsity of {1 - n / m}; "
                             f"got sparsity={sparsity} (pass sparsity={1 - n / m} or None)")
        return nm_mask(scores, n, m)
    if sparsity is None:
        raise ValueError(f"sparsity is required for pattern {pattern!r}")
    if pattern == "tw":
        return tw_mask(scores, sparsity, tile, col_sparsity, k_align, unit)
    if pattern == "tew":
        tw, res = tew_masks(scores, sparsity, delta, tile, col_sparsity, k_align, unit)
        return tw | res
    if pattern == "ew":
        return ew_mask(scores, sparsity)
    if pattern == "vw":
        return vw_mask(scores, sparsity, vector)
    return bw_mask(scores, sparsity, block)


# ---------------------------------------------------------------------------
# many weights: one global threshold, or the same ratio each
# ---------------------------------------------------------------------------
def tw_global_threshold(scores: Sequence[Tensor], sparsity: float, tile: int, col_sparsity: float = 0.0,
                        k_align: int = 1, unit: int = 1) -> Tuple[float, Optional[float]]:
    """``(threshold, col_threshold)`` such that ``ops.tile_mask_threshold`` with
    them (and the same ``k_align``, ``unit``) prunes a ``sparsity`` fraction of
    all the weights together.

    Column threshold (2-D TW): one quantile of the column scores
    (``||scores[n, :]||_2 / K``) of all weights, weighted by their K, so that
    ``col_sparsity`` of all weights go with their columns. Row threshold: one
    quantile of the pruning groups of every tile of every weight (a group is
    ``max(1, k_align // unit)`` ranked runs of ``unit`` rows; its score is the
    best run score in it, see ``ops.tile_segment_scores``), weighted by their
    element counts. Thresholds sit half way between neighbouring scores, so
    float rounding cannot move a group across them.
    """
    k_align, unit = check_unit(k_align, unit)
    mats = [_as_double_cpu(s) for s in scores]
    total = float(sum(s.numel() for s in mats))
    col_thr: Optional[float] = None
    kept_cols = [s.shape[0] for s in mats]
    col_pruned = 0.0
    if col_sparsity > 0:
        cs = [s.norm(dim=1) / max(s.shape[1], 1) for s in mats]
        w = torch.cat([torch.full((c.numel(),), float(s.shape[1]), dtype=torch.float64) for c, s in zip(cs, mats)])
        allc = torch.cat(cs)
        order = torch.argsort(allc, stable=True)
        p = _closest_prefix(w[order], col_sparsity * total)
        col_thr = _threshold_between(allc[order], p)
        kept_cols = [int((c >= col_thr).sum()) for c in cs]
        col_pruned = float(sum((s.shape[0] - kc) * s.shape[1] for s, kc in zip(mats, kept_cols)))
    group = max(1, k_align // unit)
    group_scores, group_elems = [], []
    for s, nc in zip(mats, kept_cols):
        k = s.shape[1]
        if k == 0:
            continue
        us = ops.tile_segment_scores(s, tile, col_thr, unit)  # [T, U] run scores
        t, runs = us.shape
        if t == 0:
            continue
        g = torch.full((t,), float(tile), dtype=torch.float64)
        g[-1] = float(nc - tile * (t - 1)) if nc > tile * (t - 1) else float(tile)
        run_len = torch.full((runs,), float(unit), dtype=torch.float64)
        run_len[-1] = float(k - unit * (runs - 1))
        ranked, idx = torch.sort(us, dim=1, descending=True, stable=True)
        # the core groups ranked runs from the bottom, its first group partial;
        # cut from the top that is the same partition
        begins = torch.arange(0, runs, group)
        ends = (begins + group).clamp(max=runs)
        cum = torch.cat([torch.zeros(t, 1, dtype=torch.float64), torch.cumsum(run_len[idx], 1)], 1)
        group_scores.append(ranked[:, begins].flatten())
        group_elems.append((g[:, None] * (cum[:, ends] - cum[:, begins])).flatten())
    if not group_scores:
        return -1.0, col_thr
    us, ue = torch.cat(group_scores), torch.cat(group_elems)
    order = torch.argsort(us, stable=True)
    p = _closest_prefix(ue[order], max(0.0, sparsity * total - col_pruned))
    return _threshold_between(us[order], p), col_thr


def _ew_global(mats: List[Tensor], sparsity: float) -> List[Tensor]:
    flat = torch.cat([s.flatten() for s in mats])
    keep = _keep_top(flat, flat.numel() - int(round(sparsity * flat.numel())))
    out, start = [], 0
    for s in mats:
        out.append(keep[start:start + s.numel()].view(s.shape))
        start += s.numel()
    return out


def _bw_global(mats: List[Tensor], sparsity: float, block) -> List[Tensor]:
    # Threshold on the block score (mean squared score) across all weights.
    bh, bwid = (block, block) if isinstance(block, int) else tuple(block)
    scores, elems = [], []
    for s in mats:
        sc, cnt = _block_scores(s, bh, bwid)
        scores.append(sc)
        elems.append(cnt)
    allsc, alle = torch.cat(scores), torch.cat(elems)
    order = torch.argsort(allsc, stable=True)
    p = _closest_prefix(alle[order], sparsity * float(sum(s.numel() for s in mats)))
    keep_all = torch.ones(allsc.numel(), dtype=torch.bool)
    keep_all[order[:p]] = False
    out, start = [], 0
    for s, sc in zip(mats, scores):
        out.append(_expand_blocks(keep_all[start:start + sc.numel()], *s.shape, bh, bwid))
        start += sc.numel()
    return out


def _capped(mats: List[Tensor], sparsity: float, f_global, f_layer, cap: Optional[float]) -> List[Tensor]:
    """Global masks with every weight's sparsity capped at ``cap``: weights the
    global threshold would prune beyond ``cap`` are pruned at ``cap`` on their
    own and the threshold is solved again over the others (water filling)."""
    n = len(mats)
    total = float(sum(s.numel() for s in mats))
    fixed: dict = {}
    out: List[Optional[Tensor]] = [None] * n
    while True:
        free = [i for i in range(n) if i not in fixed]
        if not free:
            break
        free_total = float(sum(mats[i].numel() for i in free))
        pruned_fixed = float(sum(int((~m).sum()) for m in fixed.values()))
        target = min(max((sparsity * total - pruned_fixed) / free_total, 0.0), 1.0 - 1e-9) if free_total else 0.0
        masks = f_global([mats[i] for i in free], target)
        viol = []
        if cap is not None:
            viol = [i for i, m in zip(free, masks) if m.numel() and 1.0 - float(m.sum()) / m.numel() > cap + 1e-9]
        if not viol:
            for i, m in zip(free, masks):
                out[i] = m
            break
        for i in viol:
            fixed[i] = f_layer(mats[i], cap)
    for i, m in fixed.items():
        out[i] = m
    return out  # type: ignore[return-value]


SCORE_NORMS = ("rms", None)
AUTO_CAP_SHARE = 0.25  # "auto" cap: every weight keeps >= this share of the target density


def check_allocation(score_norm, max_layer_sparsity) -> None:
    """Validates the global-scope allocation options of :func:`masks_for`."""
    if score_norm not in SCORE_NORMS:
        raise ValueError(f"score_norm must be 'rms' or None, got {score_norm!r}")
    if isinstance(max_layer_sparsity, str):
        if max_layer_sparsity != "auto":
            raise ValueError(f"max_layer_sparsity must be a float, 'auto' or None, got {max_layer_sparsity!r}")
    elif max_layer_sparsity is not None:
        _check_fraction("max_layer_sparsity", max_layer_sparsity)


def resolve_max_layer_sparsity(max_layer_sparsity, sparsity: float) -> Optional[float]:
    """The per-weight sparsity cap of the global scope: a float as given,
    ``"auto"``: ``1 - (1 - sparsity) / 4`` (every weight keeps at least a
    quarter of the average density: 93.75% at 75%), None: no cap."""
    if max_layer_sparsity == "auto":
        return 1.0 - AUTO_CAP_SHARE * (1.0 - sparsity)
    return None if max_layer_sparsity is None else float(max_layer_sparsity)


def _normalized(mats: List[Tensor], score_norm: Optional[str]) -> List[Tensor]:
    """Each weight's scores over their root mean square (``"rms"``), so that a
    global threshold compares how a layer's importance is spread over its
    tiles, not the layers' scales (fan-in, init, learned gains). Scores that
    are all zero are left as they are."""
    if score_norm is None:
        return mats
    out = []
    for s in mats:
        rms = float(s.square().mean().sqrt()) if s.numel() else 0.0
        out.append(s / rms if rms > 0 else s)
    return out


def masks_for(pattern: str, scores: Sequence[Tensor], sparsity: Optional[float], tile: int = 128, *,
              scope: str = "global", col_sparsity: ColSparsity = 0.0, delta: float = 0.0, k_align: int = 1,
              unit: int = 1, score_norm: Optional[str] = "rms",
              max_layer_sparsity: Union[float, str, None] = "auto", vector: int = 16,
              block: Union[int, Sequence[int]] = 32, n: int = 2, m: int = 4
              ) -> List[Union[Tensor, Tuple[Tensor, Tensor]]]:
    """Masks for several weights at once.

    ``scope="global"``: one threshold across all weights (``tw``/``tew``: on
    tile row segments, as the original; ``ew``: on single weights; ``bw``: on
    blocks), so layers end at different sparsities that together reach
    ``sparsity``. Raw scores differ in scale between layers (fan-in at random
    init, learned gains), and a raw global threshold can prune a whole layer;
    two defaults prevent that:

    * ``score_norm="rms"``: each weight's scores are divided by their root
      mean square first, so the threshold compares importance relative to
      each layer's own scale (None: raw scores, the original's rule; keep it
      for scores that are comparable across layers, e.g. calibrated Taylor).
    * ``max_layer_sparsity="auto"``: no weight is pruned beyond
      ``1 - (1 - s) / 4`` of its elements (93.75% at ``s = 0.75``); a weight
      the threshold would prune further is pruned at the cap on its own and
      the threshold is re-solved over the others, so the total still meets
      ``s``. A float sets the cap; None removes it.

    ``vw`` and ``nm`` are balanced by definition: they always prune each
    weight at the same ratio. ``scope="layer"``: every weight is pruned to
    ``sparsity`` on its own (normalisation and cap do not apply).

    Returns one bool mask per weight, or for ``"tew"`` a ``(tw, residue)`` pair.
    """
    check_pattern(pattern)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    tile = _check_pos_int("tile", tile)
    k_align, unit = check_unit(k_align, unit)
    check_allocation(score_norm, max_layer_sparsity)
    scores = [_check_scores(s) for s in scores]
    if pattern == "nm":
        if sparsity is not None and abs(float(sparsity) - (1 - n / m)) > 1e-9:
            raise ValueError(f"pattern 'nm' ({n}:{m}) has a fixed sparsity of {1 - n / m}; "
                             f"got sparsity={sparsity} (pass sparsity={1 - n / m} or None)")
    else:
        if sparsity is None:
            raise ValueError(f"sparsity is required for pattern {pattern!r}")
        sparsity = _check_fraction("sparsity", sparsity)
    kw = dict(col_sparsity=col_sparsity, delta=delta, k_align=k_align, unit=unit, vector=vector, block=block, n=n,
              m=m)
    if scope == "layer" or pattern in ("vw", "nm") or len(scores) <= 1:
        out = []
        for s in scores:
            if pattern == "tew":
                out.append(tew_masks(s, sparsity, delta, tile, col_sparsity, k_align, unit))
            else:
                out.append(mask_for(pattern, s, sparsity, tile, **kw))
        return out
    devices = [s.device for s in scores]
    mats = _normalized([_as_double_cpu(s) for s in scores], score_norm)
    if pattern in ("tw", "tew"):
        delta = _check_fraction("delta", delta) if pattern == "tew" else 0.0
        s_tw = sparsity + delta
        if s_tw >= 1.0:
            raise ValueError(f"sparsity + delta must be < 1, got {sparsity} + {delta}")
        col_frac = resolve_col_sparsity(col_sparsity, s_tw) / s_tw if s_tw > 0 else 0.0

        def f_global(ms, target):
            thr, col_thr = tw_global_threshold(ms, target, tile, col_frac * target, k_align, unit)
            return [ops.tile_mask_threshold(x, tile, thr, col_thr, k_align, unit) for x in ms]

        def f_layer(x, cap):
            return ops.tile_mask(x, tile, cap, col_frac * cap, k_align, unit)

        tws = _capped(mats, s_tw, f_global, f_layer, resolve_max_layer_sparsity(max_layer_sparsity, s_tw))
        if pattern == "tw":
            return [t.to(d) for t, d in zip(tws, devices)]
        # global residue: the best round(delta * total) pruned weights of all layers
        masked = [torch.where(t, torch.full_like(x, -1.0), x) for x, t in zip(mats, tws)]
        count = int(round(delta * sum(x.numel() for x in mats)))
        flat = torch.cat([x.flatten() for x in masked])
        count = min(count, int((flat >= 0).sum()))
        keep = _keep_top(flat, count)
        out, start = [], 0
        for x, t, d in zip(mats, tws, devices):
            out.append((t.to(d), keep[start:start + x.numel()].view(x.shape).to(d)))
            start += x.numel()
        return out
    cap = resolve_max_layer_sparsity(max_layer_sparsity, sparsity)
    if pattern == "ew":
        res = _capped(mats, sparsity, _ew_global, ew_mask, cap)
    else:
        res = _capped(mats, sparsity, lambda ms, t: _bw_global(ms, t, block),
                      lambda x, c: bw_mask(x, c, block, at_most=True), cap)
    return [r.to(d) for r, d in zip(res, devices)]
