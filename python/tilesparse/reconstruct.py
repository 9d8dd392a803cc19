"""Masked least squares: the kept weights that best reproduce a target output.

One layer's problem, for every output feature (row) ``n`` with kept input
features ``R_n``::

    min_v || X_s[:, R_n] v - X_d w_n ||^2 + lam ||v||^2

``X_s`` are the layer's inputs in the (partly) pruned model, ``X_d`` in the
dense one, ``w_n`` the dense weights. With ``H = X_s^T X_s + lam I`` and
``B = W C`` (``C = X_d^T X_s``) the solution is ``v = B[n, R_n] H[R_n, R_n]^-1``.
Rows that share a kept set (a tile of TW, a block row of BW) are solved
together by one Cholesky factorisation; patterns whose rows all differ (EW,
VW, N:M, TEW's residue) by batched preconditioned conjugate gradients.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["masked_lstsq", "kept_set_error", "greedy_tile_selection"]


def _groups(keep: Tensor) -> Tuple[Tensor, Tensor]:
    return torch.unique(keep, dim=0, return_inverse=True)


def _kept_set_factors(H: Tensor, uniq: Tensor, inv: Tensor, caller: str):
    """For each distinct non-empty kept set: (its rows, its features R, the
    Cholesky factor of ``H[R, R]``)."""
    for u in range(uniq.shape[0]):
        rows = (inv == u).nonzero().flatten()
        sel = uniq[u].nonzero().flatten()
        if sel.numel() == 0:
            continue
        L, info = torch.linalg.cholesky_ex(H[sel][:, sel])
        if int(info) != 0:
            raise torch.linalg.LinAlgError(f"{caller}: the input statistic is not positive definite (raise damp)")
        yield rows, sel, L


def _exact(H: Tensor, B: Tensor, uniq: Tensor, inv: Tensor) -> Tensor:
    X = torch.zeros_like(B)
    for rows, sel, L in _kept_set_factors(H, uniq, inv, "masked_lstsq"):
        X[rows[:, None], sel[None, :]] = torch.cholesky_solve(B[rows][:, sel].t(), L).t()
    return X


def _pcg(H: Tensor, B: Tensor, keep: Tensor, X0: Tensor, iters: int) -> Tensor:
    """Row ``n``: the SPD system ``H[R_n, R_n] x = B[n, R_n]``, all rows at once
    (Jacobi-preconditioned conjugate gradients, started from ``X0``)."""
    m = keep.to(H.dtype)
    dinv = 1.0 / H.diagonal().clamp_min(1e-30)
    X = X0 * m
    R = (B - X @ H) * m
    Z = R * dinv
    P = Z.clone()
    rz = (R * Z).sum(1, keepdim=True)
    for _ in range(iters):
        AP = (P @ H) * m
        denom = (P * AP).sum(1, keepdim=True)
        alpha = torch.where(denom > 0, rz / denom.clamp_min(1e-30), torch.zeros_like(rz))
        X = X + alpha * P
        R = R - alpha * AP
        Z = R * dinv
        rz_new = (R * Z).sum(1, keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        P = Z + beta * P
        rz = rz_new
    return X


def masked_lstsq(H: Tensor, B: Tensor, keep: Tensor, X0: Tensor, *, max_groups: int = 64,
                 iters: int = 50) -> Tensor:
    """``X[n, R_n] = B[n, R_n] H[R_n, R_n]^-1``, zero elsewhere (``keep[n]`` = ``R_n``).

    ``H`` ``[K, K]`` SPD, ``B`` and ``X0`` ``[N, K]``. Exact when the rows have
    at most ``max_groups`` distinct kept sets; else ``iters`` steps of batched
    PCG from ``X0`` (float32 on the large products, as its accuracy is bounded
    by the iteration count anyway)."""
    uniq, inv = _groups(keep)
    if uniq.shape[0] <= max_groups:
        return _exact(H, B, uniq, inv)
    return _pcg(H.float(), B.float(), keep, X0.float(), iters).to(B.dtype)


def kept_set_error(H: Tensor, B: Tensor, W: Tensor, keep: Tensor) -> float:
    """The objective's excess at the exact solution: ``sum_n (w_n H w_n^T -
    B[n,R] H[R,R]^-1 B[n,R]^T)``, with ``W = B H^-1`` the unconstrained
    optimum; computed from one Cholesky factor per distinct kept set."""
    energy = (W * B).sum(1)
    uniq, inv = _groups(keep)
    err = float(energy.sum())
    for rows, sel, L in _kept_set_factors(H, uniq, inv, "kept_set_error"):
        Z = torch.linalg.solve_triangular(L, B[rows][:, sel].t(), upper=False)
        err -= float((Z * Z).sum())
    return max(err, 0.0)


def greedy_tile_selection(W: Tensor, Hinv: Tensor, tile: int, counts: Tensor, fixed: int = 0) -> Tensor:
    """Greedy second-order (group OBS) choice of the pruned input features of
    every tile: repeatedly removes the feature ``k`` minimising
    ``||W_t[:, k]||^2 / Hinv_t[k, k]``, then updates the tile's weights and
    inverse statistic (``W_t -= W_t[:, k] Hinv_t[k] / Hinv_t[k, k]``, rank-one
    downdate of ``Hinv_t``). ``counts[t]``: features tile ``t`` prunes. The
    last ``fixed`` columns (a bias) are never pruned. Returns the keep mask
    ``[N, K]`` (all columns), tiles batched."""
    n, k = W.shape
    T = -(-n // tile)
    Wt = W.new_zeros(T * tile, k)
    Wt[:n] = W
    Wt = Wt.view(T, tile, k)
    Hi = Hinv.unsqueeze(0).repeat(T, 1, 1)
    removed = torch.zeros(T, k, dtype=torch.bool)
    if fixed:
        removed[:, k - fixed:] = True  # excluded from the candidates, not pruned
    keep = torch.ones(T, k, dtype=torch.bool)
    left = counts.clone().to(torch.int64)
    ar = torch.arange(T)
    for _ in range(int(left.max()) if T else 0):
        active = left > 0
        d = Hi.diagonal(dim1=1, dim2=2).clamp_min(1e-30)
        sal = (Wt * Wt).sum(1) / d
        sal[removed] = float("inf")
        j = sal.argmin(1)
        idx = ar[active]
        jj = j[active]
        hrow = Hi[idx, jj, :]                      # [A, K]
        hjj = Hi[idx, jj, jj].clamp_min(1e-30)     # [A]
        wcol = Wt[idx, :, jj]                      # [A, tile]
        Wt[idx] -= wcol[:, :, None] * (hrow / hjj[:, None])[:, None, :]
        Hi[idx] -= hrow[:, :, None] * (hrow / hjj[:, None])[:, None, :]
        Wt[idx, :, jj] = 0
        removed[idx, jj] = True
        keep[idx, jj] = False
        left[idx] -= 1
    return keep.repeat_interleave(tile, 0)[:n]
