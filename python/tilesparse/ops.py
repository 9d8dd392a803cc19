"""Typed wrappers, fake (meta) kernels and autograd of the ``tilesparse`` operators.

The kernels are C++ (``torch.ops.tilesparse.*``); this module adds what the
dispatcher needs for ``torch.compile`` (fake kernels that check the schema's
contract with ``torch._check``) and for training (``register_autograd``, whose
backward calls other registered ops, so it too compiles and runs on any device).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .layout import TileLayout

__all__ = [
    "tile_mask",
    "tile_mask_threshold",
    "tile_segment_scores",
    "tw_linear",
]

_ops = torch.ops.tilesparse


# ---------------------------------------------------------------------------
# Typed wrappers
# ---------------------------------------------------------------------------
def tile_mask(scores: Tensor, tile: int, sparsity: float, col_sparsity: float = 0.0, k_align: int = 1,
              unit: int = 1) -> Tensor:
    """Tile-wise keep-mask (bool, shape of ``scores``) at a target sparsity.

    ``scores[N, K]`` holds one non-negative importance per weight (``|w|`` for
    magnitude). Output features are grouped into tiles of ``tile``; each tile
    keeps a set of input features (a multiple of ``k_align``, or all), chosen
    by row-segment score ``||scores[tile, k]||_2 / width`` under one threshold
    across tiles, so the achieved sparsity is within half a pruning group
    (``max(k_align, unit)`` rows of a tile) of ``sparsity``. With
    ``col_sparsity > 0`` (2-D TW) that fraction of output features is pruned
    first by column score and the survivors are regrouped into tiles.

    ``unit > 1`` keeps or prunes each aligned run ``[u*unit, (u+1)*unit)`` of
    input features of a tile as a whole (the last run is partial when
    ``K % unit != 0``), ranked by the root mean square of its segment scores.
    ``k_align`` and ``unit`` must divide one another; with ``k_align > unit`` a
    tile keeps a multiple of ``k_align // unit`` runs, or all of them.
    """
    return _ops.tile_mask(scores, int(tile), float(sparsity), float(col_sparsity), int(k_align), int(unit))


def tile_mask_threshold(scores: Tensor, tile: int, threshold: float, col_threshold: Optional[float] = None,
                        k_align: int = 1, unit: int = 1) -> Tensor:
    """Tile-wise keep-mask keeping row segments (runs of ``unit`` features)
    whose score is >= ``threshold``.

    Lets one global threshold (e.g. a quantile of ``tile_segment_scores`` over
    all layers, with the same ``unit``) prune every layer consistently.
    """
    return _ops.tile_mask_threshold(scores, int(tile), float(threshold),
                                    None if col_threshold is None else float(col_threshold), int(k_align), int(unit))


def tile_segment_scores(scores: Tensor, tile: int, col_threshold: Optional[float] = None, unit: int = 1) -> Tensor:
    """Row-segment scores ``[T, K]`` that ``tile_mask_threshold`` compares with its
    threshold; with ``unit > 1`` the run scores ``[T, ceil(K / unit)]`` (root
    mean square of the run's segment scores)."""
    return _ops.tile_segment_scores(scores, int(tile), None if col_threshold is None else float(col_threshold),
                                    int(unit))


def tw_linear(x: Tensor, values: Tensor, layout: TileLayout, bias: Optional[Tensor] = None) -> Tensor:
    """``y = x @ W^T + bias`` for a tile-wise sparse ``W`` held as ``(values, layout)``.

    ``x`` is ``[..., K]``; returns ``[..., N]``. Differentiable in ``x``,
    ``values`` and ``bias``; the weight gradient stays packed.
    """
    if not isinstance(layout, TileLayout):
        raise TypeError(f"layout must be a tilesparse.TileLayout, got {type(layout).__name__}")
    # The op takes in_features from x, so only the layout knows the expected one.
    if isinstance(x, Tensor) and x.dim() >= 1 and x.shape[-1] != layout.shape[1]:
        raise ValueError(f"x must have in_features = {layout.shape[1]} as its last dimension (layout shape "
                         f"{layout.shape}), got shape {tuple(x.shape)}")
    return _ops.tw_linear(x, values, layout.cols, layout.row_offsets, layout.rows, bias, layout.shape[0],
                          layout.tile)


# ---------------------------------------------------------------------------
# Fake kernels: output metadata only, checking what the real kernels check.
# ---------------------------------------------------------------------------
def _check_index(t: Tensor, name: str) -> None:
    torch._check(t.dtype == torch.int32, lambda: f"{name} must have dtype torch.int32, got {t.dtype}")
    torch._check(t.dim() == 1, lambda: f"{name} must be 1-D, got shape {tuple(t.shape)}")


def _check_indices(device: torch.device, **named: Tensor) -> None:
    """Every named index tensor is int32, 1-D and on ``device``."""
    for name, t in named.items():
        _check_index(t, name)
        torch._check(t.device == device, lambda: f"{name} must be on {device}, got {t.device}")


def _check_layout(cols: Tensor, row_offsets: Tensor, rows: Tensor, tile: int, device: torch.device) -> None:
    torch._check(tile > 0, lambda: f"tile must be positive, got {tile}")
    _check_indices(device, cols=cols, row_offsets=row_offsets, rows=rows)


def _check_scores(scores: Tensor, tile: int) -> None:
    torch._check(scores.dim() == 2, lambda: f"scores must be 2-D, got shape {tuple(scores.shape)}")
    torch._check(scores.dtype.is_floating_point, lambda: f"scores must be floating-point, got {scores.dtype}")
    torch._check(tile > 0, lambda: f"tile must be positive, got {tile}")


def _check_unit(k_align: int, unit: int) -> None:
    torch._check(k_align > 0, lambda: f"k_align must be positive, got {k_align}")
    torch._check(unit > 0, lambda: f"unit must be positive, got {unit}")
    torch._check(k_align % unit == 0 or unit % k_align == 0,
                 lambda: f"k_align and unit must divide one another, got k_align={k_align}, unit={unit}")


@torch.library.register_fake("tilesparse::tile_segment_scores")
def _(scores, tile, col_threshold=None, unit=1):
    _check_scores(scores, tile)
    _check_unit(1, unit)
    if col_threshold is None:
        num_tiles = (scores.shape[0] + tile - 1) // tile
    else:
        num_tiles = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty((num_tiles, (scores.shape[1] + unit - 1) // unit))


@torch.library.register_fake("tilesparse::tile_mask")
def _(scores, tile, sparsity, col_sparsity=0.0, k_align=1, unit=1):
    _check_scores(scores, tile)
    _check_unit(k_align, unit)
    torch._check(0.0 <= sparsity < 1.0, lambda: f"sparsity must be in [0, 1), got {sparsity}")
    torch._check(0.0 <= col_sparsity <= sparsity, lambda: f"col_sparsity must be in [0, sparsity], got {col_sparsity}")
    return torch.empty_like(scores, dtype=torch.bool)


@torch.library.register_fake("tilesparse::tile_mask_threshold")
def _(scores, tile, threshold, col_threshold=None, k_align=1, unit=1):
    _check_scores(scores, tile)
    _check_unit(k_align, unit)
    return torch.empty_like(scores, dtype=torch.bool)


@torch.library.register_fake("tilesparse::layout_from_mask")
def _(mask, tile, pad=8):
    torch._check(mask.dtype == torch.bool, lambda: f"mask must have dtype torch.bool, got {mask.dtype}")
    torch._check(mask.dim() == 2, lambda: f"mask must be 2-D, got shape {tuple(mask.shape)}")
    torch._check(tile > 0, lambda: f"tile must be positive, got {tile}")
    torch._check(pad > 0, lambda: f"pad must be positive, got {pad}")
    ctx = torch.library.get_ctx()
    num_cols = ctx.new_dynamic_size()
    num_rows = ctx.new_dynamic_size()
    idx = dict(dtype=torch.int32, device=mask.device)
    return (mask.new_empty((num_cols,), **idx), mask.new_empty(((num_cols + tile - 1) // tile + 1,), **idx),
            mask.new_empty((num_rows,), **idx))


@torch.library.register_fake("tilesparse::tw_pack")
def _(weight, cols, row_offsets, rows, tile, num_values):
    torch._check(weight.dim() == 2, lambda: f"weight must be 2-D, got shape {tuple(weight.shape)}")
    _check_layout(cols, row_offsets, rows, tile, weight.device)
    return weight.new_empty((num_values,))


@torch.library.register_fake("tilesparse::tw_unpack")
def _(values, cols, row_offsets, rows, tile, out_features, in_features):
    torch._check(values.dim() == 1, lambda: f"values must be 1-D, got shape {tuple(values.shape)}")
    _check_layout(cols, row_offsets, rows, tile, values.device)
    return values.new_empty((out_features, in_features))


def _check_linear(x: Tensor, values: Tensor, name: str = "x") -> None:
    torch._check(x.dim() >= 1, lambda: f"{name} must have at least 1 dimension")
    torch._check(x.dtype.is_floating_point, lambda: f"{name} must be floating-point, got {x.dtype}")
    torch._check(values.dim() == 1, lambda: f"values must be 1-D, got shape {tuple(values.shape)}")
    torch._check(values.dtype == x.dtype, lambda: f"values must have the dtype of {name} ({x.dtype}), got {values.dtype}")
    torch._check(values.device == x.device, lambda: f"values must be on {x.device}, got {values.device}")


@torch.library.register_fake("tilesparse::tw_linear")
def _(x, values, cols, row_offsets, rows, bias, out_features, tile):
    _check_linear(x, values)
    _check_layout(cols, row_offsets, rows, tile, x.device)
    if bias is not None:
        torch._check(bias.shape == (out_features,), lambda: f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        torch._check(bias.dtype == x.dtype, lambda: f"bias must have the dtype of x ({x.dtype}), got {bias.dtype}")
        torch._check(bias.device == x.device, lambda: f"bias must be on {x.device}, got {bias.device}")
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.register_fake("tilesparse::tw_linear_grad_input")
def _(grad_out, values, cols, row_offsets, rows, in_features, tile):
    _check_linear(grad_out, values, "grad_out")
    _check_layout(cols, row_offsets, rows, tile, grad_out.device)
    return grad_out.new_empty((*grad_out.shape[:-1], in_features))


def _check_grad_values(grad_out: Tensor, x: Tensor) -> None:
    """The activations of a grad_values operator: same dtype, device and leading dimensions."""
    torch._check(x.dtype == grad_out.dtype, lambda: f"x must have the dtype of grad_out ({grad_out.dtype}), got {x.dtype}")
    torch._check(x.shape[:-1] == grad_out.shape[:-1], lambda: "grad_out and x must share their leading dimensions")
    torch._check(x.device == grad_out.device, lambda: f"x must be on {grad_out.device}, got {x.device}")


@torch.library.register_fake("tilesparse::tw_linear_grad_values")
def _(grad_out, x, cols, row_offsets, rows, tile, num_values):
    _check_grad_values(grad_out, x)
    _check_layout(cols, row_offsets, rows, tile, grad_out.device)
    return grad_out.new_empty((num_values,))


# ---------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------
def _tw_linear_setup(ctx, inputs, output):
    x, values, cols, row_offsets, rows, bias, out_features, tile = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, values if ctx.needs_input_grad[0] else None,
                          cols, row_offsets, rows)
    ctx.tile = tile
    ctx.in_features = x.shape[-1]
    ctx.num_values = values.numel()
    ctx.has_bias = bias is not None


def _tw_linear_backward(ctx, grad):
    x, values, cols, row_offsets, rows = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = _ops.tw_linear_grad_input(grad, values, cols, row_offsets, rows, ctx.in_features, ctx.tile)
    if ctx.needs_input_grad[1]:
        grad_values = _ops.tw_linear_grad_values(grad, x, cols, row_offsets, rows, ctx.tile, ctx.num_values)
    if ctx.has_bias and ctx.needs_input_grad[5]:
        grad_bias = grad.sum(dim=tuple(range(grad.dim() - 1))) if grad.dim() > 1 else grad
    return grad_x, grad_values, None, None, None, grad_bias, None, None


torch.library.register_autograd("tilesparse::tw_linear", _tw_linear_backward, setup_context=_tw_linear_setup)


def _pack_setup(ctx, inputs, output):
    weight, cols, row_offsets, rows, tile, num_values = inputs
    ctx.save_for_backward(cols, row_offsets, rows)
    ctx.tile = tile
    ctx.shape = (weight.shape[0], weight.shape[1])


def _pack_backward(ctx, grad):
    cols, row_offsets, rows = ctx.saved_tensors
    return _ops.tw_unpack(grad, cols, row_offsets, rows, ctx.tile, *ctx.shape), None, None, None, None, None


torch.library.register_autograd("tilesparse::tw_pack", _pack_backward, setup_context=_pack_setup)


def _unpack_setup(ctx, inputs, output):
    values, cols, row_offsets, rows, tile, out_features, in_features = inputs
    ctx.save_for_backward(cols, row_offsets, rows)
    ctx.tile = tile
    ctx.num_values = values.numel()


def _unpack_backward(ctx, grad):
    cols, row_offsets, rows = ctx.saved_tensors
    return (_ops.tw_pack(grad, cols, row_offsets, rows, ctx.tile, ctx.num_values),
            None, None, None, None, None, None)


torch.library.register_autograd("tilesparse::tw_unpack", _unpack_backward, setup_context=_unpack_setup)


# The two backward operators are themselves differentiable (bilinear in their
# tensor inputs), so double backward (gradgradcheck, Hessian-vector products)
# is exact instead of silently treating them as constants.
def _grad_input_setup(ctx, inputs, output):
    grad_out, values, cols, row_offsets, rows, in_features, tile = inputs
    ctx.save_for_backward(grad_out if ctx.needs_input_grad[1] else None,
                          values if ctx.needs_input_grad[0] else None, cols, row_offsets, rows)
    ctx.tile = tile
    ctx.out_features = grad_out.shape[-1]
    ctx.num_values = values.numel()


def _grad_input_backward(ctx, grad):
    # grad_x = grad_out @ W: adjoint wrt grad_out is grad @ W^T, wrt W is grad_out^T @ grad.
    grad_out, values, cols, row_offsets, rows = ctx.saved_tensors
    grad = grad.contiguous()
    g_out = g_values = None
    if ctx.needs_input_grad[0]:
        g_out = _ops.tw_linear(grad, values, cols, row_offsets, rows, None, ctx.out_features, ctx.tile)
    if ctx.needs_input_grad[1]:
        g_values = _ops.tw_linear_grad_values(grad_out.contiguous(), grad, cols, row_offsets, rows, ctx.tile,
                                              ctx.num_values)
    return g_out, g_values, None, None, None, None, None


torch.library.register_autograd("tilesparse::tw_linear_grad_input", _grad_input_backward,
                                setup_context=_grad_input_setup)


def _grad_values_setup(ctx, inputs, output):
    grad_out, x, cols, row_offsets, rows, tile, num_values = inputs
    ctx.save_for_backward(grad_out if ctx.needs_input_grad[1] else None, x if ctx.needs_input_grad[0] else None,
                          cols, row_offsets, rows)
    ctx.tile = tile
    ctx.out_features = grad_out.shape[-1]
    ctx.in_features = x.shape[-1]


def _grad_values_backward(ctx, grad):
    # grad_values = pack(grad_out^T @ x): adjoint wrt grad_out is x @ G^T, wrt x is grad_out @ G (G = unpack(grad)).
    grad_out, x, cols, row_offsets, rows = ctx.saved_tensors
    grad = grad.contiguous()
    g_out = g_x = None
    if ctx.needs_input_grad[0]:
        g_out = _ops.tw_linear(x, grad, cols, row_offsets, rows, None, ctx.out_features, ctx.tile)
    if ctx.needs_input_grad[1]:
        g_x = _ops.tw_linear_grad_input(grad_out.contiguous(), grad, cols, row_offsets, rows, ctx.in_features,
                                        ctx.tile)
    return g_out, g_x, None, None, None, None, None


torch.library.register_autograd("tilesparse::tw_linear_grad_values", _grad_values_backward,
                                setup_context=_grad_values_setup)


# ---------------------------------------------------------------------------
# TEW residue: csr_linear (x @ R^T for a CSR R) and its backward operators
# ---------------------------------------------------------------------------
def _check_csr(row_ptr: Tensor, cols: Tensor, rows: int, nnz: int, device: torch.device) -> None:
    _check_indices(device, row_ptr=row_ptr, cols=cols)
    torch._check(row_ptr.numel() == rows + 1,
                 lambda: f"row_ptr must have out_features + 1 = {rows + 1} entries, got {row_ptr.numel()}")
    torch._check(cols.numel() == nnz, lambda: f"cols must have one entry per value ({nnz}), got {cols.numel()}")


@torch.library.register_fake("tilesparse::csr_linear")
def _(x, values, row_ptr, cols, out_features):
    _check_linear(x, values)
    _check_csr(row_ptr, cols, out_features, values.numel(), x.device)
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.register_fake("tilesparse::csr_linear_grad_input")
def _(grad_out, values, row_ptr, cols, in_features):
    _check_linear(grad_out, values, "grad_out")
    _check_csr(row_ptr, cols, grad_out.shape[-1], values.numel(), grad_out.device)
    return grad_out.new_empty((*grad_out.shape[:-1], in_features))


@torch.library.register_fake("tilesparse::csr_linear_grad_values")
def _(grad_out, x, row_ptr, cols):
    _check_grad_values(grad_out, x)
    _check_csr(row_ptr, cols, grad_out.shape[-1], cols.numel(), grad_out.device)
    return grad_out.new_empty((cols.numel(),))


# CUDA: the residue is small next to the tile GEMM and GPU memory bandwidth
# is high, so a gather of the residue's input features and an index_add into
# its outputs (O(M * nnz) memory) serves until a CUDA SpMM kernel exists.
def _rows2d(t: Tensor) -> Tensor:
    """``t`` as ``[M, last]`` (``reshape(-1, 0)`` cannot infer M when the last size is 0)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def _csr_entry_rows(row_ptr: Tensor, nnz: int) -> Tensor:
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=row_ptr.device), counts, output_size=nnz)


def _csr_linear_gather(x, values, row_ptr, cols, out_features):
    x2 = _rows2d(x)
    y = x2.new_zeros((x2.shape[0], out_features))
    y.index_add_(1, _csr_entry_rows(row_ptr, values.numel()), x2[:, cols.long()] * values)
    return y.view(*x.shape[:-1], out_features)


def _csr_grad_input_gather(grad_out, values, row_ptr, cols, in_features):
    g2 = _rows2d(grad_out)
    gx = g2.new_zeros((g2.shape[0], in_features))
    gx.index_add_(1, cols.long(), g2[:, _csr_entry_rows(row_ptr, values.numel())] * values)
    return gx.view(*grad_out.shape[:-1], in_features)


def _csr_grad_values_gather(grad_out, x, row_ptr, cols):
    g2, x2 = _rows2d(grad_out), _rows2d(x)
    return (g2[:, _csr_entry_rows(row_ptr, cols.numel())] * x2[:, cols.long()]).sum(0)


# (plain torch ops, also tested on the CPU against the C++ kernels)
for _name, _fn in (("csr_linear", _csr_linear_gather), ("csr_linear_grad_input", _csr_grad_input_gather),
                   ("csr_linear_grad_values", _csr_grad_values_gather)):
    torch.library.register_kernel(f"tilesparse::{_name}", "cuda", _fn)


def _csr_linear_setup(ctx, inputs, output):
    x, values, row_ptr, cols, out_features = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, values if ctx.needs_input_grad[0] else None,
                          row_ptr, cols)
    ctx.in_features = x.shape[-1]


def _csr_linear_backward(ctx, grad):
    x, values, row_ptr, cols = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = grad_values = None
    if ctx.needs_input_grad[0]:
        grad_x = _ops.csr_linear_grad_input(grad, values, row_ptr, cols, ctx.in_features)
    if ctx.needs_input_grad[1]:
        grad_values = _ops.csr_linear_grad_values(grad, x, row_ptr, cols)
    return grad_x, grad_values, None, None, None


torch.library.register_autograd("tilesparse::csr_linear", _csr_linear_backward, setup_context=_csr_linear_setup)


# As for tw_linear, the backward operators are bilinear and differentiable, so
# double backward is exact.
def _csr_grad_input_setup(ctx, inputs, output):
    grad_out, values, row_ptr, cols, in_features = inputs
    ctx.save_for_backward(grad_out if ctx.needs_input_grad[1] else None,
                          values if ctx.needs_input_grad[0] else None, row_ptr, cols)
    ctx.out_features = grad_out.shape[-1]


def _csr_grad_input_backward(ctx, grad):
    # grad_x = grad_out @ R: adjoint wrt grad_out is grad @ R^T, wrt R's entries the entries of grad_out^T @ grad.
    grad_out, values, row_ptr, cols = ctx.saved_tensors
    grad = grad.contiguous()
    g_out = g_values = None
    if ctx.needs_input_grad[0]:
        g_out = _ops.csr_linear(grad, values, row_ptr, cols, ctx.out_features)
    if ctx.needs_input_grad[1]:
        g_values = _ops.csr_linear_grad_values(grad_out.contiguous(), grad, row_ptr, cols)
    return g_out, g_values, None, None, None


torch.library.register_autograd("tilesparse::csr_linear_grad_input", _csr_grad_input_backward,
                                setup_context=_csr_grad_input_setup)


def _csr_grad_values_setup(ctx, inputs, output):
    grad_out, x, row_ptr, cols = inputs
    ctx.save_for_backward(grad_out if ctx.needs_input_grad[1] else None, x if ctx.needs_input_grad[0] else None,
                          row_ptr, cols)
    ctx.out_features = grad_out.shape[-1]
    ctx.in_features = x.shape[-1]


def _csr_grad_values_backward(ctx, grad):
    # grad_values = entries of grad_out^T @ x: adjoint wrt grad_out is x @ G^T, wrt x is grad_out @ G (G: R's
    # pattern holding grad).
    grad_out, x, row_ptr, cols = ctx.saved_tensors
    grad = grad.contiguous()
    g_out = g_x = None
    if ctx.needs_input_grad[0]:
        g_out = _ops.csr_linear(x, grad, row_ptr, cols, ctx.out_features)
    if ctx.needs_input_grad[1]:
        g_x = _ops.csr_linear_grad_input(grad_out.contiguous(), grad, row_ptr, cols, ctx.in_features)
    return g_out, g_x, None, None


torch.library.register_autograd("tilesparse::csr_linear_grad_values", _csr_grad_values_backward,
                                setup_context=_csr_grad_values_setup)
