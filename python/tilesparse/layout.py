"""TileLayout: the packed tile format of one weight (see docs/format.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class TileLayout:
    """Where the kept weights of a tile-wise pruned ``[N, K]`` weight live.

    Tile ``t`` owns output features ``cols[t*tile:(t+1)*tile]`` and keeps the
    input features ``rows[row_offsets[t]:row_offsets[t+1]]``; its values are a
    dense ``[g_t, k_t]`` block, so the tile is one dense GEMM. ``k_t`` counts
    slots: the kept features, then padding that repeats the last one up to a
    multiple of ``PAD`` (so the GPU copies whole 16-byte chunks). Padding slots
    are not weights: the operators ignore their values and give them zero
    gradient (docs/format.md).
    """

    #: Slots per tile are padded to a multiple of this by :meth:`from_mask`.
    PAD = 8

    cols: Tensor
    row_offsets: Tensor
    rows: Tensor
    shape: Tuple[int, int]
    tile: int
    num_values: int

    @classmethod
    def from_mask(cls, mask: Tensor, tile: int) -> "TileLayout":
        """Layout of a tile-wise ``mask`` (bool ``[N, K]``, True = kept).

        Raises ValueError when the mask is not tile-wise for ``tile``: every
        kept output feature of a tile must keep the same input features.
        """
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        cols, row_offsets, rows = torch.ops.tilesparse.layout_from_mask(mask.detach().cpu(), int(tile), cls.PAD)
        layout = cls._build(cols, row_offsets, rows, (mask.shape[0], mask.shape[1]), int(tile))
        return layout.to(mask.device)

    @classmethod
    def _build(cls, cols, row_offsets, rows, shape, tile) -> "TileLayout":
        g = torch.full((row_offsets.numel() - 1,), tile, dtype=torch.int64)
        if g.numel():
            g[-1] = cols.numel() - tile * (g.numel() - 1)
        k = (row_offsets[1:] - row_offsets[:-1]).to(torch.int64)
        return cls(cols, row_offsets, rows, (int(shape[0]), int(shape[1])), tile, int((g * k).sum()))

    # ---- basic properties --------------------------------------------------
    @property
    def num_tiles(self) -> int:
        return self.row_offsets.numel() - 1

    @property
    def device(self) -> torch.device:
        return self.cols.device

    @property
    def num_kept(self) -> int:
        """Kept weights (``num_values`` minus the padding slots)."""
        return int((self.tile_widths() * self.tile_kept().to(torch.int64)).sum())

    @property
    def density(self) -> float:
        n, k = self.shape
        return self.num_kept / (n * k) if n * k else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def tile_rows(self) -> Tensor:
        """Slots per tile (kept input features plus padding), ``[T]``."""
        return self.row_offsets[1:] - self.row_offsets[:-1]

    def tile_kept(self) -> Tensor:
        """Kept input features per tile (padding excluded), ``[T]``."""
        rows = self.rows.to(torch.int64)
        repeat = torch.zeros(rows.numel(), dtype=torch.int64, device=rows.device)
        if rows.numel() > 1:
            repeat[1:] = (rows[1:] == rows[:-1]).to(torch.int64)
        before = torch.cat([repeat.new_zeros(1), repeat.cumsum(0)])  # before[j] = repeats at slots < j
        lo, hi = self.row_offsets[:-1].to(torch.int64), self.row_offsets[1:].to(torch.int64)
        # a tile's padding: the repeats at its slots after the first
        return (hi - lo) - (before[hi] - before[torch.minimum(lo + 1, hi)])

    def tile_widths(self) -> Tensor:
        """Output features per tile, ``[T]`` (the last tile may be partial)."""
        g = torch.full((self.num_tiles,), self.tile, dtype=torch.int64, device=self.cols.device)
        if g.numel():
            g[-1] = self.cols.numel() - self.tile * (g.numel() - 1)
        return g

    # ---- conversions -------------------------------------------------------
    def to(self, device: Union[str, torch.device]) -> "TileLayout":
        device = torch.device(device)
        if device == self.device:
            return self
        return TileLayout(self.cols.to(device), self.row_offsets.to(device), self.rows.to(device), self.shape,
                          self.tile, self.num_values)

    def pack(self, weight: Tensor) -> Tensor:
        """Condensed per-tile values of a dense ``[N, K]`` weight (differentiable)."""
        if isinstance(weight, Tensor) and tuple(weight.shape) != self.shape:
            raise ValueError(f"weight must have the layout's shape {self.shape}, got {tuple(weight.shape)}")
        return torch.ops.tilesparse.tw_pack(weight, self.cols, self.row_offsets, self.rows, self.tile,
                                            self.num_values)

    def unpack(self, values: Tensor) -> Tensor:
        """Dense ``[N, K]`` weight with zeros where pruned (differentiable)."""
        return torch.ops.tilesparse.tw_unpack(values, self.cols, self.row_offsets, self.rows, self.tile,
                                              self.shape[0], self.shape[1])

    def mask(self) -> Tensor:
        """Bool ``[N, K]`` mask of the kept weights."""
        ones = torch.ones(self.num_values, dtype=torch.bool, device=self.device)
        return self.unpack(ones)

    def __repr__(self) -> str:
        return (f"TileLayout(shape={self.shape}, tile={self.tile}, tiles={self.num_tiles}, "
                f"kept_cols={self.cols.numel()}, density={self.density:.4f}, device={self.device})")
