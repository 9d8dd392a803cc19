"""TileSparseLinear: a Linear layer with a tile-wise sparse weight."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import MaskedMixin, TileSparseBase, check_positive_int

__all__ = ["TileSparseLinear", "MaskedLinear"]


def _fake_sparsity_mask(module: nn.Module):
    """(raw weight, mask, tile) of a module parametrized by torch.ao.pruning's
    FakeSparsity, else None."""
    params = getattr(module, "parametrizations", None)
    if params is None or "weight" not in params:
        return None
    for p in params["weight"]:
        if hasattr(p, "mask"):
            return params["weight"].original, p.mask.to(torch.bool), getattr(p, "tile", None)
    return None


def _source_weight(module: nn.Module, mask: Optional[Tensor], sparsity: Optional[float], tile: int):
    """(weight, mask, tile) for ``from_dense``: the raw weight of ``module``, and
    the mask/tile of its torch.ao.pruning parametrization when the caller gave
    neither a mask nor a sparsity."""
    ao = _fake_sparsity_mask(module)
    if ao is None:
        return module.weight, mask, tile
    if mask is None and sparsity is None:
        mask = ao[1]
        tile = ao[2] if ao[2] is not None else tile
    return ao[0], mask, tile


def _finish_from_dense(mod: "TileSparseBase", weight: Tensor, bias: Optional[Tensor], copy: bool,
                       mask: Optional[Tensor], residue: Optional[Tensor], sparsity: Optional[float], **prune_kw):
    """Adopts the dense parameters, then applies ``mask`` or prunes at ``sparsity``."""
    _adopt(mod, weight, bias, copy)
    if mask is not None:
        mod.set_mask(mask, residue, unit=prune_kw.get("unit", 1))
    elif sparsity is not None:
        mod.prune(sparsity, **prune_kw)
    return mod


class TileSparseLinear(TileSparseBase):
    r"""``y = x W^T + b`` with ``W[out_features, in_features]`` pruned tile-wise.

    Output features are grouped into tiles of ``tile``; every tile keeps its
    own set of input features, so each tile is one dense GEMM
    (:func:`tilesparse.ops.tw_linear`).

    Two states (see ``docs/usage.md``):

    * masked (training while the mask can change): dense ``weight`` Parameter,
      ``mask`` buffer; forward is ``tw_linear(x, layout.pack(weight), layout,
      bias)`` so the weight gradient is zero where pruned.
    * final (:meth:`finalize`): only the packed 1-D ``values`` Parameter and the
      index buffers ``cols``, ``row_offsets``, ``rows`` (and ``layout_meta``).

    A new module starts dense (all-ones mask); prune it with :meth:`prune` or
    :meth:`set_mask`, or build it with :meth:`from_dense`.

    Args:
        in_features: K.
        out_features: N.
        bias: whether to learn an additive bias.
        tile: output features per tile (G).
    """

    __constants__ = ["in_features", "out_features", "tile"]
    in_features: int
    out_features: int

    def __init__(self, in_features: int, out_features: int, bias: bool = True, tile: int = 128,
                 device=None, dtype=None) -> None:
        super().__init__()
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        self._setup(in_features, out_features, tile)
        factory = dict(device=device, dtype=dtype)
        weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        b = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self._init_state(weight, b)
        self.reset_parameters()

    def _setup(self, in_features: int, out_features: int, tile: int) -> None:
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_positive_int("tile", tile)
        self.in_features, self.out_features, self.tile, self.groups = in_features, out_features, tile, 1
        self._n_g, self._k = out_features, in_features
        self._weight_shape = (out_features, in_features)

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation, then re-applies the mask (masked state)
        or re-packs a fresh dense initialisation (final state)."""
        w = torch.empty(self.out_features, self.in_features, dtype=self._dtype(), device=self.cols.device)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        with torch.no_grad():
            if self.finalized:
                self.values.copy_(torch.cat([self.layout(0).pack(w)]))
                if self.has_residue:
                    g, n, k = self.residue_index
                    self.residue_values.copy_(w[n, k])
            else:
                self.weight.copy_(w)
                self.apply_mask()
            if self.bias is not None:
                bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
                nn.init.uniform_(self.bias, -bound, bound)

    def _dtype(self) -> torch.dtype:
        return self.values.dtype if self.finalized else self._parameters["weight"].dtype

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() < 1 or input.shape[-1] != self.in_features:
            # the op takes K from the input: a wider input would pass its index checks
            raise ValueError(f"input must have in_features = {self.in_features} as its last dimension, "
                             f"got shape {tuple(input.shape)}")
        return self._gemm(input, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                + self._state_repr())

    # ---------------------------------------------------------- conversions
    @classmethod
    def from_dense(cls, linear: nn.Linear, sparsity: Optional[float] = None, *, tile: int = 128,
                   mask: Optional[Tensor] = None, residue: Optional[Tensor] = None, col_sparsity=0.0,
                   delta: float = 0.0, k_align: int = 1, unit: int = 1, scores: Optional[Tensor] = None,
                   copy: bool = False) -> "TileSparseLinear":
        """A TileSparseLinear (masked state) from a dense ``nn.Linear``.

        The mask is ``mask`` (tile-wise, plus an optional TEW ``residue``), or
        computed at ``sparsity`` from ``scores`` (default ``|weight|``; TEW when
        ``delta > 0``), or the mask of a torch.ao.pruning parametrization on
        ``linear``, or all ones. ``unit``: aligned runs of input features kept
        or pruned together (a given ``mask`` must respect it). Without
        ``copy`` the new module shares ``linear``'s Parameters, so an
        optimizer built on them keeps working (the pruned entries are zeroed
        in place).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        weight, mask, tile = _source_weight(linear, mask, sparsity, tile)
        out_f, in_f = weight.shape
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod._setup(in_f, out_f, tile)
        return _finish_from_dense(mod, weight, linear.bias, copy, mask, residue, sparsity, col_sparsity=col_sparsity,
                                  delta=delta, k_align=k_align, unit=unit, scores=scores)

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the pruned weight (zeros where pruned)."""
        w = self.dense_weight().detach()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta",
                        dtype=w.dtype)
        lin.weight = nn.Parameter(w.clone())
        if self.bias is not None:
            lin.bias = nn.Parameter(self.bias.detach().clone())
        return lin


def _adopt(mod: TileSparseBase, weight: Tensor, bias: Optional[Tensor], copy: bool) -> None:
    """Puts ``mod`` in the masked state (all-ones mask) on ``weight``/``bias``
    (shared Parameters unless ``copy``)."""
    if copy or not isinstance(weight, nn.Parameter):
        weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    if bias is not None and (copy or not isinstance(bias, nn.Parameter)):
        bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    mod._init_state(weight, bias)


class MaskedLinear(MaskedMixin, nn.Linear):
    """``nn.Linear`` with a bool ``mask`` buffer: ``F.linear(x, weight * mask, bias)``.

    How the comparison patterns (ew, vw, bw, nm) run: masks only, no speedup.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_mask()

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight * self.mask, self.bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Optional[Tensor] = None, copy: bool = False) -> "MaskedLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta",
                  dtype=linear.weight.dtype)
        mod.weight = linear.weight if not copy else nn.Parameter(linear.weight.detach().clone())
        if linear.bias is not None:
            mod.bias = linear.bias if not copy else nn.Parameter(linear.bias.detach().clone())
        mod._init_mask()
        if mask is not None:
            mod.set_mask(mask)
        return mod

    def to_dense(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta",
                        dtype=self.weight.dtype)
        lin.weight = nn.Parameter(self.dense_weight().detach().clone())
        if self.bias is not None:
            lin.bias = nn.Parameter(self.bias.detach().clone())
        return lin

    def extra_repr(self) -> str:
        return super().extra_repr() + f", density={self.density:.4f}"
