"""``tilesparse.oneshot``: calibrated one-shot pruning with reconstruction.

Three things decide the training-free quality of a tile-wise mask (see
docs/study.md): reconstructing every layer toward the *dense* model's
outputs from the inputs it sees in the partly pruned model, letting the
sparsity differ between layers under one total, and (less) the choice of the
features each tile keeps. ``oneshot`` does all three:

1. **allocation** (``allocation="error"``): for every layer, on the dense
   model's inputs, the reconstruction error after the exact refit at a grid of
   sparsities, divided by the layer's output energy. The per-layer sparsities
   minimise the sum of these normalised errors under the total weight budget
   (greedy on the lower convex hull of each curve: the cheapest increment per
   pruned weight first), within ``bounds``.
2. **sequential reconstruction**: layers are taken in execution order, grouped
   by the input they share (q/k/v); each group's inputs ``X_s`` are collected
   on the model pruned so far, the dense inputs ``X_d`` on a dense copy, and
   every layer's kept weights (and bias) are solved in closed form,
   ``V = W C[:, R] H_s[R, R]^-1`` with ``C = X_d^T X_s``, ``H_s = X_s^T X_s``
   (ridge ``damp``).
3. **selection**: features are ranked by the second-order saliency
   ``w^2 / [H^-1]_kk`` of the corrected weights; ``selection="obs"`` picks
   each tile's features by greedy group OBS instead (TW, TEW).

Every pattern gets the same machinery and its own exact (grouped kept sets) or
iterative (per-row kept sets) reconstruction, so comparisons are fair.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .blockwise import BlockPipeline, resolve_blocks, run_block
from .calibration import (ForwardFn, capture_inputs, default_forward, first_inputs, gemm_inputs, input_groups,
                          input_second_moments, input_statistics)
from .importance import _progress, effective_weight
from .patterns import PATTERNS, TILE_PATTERNS, bw_mask, ew_mask, nm_mask, tw_mask, vw_mask
from .reconstruct import greedy_tile_selection, kept_set_error, masked_lstsq
from ._modules import gemm_dims
from .sparsify import default_filter, swap_modules

__all__ = ["oneshot", "oneshot_filter"]


def oneshot_filter(module: nn.Module, fqn: str, *, tile: int = 128, pattern: str = "tw") -> bool:
    """:func:`tilesparse.sparsify.default_filter` without grouped
    convolutions (their im2col statistics are per group; not supported)."""
    return default_filter(module, fqn, tile=tile, pattern=pattern) and getattr(module, "groups", 1) == 1


@dataclass
class _Layer:
    fqn: str
    module: nn.Module       # the swapped (sparse) module in the model
    dense: nn.Module        # the same layer in the dense copy
    n: int                  # output features
    k: int                  # input features (GEMM K)
    bias: bool

    @property
    def numel(self) -> int:
        return self.n * self.k


def _check(sparsity, pattern, tile, unit, bounds, allocation, selection, damp, delta, forward_fn, filter_fn):
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    for name, v in (("tile", tile), ("unit", unit)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if unit != 1 and pattern not in TILE_PATTERNS:
        raise ValueError(f"unit applies to the tile patterns {TILE_PATTERNS} only, got unit={unit} with {pattern!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a float in [0, 1), got {sparsity!r}")
    if pattern == "nm" and abs(sparsity - 0.5) > 1e-9:
        raise ValueError(f"pattern 'nm' (2:4) has a fixed sparsity of 0.5; got sparsity={sparsity}")
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (min, max) of layer sparsities, got {bounds!r}") from None
    if not 0.0 <= lo <= sparsity <= hi < 1.0:
        raise ValueError(f"bounds must satisfy 0 <= min <= sparsity <= max < 1, got bounds={bounds!r} "
                         f"with sparsity={sparsity}")
    if pattern == "tew":
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1) for pattern 'tew', got {delta!r}")
        if hi + delta >= 1.0:
            raise ValueError(f"bounds max + delta must be < 1 for pattern 'tew', got {hi} + {delta}")
    if allocation not in ("error", "uniform"):
        raise ValueError(f"allocation must be 'error' or 'uniform', got {allocation!r}")
    if selection not in ("score", "obs"):
        raise ValueError(f"selection must be 'score' or 'obs', got {selection!r}")
    if selection == "obs" and (pattern not in TILE_PATTERNS or unit != 1):
        raise ValueError(f"selection='obs' (greedy within tiles) applies to 'tw'/'tew' with unit=1, got "
                         f"pattern={pattern!r}, unit={unit}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp > 0:
        raise ValueError(f"damp must be a positive float, got {damp!r}")
    if forward_fn is not None and not callable(forward_fn):
        raise TypeError(f"forward_fn must be callable (model, batch), got {type(forward_fn).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable (module, fqn) -> bool, got {type(filter_fn).__name__}")
    return float(sparsity), lo, hi


class _Solver:
    """One group's statistics, damped and inverted once for all its layers."""

    def __init__(self, H: Tensor, C: Optional[Tensor], k: int, damp: float) -> None:
        lam = damp * float(H.diagonal()[:k].mean().clamp_min(1e-12))
        self.H = H + lam * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        self.C = H if C is None else C
        L, info = torch.linalg.cholesky_ex(self.H)
        if int(info) != 0:
            raise torch.linalg.LinAlgError("oneshot: the input statistic is not positive definite (raise damp)")
        self.Hinv = torch.cholesky_inverse(L)

    def problem(self, Wbar: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(B, W_opt, scores)``: ``B = W C``, the unconstrained optimum
        ``W_opt = B H^-1``, and the saliency ``|w| / sqrt([H^-1]_kk)``."""
        B = Wbar @ self.C
        Wopt = B @ self.Hinv
        scores = Wopt.abs() / self.Hinv.diagonal().clamp_min(1e-30).sqrt()
        return B, Wopt, scores


class _Pattern:
    """Mask selection of one pattern at a given layer sparsity."""

    def __init__(self, pattern: str, tile: int, unit: int, delta: float, vector: int, block: int,
                 selection: str) -> None:
        self.pattern, self.tile, self.unit, self.delta = pattern, tile, unit, delta
        self.vector, self.block, self.selection = vector, block, selection

    @property
    def grouped(self) -> bool:
        """Rows share kept sets (exact error curves are affordable)."""
        return self.pattern in ("tw", "tew")

    def _tw(self, scores: Tensor, s: float) -> Tensor:
        kw = {"unit": self.unit} if self.unit != 1 else {}
        return tw_mask(scores, min(s, 1.0 - 1e-9), self.tile, **kw)

    def select(self, scores: Tensor, s: float, Wopt: Optional[Tensor] = None, Hinv: Optional[Tensor] = None,
               fixed: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
        """``(mask, residue)`` ``[N, K]`` at sparsity ``s`` (residue: TEW only)."""
        p = self.pattern
        if p in ("tw", "tew"):
            s_tw = s + self.delta if p == "tew" else s
            mask = self._tw(scores, s_tw)
            if self.selection == "obs" and Wopt is not None:
                # the score mask fixes how many features each tile prunes; greedy OBS picks which
                per_tile = (~mask[::self.tile]).sum(1)
                mask = greedy_tile_selection(Wopt, Hinv, self.tile, per_tile, fixed)[:, :scores.shape[1]]
            if p == "tew":
                pruned = scores.clone()
                pruned[mask] = -1.0
                count = min(int(round(self.delta * scores.numel())), int((~mask).sum()))
                res = torch.zeros_like(mask)
                if count > 0:
                    res.view(-1)[torch.topk(pruned.flatten(), count).indices] = True
                return mask, res
            return mask, None
        if p == "ew":
            return ew_mask(scores, s), None
        if p == "vw":
            return vw_mask(scores, s, self.vector), None
        if p == "bw":
            return bw_mask(scores, s, self.block), None
        return nm_mask(scores), None


def _augment(keep: Tensor, bias: bool) -> Tensor:
    return torch.cat([keep, keep.new_ones(keep.shape[0], 1)], 1) if bias else keep


def _lower_hull(points: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """Lower convex hull of ``(pruned, error)`` points sorted by pruned count."""
    hull: List[Tuple[float, float]] = []
    for p in sorted(points):
        if hull and abs(p[0] - hull[-1][0]) < 1e-9:
            if p[1] < hull[-1][1]:
                hull.pop()
            else:
                continue
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) <= 0:
            hull.pop()
        hull.append(p)
    return hull


def allocate(curves: Sequence[List[Tuple[float, float]]], total: float) -> List[float]:
    """Pruned weights per layer (floats) summing to ``total``: each layer starts
    at its first point; then the hull segments with the smallest error
    increment per pruned weight are taken first, the last one partially.
    ``curves[l]``: ``(pruned, normalised error)`` points of layer ``l``."""
    hulls = [_lower_hull(c) for c in curves]
    out = [h[0][0] for h in hulls]
    need = total - sum(out)
    if need < -1e-6 or need > sum(h[-1][0] - h[0][0] for h in hulls) + 1e-6:
        raise ValueError("the sparsity cannot be reached within the bounds")
    segs = []
    for li, h in enumerate(hulls):
        for a, b in zip(h, h[1:]):
            segs.append(((b[1] - a[1]) / (b[0] - a[0]), li, b[0] - a[0]))
    segs.sort(key=lambda t: (t[0], t[1]))
    for _, li, dp in segs:
        if need <= 0:
            break
        take = min(dp, need)
        out[li] += take
        need -= take
    return out


def _grid(lo: float, hi: float, step: float) -> List[float]:
    n = max(1, int(math.ceil((hi - lo) / step - 1e-9)))
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def oneshot(model: nn.Module, calib: Iterable, sparsity: float, *, pattern: str = "tw", tile: int = 128,
            unit: int = 1, forward_fn: Optional[ForwardFn] = None,
            filter_fn: Optional[Callable[[nn.Module, str], bool]] = None, allocation: str = "error",
            bounds: Tuple[float, float] = (0.0, 0.95), sequential: bool = True,
            blocks: Union[str, Sequence[str], None] = "auto", selection: str = "score",
            damp: float = 0.01, delta: float = 0.02, vector: int = 16, block: int = 32, grid_step: float = 0.05,
            max_groups: int = 64, iters: int = 50, stat_budget: int = 1 << 28, cache_budget: int = 1 << 30,
            progress: Optional[bool] = None) -> nn.Module:
    """Calibrated one-shot pruning of ``model`` in place; returns it (the root
    may be a new object if the root itself is a pruned layer).

    * ``calib``: calibration batches (an iterable; it is read into a list and
      traversed several times). ``forward_fn(model, batch)`` runs one; default
      ``model(**batch)`` for a dict, else ``model(batch)``.
    * ``sparsity``: the total over the pruned layers' weights (exact up to one
      pruning unit of the last layer); ``pattern`` ``tw`` (tile ``tile``,
      pruning ``unit`` consecutive input features at a time), ``tew`` (TW plus
      ``delta`` element-wise), ``ew``, ``vw`` (``vector``), ``bw``
      (``block``), ``nm`` (2:4; sparsity 0.5, no allocation).
    * ``allocation``: ``"error"`` (non-uniform, from normalised reconstruction
      errors; every layer within ``bounds``) or ``"uniform"``.
    * ``sequential``: inputs from the partly pruned model (else from the dense
      one); the target is always the dense model's output.
    * ``blocks``: the model's chain of blocks (module names, each called once
      per forward, in order, with the previous one's output as its first
      argument; e.g. ``encoder.layer.0`` ... ``encoder.layer.5``). The
      sequential pass then keeps each block's inputs in both models and runs
      one block at a time (``O(L)`` block forwards instead of the model's
      prefix for every layer group, ``O(L^2)``). ``"auto"``: the children of
      the largest ``nn.ModuleList`` holding every pruned layer, if the model
      passes the check on the first batch (else the whole forward per group);
      ``None``: always the whole forward. Only the cost changes, not the
      result.
    * ``selection``: ``"score"`` or ``"obs"`` (greedy second-order within
      tiles; slower).
    * ``damp``: ridge, a fraction of the mean input energy.
    * ``stat_budget``: bytes of input statistics the allocation pass may hold
      at once (consecutive layers calibrated in one forward of the dense
      model); 0: one layer's (or input group's) at a time.
    * ``cache_budget``: bytes of the dense model's layer inputs the sequential
      pass may hold: with ``blocks``, those of one block's layer groups from
      one run of the dense block; without, those of consecutive groups from
      one dense forward (instead of one dense forward per group); 0: none
      held. Only the cost changes, not the result.

    Returns the model with tile-sparse (``tw``, ``tew``) or masked modules in
    the masked state, ready to fine-tune or :func:`tilesparse.finalize`.
    Needs memory for a dense copy of the model and one layer's ``K x K``
    statistics (with ``blocks``, also the current block's inputs in both
    models on every calibration batch).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sparsity, lo, hi = _check(sparsity, pattern, tile, unit, bounds, allocation, selection, damp, delta,
                              forward_fn, filter_fn)
    batches = list(calib)
    if not batches:
        raise ValueError("calib is empty: oneshot needs at least one calibration batch")
    forward_fn = forward_fn or default_forward
    user_filter = filter_fn

    def filter_fn(mod, fqn):
        if user_filter is None:
            return oneshot_filter(mod, fqn, tile=tile, pattern=pattern)
        if not user_filter(mod, fqn):
            return False
        if getattr(mod, "groups", 1) != 1:
            raise ValueError(f"oneshot: layer {fqn!r} is a grouped convolution (groups={mod.groups}); "
                             "not supported, leave it out with filter_fn")
        return True

    dense = copy.deepcopy(model)
    model, entries = swap_modules(model, pattern, tile, filter_fn)
    if not entries:
        raise ValueError("oneshot: nothing to prune: no Linear / Conv2d layer of the model is selected by "
                         "filter_fn (the default needs at least `tile` output features per layer for 'tw'/'tew')")
    layers = []
    for fqn, mod in entries:
        _, n, k = gemm_dims(mod)
        layers.append(_Layer(fqn, mod, dense.get_submodule(fqn) if fqn else dense, n, k, mod.bias is not None))
    by_name = {l.fqn: l for l in layers}
    pat = _Pattern(pattern, tile, unit, delta, vector, block, selection)
    fixed_s = pattern == "nm"
    modes = [(m, m.training) for m in list(model.modules()) + list(dense.modules())]
    model.eval()
    dense.eval()
    try:
        with torch.no_grad():
            groups = input_groups(dense, {l.fqn: l.dense for l in layers}, batches[0], forward_fn)
            order = [by_name[f] for g in groups for f in g]
            total = sparsity * sum(l.numel for l in layers)
            if allocation == "error" and not fixed_s and hi > lo:
                curves = _curves(groups, by_name, dense, batches, forward_fn, pat, lo, hi, damp, grid_step,
                                 stat_budget, progress)
                plan = dict(zip([l.fqn for l in order], allocate([curves[l.fqn] for l in order], total)))
            else:
                plan = {l.fqn: (0.5 if fixed_s else sparsity) * l.numel for l in layers}
            carry = 0.0
            names, strict = resolve_blocks(blocks, dense, [l.fqn for l in layers])  # checked in every mode
            pipe = None
            if sequential and names is not None:
                pipe = BlockPipeline.build(names, model, dense, [l.fqn for l in layers], batches, forward_fn, strict)
            cache = None if pipe is not None else _DenseInputs(groups, by_name, dense, batches, forward_fn,
                                                               cache_budget if sequential else 0)
            block_of = [pipe.block_of(g[0]) for g in groups] if pipe is not None else []
            held: Dict[int, List[Optional[Tensor]]] = {}
            for gi, g in enumerate(_progress(groups, len(groups), "oneshot: reconstruct", progress)):
                first = by_name[g[0]]
                if pipe is not None:  # the current block alone, on its inputs in both models
                    b = block_of[gi]
                    if gi == 0 or block_of[gi - 1] != b:  # a new block: its groups' dense inputs from one run
                        pipe.advance(b)
                        mine = [j for j, bj in enumerate(block_of) if bj == b]
                        rows = pipe.dense_rows([by_name[groups[j][0]].dense for j in mine], cache_budget)
                        held = dict(zip(mine, rows)) if rows is not None else {}
                    blk, dblk = pipe.blocks()
                    src = dict(model=blk, batches=pipe.calls(True), ref_model=dblk, ref_batches=pipe.calls(False),
                               forward_fn=run_block, ref_rows=held.pop(gi, None))
                elif sequential:
                    src = dict(model=model, batches=batches, ref_model=dense, forward_fn=forward_fn,
                               ref_rows=cache.rows(gi))
                else:  # X_s = X_d, so C = H (input_statistics returns C=None without a reference)
                    src = dict(model=dense, batches=batches, forward_fn=forward_fn)

                def stats(l: _Layer):
                    if not sequential:
                        return input_statistics(l.dense, with_ones=l.bias, **src)
                    return input_statistics(l.module, with_ones=l.bias, ref_module=l.dense, **src)

                H, C, rows = stats(first)
                if cache is not None:
                    cache.seen(gi, rows)
                k = first.k
                shared = _Solver(H, C, k, damp)
                for fqn in g:
                    l = by_name[fqn]
                    solver = shared
                    if l.bias != first.bias:  # shares the input, not the bias setting: its own statistics
                        H2, C2, _ = stats(l)
                        solver = _Solver(H2, C2, k, damp)
                    want = plan[fqn] + carry
                    if not fixed_s:
                        want = min(max(want, lo * l.numel), hi * l.numel)
                    got = _prune_layer(l, solver, pat, want / l.numel, max_groups, iters)
                    carry += plan[fqn] - got
                del H, C, shared
                if cache is not None:
                    cache.drop(gi)
    finally:
        for m, t in modes:
            m.train(t)
    return model


class _DenseInputs:
    """The dense model's GEMM inputs of the groups of the sequential pass,
    captured a chunk of consecutive groups at a time (one dense forward per
    batch for the whole chunk) within ``budget`` bytes.

    A group's size is estimated from its rows on the first batch, scaled by
    the ratio of total to first-batch rows of the groups already seen (every
    group shares the same ratio in a transformer or a CNN). The first group
    is never cached (its dense forward is the shortest)."""

    def __init__(self, groups, by_name, dense, batches, forward_fn, budget: int) -> None:
        self.groups, self.by_name, self.dense = groups, by_name, dense
        self.batches, self.forward_fn, self.budget = batches, forward_fn, budget
        self.held: Dict[int, List[Optional[Tensor]]] = {}
        self.scale: Optional[float] = None
        self.first_rows: List[int] = []
        if budget > 0 and len(groups) > 1:
            mods = [by_name[g[0]].dense for g in groups]
            self.first_rows = [0] * len(groups)

            def count(i, b, x):
                self.first_rows[i] = int(gemm_inputs(mods[i], x).shape[0])

            first_inputs(mods, dense, batches[:1], forward_fn, count)

    def _bytes(self, gi: int) -> float:
        l = self.by_name[self.groups[gi][0]]
        item = l.dense.weight.element_size()
        return self.scale * max(self.first_rows[gi], 1) * l.k * item

    def seen(self, gi: int, rows: int) -> None:
        if self.scale is None and self.first_rows and self.first_rows[gi] > 0:
            self.scale = rows / self.first_rows[gi]

    def rows(self, gi: int) -> Optional[List[Optional[Tensor]]]:
        if gi in self.held:
            return self.held[gi]
        if self.budget <= 0 or self.scale is None:
            return None
        chunk, size = [], 0.0
        for j in range(gi, len(self.groups)):
            need = self._bytes(j)
            if chunk and size + need > self.budget:
                break
            chunk.append(j)
            size += need
        if size > self.budget:  # not even one group fits
            return None
        cap = capture_inputs([self.by_name[self.groups[j][0]].dense for j in chunk], self.dense, self.batches,
                             self.forward_fn)
        self.held.update(zip(chunk, cap))
        return self.held[gi]

    def drop(self, gi: int) -> None:
        self.held.pop(gi, None)


def _dense_weight(l: _Layer) -> Tensor:
    w = effective_weight(l.dense).to(torch.float64).reshape(l.n, l.k)
    if l.bias:
        w = torch.cat([w, l.dense.bias.detach().to(torch.float64).reshape(-1, 1).to(w.device)], 1)
    return w


def _prune_layer(l: _Layer, solver: _Solver, pat: _Pattern, s: float, max_groups: int, iters: int) -> float:
    """Selects, reconstructs and writes one layer; returns its pruned count."""
    Wbar = _dense_weight(l).to(solver.H.device)
    B, Wopt, scores = solver.problem(Wbar)
    k = l.k
    mask, res = pat.select(scores[:, :k].cpu(), s, Wopt.cpu(), solver.Hinv.cpu(), int(l.bias))
    keep = mask if res is None else mask | res
    keep_aug = _augment(keep, l.bias).to(B.device)
    V = masked_lstsq(solver.H, B, keep_aug, Wopt * keep_aug, max_groups=max_groups, iters=iters)
    mod = l.module
    w = mod.weight
    mod.set_mask(mask.reshape(w.shape).to(w.device), None if res is None else res.reshape(w.shape).to(w.device))
    w.copy_(V[:, :k].reshape(w.shape).to(device=w.device, dtype=w.dtype))
    if l.bias:
        mod.bias.copy_(V[:, k].to(device=mod.bias.device, dtype=mod.bias.dtype))
    mod.apply_mask()
    return float(l.numel - int(keep.sum()))


def _chunks(groups, by_name, budget: int) -> List[List[List[str]]]:
    """Consecutive groups whose float64 statistics fit in ``budget`` bytes together (at least one)."""
    out, cur, size = [], [], 0
    for g in groups:
        need = sum({(by_name[f].k + by_name[f].bias) ** 2 * 8 for f in g})
        if cur and size + need > budget:
            out.append(cur)
            cur, size = [], 0
        cur.append(g)
        size += need
    if cur:
        out.append(cur)
    return out


def _curves(groups, by_name, dense, batches, forward_fn, pat: _Pattern, lo, hi, damp, step, budget, progress
            ) -> Dict[str, List[Tuple[float, float]]]:
    """``{fqn: [(pruned, error / energy)]}`` on the dense model's inputs.
    Statistics of consecutive groups are collected together within
    ``budget`` bytes (one forward per batch for the whole chunk)."""
    out = {}
    bar = _progress(None, len(groups), "oneshot: allocate", progress)
    for chunk in _chunks(groups, by_name, budget):
        # one statistic per distinct (input, bias setting) of the chunk
        keys = []
        for g in chunk:
            for f in g:
                key = (g[0], by_name[f].bias)
                if key not in keys:
                    keys.append(key)
        Hs = input_second_moments([by_name[g0].dense for g0, _ in keys], dense, batches,
                                  with_ones=[b for _, b in keys], forward_fn=forward_fn)
        stats = dict(zip(keys, Hs))
        del Hs
        for g in chunk:
            solvers = {}
            for fqn in g:
                l = by_name[fqn]
                key = (g[0], l.bias)
                if key not in solvers:
                    solvers[key] = _Solver(stats.pop(key), None, l.k, damp)
                out[fqn] = _curve(l, solvers[key], pat, lo, hi, step)
            del solvers
            bar.update(1)
    bar.close()
    return out


def _curve(l: _Layer, sv: _Solver, pat: _Pattern, lo, hi, step) -> List[Tuple[float, float]]:
    B, Wopt, scores = sv.problem(_dense_weight(l).to(sv.H.device))
    energy = max(float((Wopt * B).sum()), 1e-30)
    sc = scores[:, :l.k].cpu()
    pts = []
    for s in _grid(lo, hi, step):
        mask, res = pat.select(sc, s)
        keep = mask if res is None else mask | res
        if pat.grouped:  # exact; TEW: the TW part's error (the residue only lowers it)
            err = kept_set_error(sv.H, B, Wopt, _augment(mask, l.bias).to(B.device))
        else:  # per-row kept sets: the sum of the pruned weights' OBS saliencies
            err = float((sc[~keep] ** 2).sum())
        pts.append((float(l.numel - int(keep.sum())), err / energy))
    return pts
