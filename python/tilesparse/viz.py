"""Mask pictures: ``plot_mask(mask_or_module, "mask.png", tile=128)``.

The image is the GEMM weight ``W[N, K]`` (output features down, input
features across): kept weights dark, pruned white, the TEW residue red, and a
line above the first output feature of every tile (for 2-D TW the tiles are
formed from the surviving output features, so the lines follow them).
Needs matplotlib (``pip install tilesparse[plot]``); uses the Agg canvas, no
display.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["plot_mask"]


def _tile_starts(mask2d: Tensor, tile: int):
    """Output-feature index where each tile begins: kept features grouped in
    order into tiles of ``tile`` (pruned outputs belong to no tile)."""
    kept = mask2d.any(dim=1).nonzero().flatten().tolist()
    return [kept[i] for i in range(0, len(kept), tile)]


def plot_mask(mask_or_module: Union[Tensor, nn.Module], path: Union[str, os.PathLike], tile: Optional[int] = None,
              *, group: int = 0, figsize: Tuple[float, float] = (6.0, 4.0), dpi: int = 100,
              title: Optional[str] = None) -> str:
    """Writes a PNG of a keep-mask with its tile boundaries; returns ``path``.

    Args:
        mask_or_module: a bool mask ``[N, K]`` (or weight-shaped, viewed as
            ``[N, K]``), or a tile-sparse / masked module (its keep mask; for a
            grouped convolution, group ``group``).
        tile: tile size for the boundaries (default: the module's; none drawn
            for a plain mask without ``tile``).
        figsize, dpi: the PNG is ``figsize[0]*dpi x figsize[1]*dpi`` pixels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    residue = None
    if isinstance(mask_or_module, nn.Module):
        mod = mask_or_module
        if not hasattr(mod, "keep_mask"):
            raise TypeError(f"mask_or_module must be a bool mask or a tilesparse module, got {type(mod).__name__}")
        tile = tile if tile is not None else getattr(mod, "tile", None)
        if hasattr(mod, "tw_mask"):
            mask = mod.gemm_view(mod.tw_mask())
            residue = mod.gemm_view(mod.residue_keep_mask())
        else:
            mask = mod.gemm_view(mod.keep_mask())
        groups = mask.shape[0]
        if not 0 <= group < groups:
            raise ValueError(f"group must be in [0, {groups}), got {group}")
        mask = mask[group]
        residue = None if residue is None else residue[group]
    elif isinstance(mask_or_module, Tensor):
        mask = mask_or_module
        if mask.dim() < 2:
            raise ValueError(f"mask must have at least 2 dimensions, got shape {tuple(mask.shape)}")
        mask = mask.reshape(mask.shape[0], -1)
    else:
        raise TypeError(f"mask_or_module must be a torch.Tensor or nn.Module, got {type(mask_or_module).__name__}")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0):
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi <= 0:
        raise ValueError(f"dpi must be a positive int, got {dpi!r}")
    mask = mask.detach().to("cpu", torch.bool)
    img = mask.to(torch.int64)
    if residue is not None:
        img = img + 2 * residue.detach().cpu().to(torch.int64)
    n, k = mask.shape

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = ListedColormap(["#ffffff", "#1f3b73", "#d62728"])
    ax.imshow(img.numpy(), cmap=cmap, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
    if tile is not None:
        for start in _tile_starts(mask, tile)[1:]:
            ax.axhline(start - 0.5, color="#ff7f0e", linewidth=0.8)
    ax.set_xlabel(f"input feature (K = {k})")
    ax.set_ylabel(f"output feature (N = {n})")
    density = float(mask.sum() + (residue.sum() if residue is not None else 0)) / max(n * k, 1)
    ax.set_title(title if title is not None else
                 f"keep mask: density {density:.3f}" + (f", tile {tile}" if tile is not None else ""))
    fig.savefig(os.fspath(path), dpi=dpi, format="png")
    return os.fspath(path)
