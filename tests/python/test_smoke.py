"""End-to-end smoke test: mask -> layout -> pack -> tw_linear vs a dense masked reference."""
import torch

import tilesparse
from tilesparse import TileLayout, ops
from tilesparse.testing import reference_tw_linear


def test_tw_linear_matches_dense_masked_reference():
    torch.manual_seed(0)
    w = torch.randn(300, 70, dtype=torch.float64)
    mask = ops.tile_mask(w.abs(), 128, 0.75)
    layout = TileLayout.from_mask(mask, 128)
    values = layout.pack(w)
    x = torch.randn(2, 9, 70, dtype=torch.float64)
    b = torch.randn(300, dtype=torch.float64)
    y = ops.tw_linear(x, values, layout, b)
    torch.testing.assert_close(y, reference_tw_linear(x, w, mask, b))
    assert abs(layout.sparsity - 0.75) < 128 / (300 * 70) + 1e-9
    assert tilesparse.__version__
