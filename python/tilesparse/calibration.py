"""Layer-input statistics from calibration batches, for :func:`tilesparse.oneshot`.

A pruned layer's GEMM input (``[M, K]`` rows: a Linear's input flattened over
its leading dimensions, a Conv2d's im2col patches) is captured with a forward
pre-hook. The capture stops the forward right there (an exception caught
here), so collecting one layer's statistics costs only the part of the model
in front of it. Each batch's product is computed in float32 (float64 for
float64 inputs) and the sum over batches is held in float64, one layer (or
group of layers sharing an input) at a time, so at most one ``K x K`` pair is
held.

``[X, 1]`` (a ones column appended) is used for layers with a bias, so the
bias is reconstructed with the weights.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["default_forward", "gemm_inputs", "input_groups", "input_statistics", "input_second_moments",
           "capture_inputs"]

ForwardFn = Callable[[nn.Module, Any], Any]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """Runs one calibration batch: ``model(**batch)`` for a dict, else ``model(batch)``."""
    if isinstance(batch, dict):
        return model(**batch)
    return model(batch)


def _same_padding(module: nn.Module) -> Tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) of a ``padding`` given as a string."""
    if module.padding == "valid":
        return (0, 0, 0, 0)
    (kh, kw), (dh, dw) = module.kernel_size, module.dilation
    th, tw = dh * (kh - 1), dw * (kw - 1)
    return (tw // 2, tw - tw // 2, th // 2, th - th // 2)


def gemm_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """The rows ``[M, K]`` of ``module``'s GEMM for the input ``x``: a Linear's
    input flattened over its leading dimensions, a Conv2d's im2col patches
    (columns ordered as the weight's ``[Cin, kh, kw]``; ``groups == 1``)."""
    if hasattr(module, "kernel_size"):
        if getattr(module, "groups", 1) != 1:
            raise ValueError(f"gemm_inputs: grouped convolutions are not supported (groups={module.groups})")
        if getattr(module, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"gemm_inputs: padding_mode {module.padding_mode!r} is not supported (only 'zeros')")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        padding = module.padding
        if isinstance(padding, str):
            x = F.pad(x, _same_padding(module))
            padding = 0
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


class _Stop(Exception):
    """Raised by a capture hook to end the forward once the input is captured."""


class _Capture:
    """Captures ``module``'s input on its first call, then stops the forward."""

    def __init__(self, module: nn.Module) -> None:
        self.x: Optional[Tensor] = None
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.x = args[0].detach()
        raise _Stop

    def run(self, model: nn.Module, batch: Any, forward_fn: ForwardFn) -> Optional[Tensor]:
        self.x = None
        try:
            forward_fn(model, batch)
        except _Stop:
            pass
        return self.x

    def remove(self) -> None:
        self.handle.remove()


@torch.no_grad()
def input_groups(model: nn.Module, modules: Dict[str, nn.Module], batch: Any,
                 forward_fn: ForwardFn = default_forward) -> List[List[str]]:
    """The names of ``modules`` grouped by the input tensor they are called
    with (q/k/v of an attention block share one), groups in the order of their
    first call in one forward of ``batch``. Raises if a module is not called."""
    first: Dict[str, Tuple[int, Tensor]] = {}
    handles = []
    for name, mod in modules.items():
        def hook(m, args, name=name):
            if name not in first:
                first[name] = (len(first), args[0])  # keeps the tensor alive: ids stay unique
        handles.append(mod.register_forward_pre_hook(hook))
    try:
        forward_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in first]
    if missing:
        raise ValueError(f"forward_fn did not call the layers {missing} on the first calibration batch; "
                         "every layer to prune must run in the calibration forward")
    groups: List[List[str]] = []
    owner: Dict[int, int] = {}
    for name in sorted(first, key=lambda n: first[n][0]):
        key = id(first[name][1])
        if key not in owner:
            owner[key] = len(groups)
            groups.append([])
        groups[owner[key]].append(name)
    return groups


def _append_ones(r: Tensor, with_ones: bool) -> Tensor:
    return torch.cat([r, r.new_ones(r.shape[0], 1)], 1) if with_ones else r


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 inputs stay float64; others are multiplied in float32 (one batch's
    product; the statistic over batches is summed in float64)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rows(module: nn.Module, x: Tensor, with_ones: bool) -> Tensor:
    return _append_ones(gemm_inputs(module, x).to(_compute_dtype(x)), with_ones)


def _add_product(S: Optional[Tensor], a: Tensor, b: Tensor) -> Tensor:
    """``S += a^T b`` (``S`` float64, created on first use)."""
    p = (a.t() @ b).to(torch.float64)
    if S is None:
        return p
    return S.add_(p)


@torch.no_grad()
def input_statistics(module: nn.Module, model: nn.Module, batches: Sequence, *, with_ones: bool,
                     ref_module: Optional[nn.Module] = None, ref_model: Optional[nn.Module] = None,
                     forward_fn: ForwardFn = default_forward,
                     ref_rows: Optional[Sequence[Optional[Tensor]]] = None,
                     ref_batches: Optional[Sequence] = None) -> Tuple[Tensor, Optional[Tensor], int]:
    """``(H, C, rows)`` of ``module``'s GEMM inputs ``X`` over ``batches``:
    ``H = X^T X`` and, with a reference (the same layer in another model,
    e.g. the dense one), ``C = X_ref^T X`` from the same batches (``None``
    without one); ``rows`` = number of GEMM rows seen. float64.

    ``ref_rows``: the reference's GEMM rows per batch, already captured
    (:func:`capture_inputs`), instead of running ``ref_model``.
    ``ref_batches``: what ``ref_model`` is run on, batch for batch (default
    ``batches``; e.g. the dense block's own inputs, :mod:`tilesparse.blockwise`)."""
    cap = _Capture(module)
    if ref_rows is not None and len(ref_rows) != len(batches):
        raise ValueError(f"ref_rows has {len(ref_rows)} entries for {len(batches)} batches")
    if ref_batches is not None and len(ref_batches) != len(batches):
        raise ValueError(f"ref_batches has {len(ref_batches)} entries for {len(batches)} batches")
    ref = _Capture(ref_module) if ref_module is not None and ref_rows is None else None
    cached = ref_rows is not None
    H = C = None
    rows = 0
    try:
        for bi, batch in enumerate(batches):
            x = cap.run(model, batch, forward_fn)
            if x is None:
                continue  # the layer did not run on this batch
            xs = _rows(module, x, with_ones)
            H = _add_product(H, xs, xs)
            rows += xs.shape[0]
            if ref is not None or cached:
                if cached:
                    xd = ref_rows[bi]
                    if xd is None:
                        raise RuntimeError("the reference layer did not run on a batch where the layer did")
                    xd = _append_ones(xd.to(xs.dtype), with_ones)
                else:
                    xr = ref.run(ref_model, batch if ref_batches is None else ref_batches[bi], forward_fn)
                    if xr is None:
                        raise RuntimeError("the reference layer did not run on a batch where the layer did")
                    xd = _rows(ref_module, xr, with_ones)
                if xd.shape != xs.shape:
                    raise RuntimeError(f"reference inputs {tuple(xd.shape)} differ in shape from the layer's "
                                       f"{tuple(xs.shape)}: the forward must be deterministic")
                C = _add_product(C, xd.to(xs.dtype), xs)
    finally:
        cap.remove()
        if ref is not None:
            ref.remove()
    if H is None:
        raise ValueError("the layer did not run on any calibration batch")
    return H, C, rows


def first_inputs(modules: Sequence[nn.Module], model: nn.Module, batches: Sequence, forward_fn: ForwardFn,
                  on_input: Callable[[int, int, Tensor], None]) -> None:
    """Calls ``on_input(i, b, x)`` with the input ``x`` of the first call of
    ``modules[i]`` on batch ``b``: one forward per batch, stopped once every
    module has run."""
    seen: set = set()
    cur = [0]

    def make_hook(i):
        def hook(m, args):
            if i in seen:
                return
            seen.add(i)
            on_input(i, cur[0], args[0].detach())
            if len(seen) == len(modules):
                raise _Stop
        return hook

    handles = [m.register_forward_pre_hook(make_hook(i)) for i, m in enumerate(modules)]
    try:
        for bi, batch in enumerate(batches):
            seen.clear()
            cur[0] = bi
            try:
                forward_fn(model, batch)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def input_second_moments(modules: Sequence[nn.Module], model: nn.Module, batches: Sequence, *,
                         with_ones: Sequence[bool], forward_fn: ForwardFn = default_forward) -> List[Tensor]:
    """``H = X^T X`` (float64) of several layers' GEMM inputs from one forward
    per batch, stopped once every one of them has run (their first call)."""
    H: List[Optional[Tensor]] = [None] * len(modules)

    def add(i, b, x):
        xs = _rows(modules[i], x, with_ones[i])
        H[i] = _add_product(H[i], xs, xs)

    first_inputs(modules, model, batches, forward_fn, add)
    if any(h is None for h in H):
        raise ValueError("a layer did not run on any calibration batch")
    return H


@torch.no_grad()
def capture_inputs(modules: Sequence[nn.Module], model: nn.Module, batches: Sequence,
                   forward_fn: ForwardFn = default_forward) -> List[List[Optional[Tensor]]]:
    """The GEMM input rows (``[M, K]``, the input's dtype) of several layers on every
    batch, ``out[i][b]`` (``None`` where layer ``i`` did not run on batch
    ``b``): one forward per batch, stopped once every layer has run (their
    first call). Used to hold the dense model's inputs of consecutive layers
    instead of running the dense model once per layer."""
    out: List[List[Optional[Tensor]]] = [[None] * len(batches) for _ in modules]

    def keep(i, b, x):
        out[i][b] = gemm_inputs(modules[i], x).clone()

    first_inputs(modules, model, batches, forward_fn, keep)
    return out
