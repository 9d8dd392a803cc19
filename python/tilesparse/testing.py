"""Shared test helpers: devices and dtypes to sweep, reference implementations."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from .layout import TileLayout


def devices() -> List[str]:
    """CPU always; CUDA when a device is present and the CUDA kernels are built."""
    from . import built_with_cuda

    out = ["cpu"]
    if torch.cuda.is_available() and built_with_cuda():
        out.append("cuda")
    return out


FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def tolerance(dtype: torch.dtype) -> dict:
    """atol/rtol for comparing a kernel with a float64 reference in `dtype`."""
    return {
        torch.float64: dict(atol=1e-10, rtol=1e-10),
        torch.float32: dict(atol=1e-4, rtol=1e-4),
        torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
        torch.float16: dict(atol=1e-2, rtol=1e-2),
    }[dtype]


def reference_tw_linear(x, weight, mask, bias=None):
    """Dense masked linear in float64: the independent reference for tw_linear."""
    y = F.linear(x.double(), (weight.double() * mask), None if bias is None else bias.double())
    return y


def is_tile_wise(mask: torch.Tensor, tile: int) -> bool:
    """Independent check of the TW structure: kept features, grouped in order
    into tiles of `tile`, keep identical input-feature sets within a tile."""
    kept = mask.any(dim=1).nonzero().flatten()
    for start in range(0, kept.numel(), tile):
        group = mask[kept[start:start + tile]]
        if not bool((group == group[0]).all()):
            return False
    return True


def random_layout(n: int, k: int, tile: int, sparsity: float, col_sparsity: float = 0.0, seed: int = 0,
                  device="cpu"):
    """A random tile-wise weight, its mask and layout."""
    from .ops import tile_mask

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    mask = tile_mask(w.abs(), tile, sparsity, col_sparsity)
    return w.to(device), mask.to(device), TileLayout.from_mask(mask, tile).to(device)
