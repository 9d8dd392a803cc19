"""TileSparseConv2d: a Conv2d whose im2col GEMM weight is tile-wise sparse."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ._base import MaskedMixin, TileSparseBase, check_positive_int
from .linear import _finish_from_dense, _source_weight

__all__ = ["TileSparseConv2d", "MaskedConv2d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _check_pair(name: str, value, minimum: int) -> Tuple[int, int]:
    pair = _pair(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in pair):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


class TileSparseConv2d(TileSparseBase):
    r"""``nn.Conv2d`` computed as im2col + tile-wise sparse GEMM.

    The weight ``[out_channels, in_channels/groups, kh, kw]`` is pruned as the
    GEMM weight ``W_g[N_g, K]`` of each group, ``N_g = out_channels/groups``,
    ``K = in_channels/groups * kh * kw`` (the order of ``F.unfold``). Forward:
    ``F.unfold`` the input to ``[B, C*kh*kw, L]``, run
    :func:`tilesparse.ops.tw_linear` per group on ``[B, L, K]``, and fold the
    ``[B, L, out_channels]`` result back to NCHW.

    ``groups > 1``: one tile-wise layout per group (concatenated in the index
    buffers), and one ``tw_linear`` per group; tiles never straddle groups.
    Depthwise convolutions (``N_g = 1``) are accepted but tile-wise pruning is
    then plain input pruning per channel, which ``sparsify`` skips by default.

    Same two states (masked / final) and API as
    :class:`~tilesparse.nn.TileSparseLinear`.
    """

    __constants__ = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode", "tile"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding: Union[str, int, Tuple[int, int]] = 0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", tile: int = 128, device=None, dtype=None) -> None:
        super().__init__()
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode, tile)
        factory = dict(device=device, dtype=dtype)
        weight = nn.Parameter(torch.empty(self._weight_shape, **factory))
        b = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._init_state(weight, b)
        self.reset_parameters()

    def _setup(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode,
               tile) -> None:
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("groups", groups)
        check_positive_int("tile", tile)
        if in_channels % groups:
            raise ValueError(f"in_channels must be divisible by groups, got {in_channels} and {groups}")
        if out_channels % groups:
            raise ValueError(f"out_channels must be divisible by groups, got {out_channels} and {groups}")
        self.kernel_size = _check_pair("kernel_size", kernel_size, 1)
        self.stride = _check_pair("stride", stride, 1)
        self.dilation = _check_pair("dilation", dilation, 1)
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = _check_pair("padding", padding, 0)
        self.in_channels, self.out_channels, self.groups, self.tile = in_channels, out_channels, groups, tile
        self.padding_mode = padding_mode
        kh, kw = self.kernel_size
        self._weight_shape = (out_channels, in_channels // groups, kh, kw)
        self._n_g, self._k = out_channels // groups, in_channels // groups * kh * kw
        # [left, right, top, bottom] as F.pad takes it
        if self.padding == "valid":
            pad4 = [0, 0, 0, 0]
        elif self.padding == "same":
            pad4 = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size)):
                total = d * (k - 1)
                pad4 += [total // 2, total - total // 2]
        else:
            ph, pw = self.padding
            pad4 = [pw, pw, ph, ph]
        self._pad4 = tuple(pad4)

    def reset_parameters(self) -> None:
        """nn.Conv2d's initialisation, then re-applies the mask (masked state)
        or packs a fresh dense initialisation (final state)."""
        dtype = self.values.dtype if self.finalized else self._parameters["weight"].dtype
        w = torch.empty(self._weight_shape, dtype=dtype, device=self.cols.device)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        with torch.no_grad():
            if self.finalized:
                wv = self.gemm_view(w)
                self.values.copy_(torch.cat([self.layout(g).pack(wv[g].contiguous()) for g in range(self.groups)]))
                if self.has_residue:
                    g, n, k = self.residue_index
                    self.residue_values.copy_(wv[g, n, k])
            else:
                self.weight.copy_(w)
                self.apply_mask()
            if self.bias is not None:
                fan_in = self._k
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(self.bias, -bound, bound)

    def output_size(self, h: int, w: int) -> Tuple[int, int]:
        """Spatial output size for an ``h x w`` input."""
        l, r, t, b = self._pad4
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        return ((h + t + b - dh * (kh - 1) - 1) // sh + 1, (w + l + r - dw * (kw - 1) - 1) // sw + 1)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() not in (3, 4):
            raise ValueError(f"input must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(input.shape)}")
        unbatched = input.dim() == 3
        x = input.unsqueeze(0) if unbatched else input
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input must have {self.in_channels} channels, got {x.shape[1]}")
        l, r, t, b = self._pad4
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad4, mode=self.padding_mode)
            pad = (0, 0)
        elif l == r and t == b:
            pad = (t, l)
        else:
            x = F.pad(x, self._pad4)
            pad = (0, 0)
        n, _, h, w = x.shape
        oh = (h + 2 * pad[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * pad[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=pad, stride=self.stride)
        y = self._gemm(cols.transpose(1, 2), self.bias)  # [B, L, Cout]
        y = y.transpose(1, 2).reshape(n, self.out_channels, oh, ow)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + ", " + self._state_repr()

    # ---------------------------------------------------------- conversions
    @classmethod
    def from_dense(cls, conv: nn.Conv2d, sparsity: Optional[float] = None, *, tile: int = 128,
                   mask: Optional[Tensor] = None, residue: Optional[Tensor] = None, col_sparsity=0.0,
                   delta: float = 0.0, k_align: int = 1, unit: int = 1, scores: Optional[Tensor] = None,
                   copy: bool = False) -> "TileSparseConv2d":
        """A TileSparseConv2d (masked state) from a dense ``nn.Conv2d``; see
        :meth:`TileSparseLinear.from_dense` for the arguments. Each group's
        GEMM weight ``[N_g, K]`` is pruned separately at ``sparsity``."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        weight, mask, tile = _source_weight(conv, mask, sparsity, tile)
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod._setup(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   conv.dilation, conv.groups, conv.padding_mode, tile)
        return _finish_from_dense(mod, weight, conv.bias, copy, mask, residue, sparsity, col_sparsity=col_sparsity,
                                  delta=delta, k_align=k_align, unit=unit, scores=scores)

    def to_dense(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the pruned weight (zeros where pruned)."""
        w = self.dense_weight().detach()
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None, self.padding_mode, device="meta",
                         dtype=w.dtype)
        conv.weight = nn.Parameter(w.clone())
        if self.bias is not None:
            conv.bias = nn.Parameter(self.bias.detach().clone())
        return conv


class MaskedConv2d(MaskedMixin, nn.Conv2d):
    """``nn.Conv2d`` with a bool ``mask`` buffer: ``conv(x, weight * mask)``.
    How the comparison patterns (ew, vw, bw, nm) run on convolutions; each
    group's GEMM weight ``[N_g, K]`` is masked."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_mask()

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.weight * self.mask, self.bias)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: Optional[Tensor] = None, copy: bool = False) -> "MaskedConv2d":
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        mod = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode, device="meta", dtype=conv.weight.dtype)
        mod.weight = conv.weight if not copy else nn.Parameter(conv.weight.detach().clone())
        if conv.bias is not None:
            mod.bias = conv.bias if not copy else nn.Parameter(conv.bias.detach().clone())
        mod._init_mask()
        if mask is not None:
            mod.set_mask(mask)
        return mod

    def to_dense(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None, self.padding_mode, device="meta",
                         dtype=self.weight.dtype)
        conv.weight = nn.Parameter(self.dense_weight().detach().clone())
        if self.bias is not None:
            conv.bias = nn.Parameter(self.bias.detach().clone())
        return conv

    def extra_repr(self) -> str:
        return super().extra_repr() + f", density={self.density:.4f}"
