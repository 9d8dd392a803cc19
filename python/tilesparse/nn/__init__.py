"""Tile-sparse modules: drop-in replacements of nn.Linear and nn.Conv2d.

``TileSparseLinear`` / ``TileSparseConv2d`` run the tile-wise (TW, and TEW)
patterns on :func:`tilesparse.ops.tw_linear`; ``MaskedLinear`` /
``MaskedConv2d`` run the comparison patterns (ew, vw, bw, nm) as a mask times
a dense weight.
"""
from ._base import TileSparseBase
from .conv import MaskedConv2d, TileSparseConv2d
from .linear import MaskedLinear, TileSparseLinear

SPARSE_MODULES = (TileSparseLinear, TileSparseConv2d, MaskedLinear, MaskedConv2d)

__all__ = ["TileSparseBase", "TileSparseLinear", "TileSparseConv2d", "MaskedLinear", "MaskedConv2d",
           "SPARSE_MODULES"]
