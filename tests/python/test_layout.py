"""The packed tile format (TileLayout, layout_from_mask, tw_pack, tw_unpack)
checked against docs/format.md as re-implemented in plain Python
(tilesparse.testing.reference_layout / reference_pack)."""
import pytest
import torch

from tilesparse import TileLayout, ops
from tilesparse.testing import (FLOAT_DTYPES, device_params, layout_with_empty_tile, random_tw_mask,
                                reference_layout, reference_pack)

DEVICES = device_params()


def _mask(case):
    """(mask, tile) for the layouts every test sweeps."""
    g = torch.Generator().manual_seed(0)
    if case == "tile_mask_1d":
        return ops.tile_mask(torch.rand(300, 70, generator=g, dtype=torch.float64), 128, 0.75), 128
    if case == "tile_mask_2d":
        return ops.tile_mask(torch.rand(50, 20, generator=g, dtype=torch.float64), 8, 0.7, 0.3), 8
    if case == "random_1d":
        return random_tw_mask(37, 19, 8, 0.4, seed=1), 8
    if case == "random_2d":  # non-contiguous cols in tiles
        return random_tw_mask(41, 23, 4, 0.5, col_density=0.6, seed=2), 4
    if case == "k1":
        return random_tw_mask(9, 1, 4, 1.0, col_density=0.7, seed=3), 4
    if case == "dense":
        return torch.ones(13, 5, dtype=torch.bool), 4
    if case == "empty":
        return torch.zeros(13, 5, dtype=torch.bool), 4
    raise KeyError(case)


CASES = ["tile_mask_1d", "tile_mask_2d", "random_1d", "random_2d", "k1", "dense", "empty"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_from_mask_matches_format(device, case):
    """from_mask builds exactly the cols/row_offsets/rows of docs/format.md (int32,
    on the mask's device), and layout.mask() gives the mask back."""
    mask, tile = _mask(case)
    layout = TileLayout.from_mask(mask.to(device), tile)
    cols, row_offsets, rows = reference_layout(mask, tile)
    for name, got, want in (("cols", layout.cols, cols), ("row_offsets", layout.row_offsets, row_offsets),
                            ("rows", layout.rows, rows)):
        assert got.dtype == torch.int32, name
        assert got.device == torch.device(device), name
        assert got.cpu().tolist() == want, name
    assert layout.shape == tuple(mask.shape) and layout.tile == tile
    assert layout.num_kept == int(mask.sum())
    assert all((b - a) % TileLayout.PAD == 0 for a, b in zip(row_offsets, row_offsets[1:]))  # padded slots
    assert layout.num_values >= layout.num_kept
    assert layout.tile_kept().cpu().tolist() == [len(set(rows[a:b])) for a, b in zip(row_offsets, row_offsets[1:])]
    assert layout.num_tiles == len(row_offsets) - 1
    assert layout.tile_rows().cpu().tolist() == [b - a for a, b in zip(row_offsets, row_offsets[1:])]
    assert torch.equal(layout.mask().cpu(), mask)


def test_from_mask_accepts_strided_mask():
    """A non-contiguous (transposed) mask gives the same layout as its contiguous copy."""
    mask, tile = _mask("random_2d")
    strided = mask.t().contiguous().t()
    assert not strided.is_contiguous()
    a, b = TileLayout.from_mask(strided, tile), TileLayout.from_mask(mask, tile)
    assert torch.equal(a.cols, b.cols) and torch.equal(a.row_offsets, b.row_offsets) and torch.equal(a.rows, b.rows)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.int32])
def test_pack_unpack_round_trip(device, case, dtype):
    """pack(w) lays the kept weights out block by block as docs/format.md says;
    unpack(pack(w)) == w * mask exactly; pruned weights never reach the values."""
    mask, tile = _mask(case)
    layout = TileLayout.from_mask(mask, tile).to(device)
    w = (torch.randn(mask.shape, dtype=torch.float64) * 100).to(dtype).to(device)
    values = layout.pack(w)
    assert values.dtype == dtype and values.device == w.device and values.shape == (layout.num_values,)
    assert torch.equal(values.cpu(), reference_pack(w, *reference_layout(mask, tile), tile))
    c1, o1, r1 = torch.ops.tilesparse.layout_from_mask(mask, tile, 1)
    values1 = torch.ops.tilesparse.tw_pack(w.cpu(), c1, o1, r1, tile, int(mask.sum()))
    assert torch.equal(values1, w.cpu()[mask])  # unpadded: packed order = row-major order of kept entries
    dense = layout.unpack(values)
    assert dense.dtype == dtype and dense.shape == mask.shape
    assert torch.equal(dense.cpu(), w.cpu() * mask.to(dtype))
    assert torch.equal(layout.pack(w * mask.to(device=device, dtype=dtype)), values)


def test_pack_unpack_hand_built_layout_with_empty_tile():
    """A valid layout whose middle tile keeps no rows (k_t = 0) packs and unpacks."""
    layout, mask = layout_with_empty_tile()
    w = torch.randn(14, 6, dtype=torch.float64)
    values = layout.pack(w)
    assert int(mask.sum()) == layout.num_kept
    assert values.numel() == layout.num_values
    assert torch.equal(values, reference_pack(w, layout.cols.tolist(), layout.row_offsets.tolist(),
                                              layout.rows.tolist(), 4))
    assert torch.equal(layout.unpack(values), w * mask)
    assert torch.equal(layout.mask(), mask)


def test_non_tile_wise_mask_raises():
    """A mask whose features of one tile keep different input features is rejected
    with a ValueError that names the tile, the features and the difference."""
    mask = torch.ones(8, 5, dtype=torch.bool)
    mask[6, 2] = False
    with pytest.raises(ValueError, match=r"not tile-wise for tile=4: output feature 6 keeps a different set of "
                                         r"input features than output feature 4 of the same tile 1 .*input feature 2"):
        TileLayout.from_mask(mask, 4)
    TileLayout.from_mask(mask, 1)  # with tile 1 every mask is tile-wise
    # 2-D: regrouping the kept features shifts the tile boundaries
    mask = torch.zeros(6, 3, dtype=torch.bool)
    mask[[0, 2]] = True
    mask[[3, 5], 0] = True
    TileLayout.from_mask(mask, 2)
    mask[5, 1] = True
    with pytest.raises(ValueError, match="output feature 5 .* output feature 3 of the same tile 1"):
        TileLayout.from_mask(mask, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_empty_mask(device, with_bias):
    """All-pruned mask: an empty layout (no tiles, no values, sparsity 1); pack is
    empty, unpack is zeros, and tw_linear returns the bias only (zeros without),
    with zero grad wrt x and the row count as grad wrt each bias entry."""
    mask = torch.zeros(13, 5, dtype=torch.bool, device=device)
    layout = TileLayout.from_mask(mask, 4)
    assert layout.num_tiles == 0 and layout.num_values == 0 and layout.cols.numel() == 0
    assert layout.sparsity == 1.0 and layout.density == 0.0
    w = torch.randn(13, 5, dtype=torch.float64, device=device)
    values = layout.pack(w)
    assert values.shape == (0,)
    assert torch.equal(layout.unpack(values), torch.zeros_like(w))
    assert not bool(layout.mask().any())

    x = torch.randn(2, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    values.requires_grad_(True)
    bias = torch.randn(13, dtype=torch.float64, device=device, requires_grad=True) if with_bias else None
    y = ops.tw_linear(x, values, layout, bias)
    assert y.shape == (2, 3, 13)
    assert torch.equal(y.detach(), (bias.detach() if with_bias else torch.zeros(13, dtype=torch.float64,
                                                                                   device=device)).expand(2, 3, 13))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert values.grad.shape == (0,)
    if with_bias:
        assert torch.equal(bias.grad, torch.full_like(bias, 6.0))


@pytest.mark.parametrize("device", DEVICES)
def test_to_moves_every_index_tensor(device):
    """.to() moves cols/row_offsets/rows, keeps shape/tile/num_values, accepts
    strings, and returns the same object when already there."""
    mask, tile = _mask("random_2d")
    layout = TileLayout.from_mask(mask, tile)
    assert layout.to("cpu") is layout and layout.to(torch.device("cpu")) is layout
    for target in (device, "meta"):
        moved = layout.to(target)
        assert moved.device == torch.device(target)
        for name in ("cols", "row_offsets", "rows"):
            t = getattr(moved, name)
            assert t.device == torch.device(target) and t.dtype == torch.int32 and t.shape == getattr(layout, name).shape
        assert (moved.shape, moved.tile, moved.num_values) == (layout.shape, layout.tile, layout.num_values)
    back = layout.to(device).to("cpu")
    assert torch.equal(back.cols, layout.cols) and torch.equal(back.rows, layout.rows)
    assert torch.equal(back.row_offsets, layout.row_offsets)


def test_density_and_sparsity():
    """density = kept weights / N*K, independently counted from the mask."""
    mask, tile = _mask("tile_mask_2d")
    layout = TileLayout.from_mask(mask, tile)
    assert layout.density == pytest.approx(float(mask.float().mean()))
    assert layout.sparsity == pytest.approx(1.0 - float(mask.float().mean()))
    assert "TileLayout(shape=(50, 20), tile=8" in repr(layout)


GRADCHECK_MASKS = {  # small, so gradcheck stays cheap
    "1d": (random_tw_mask(16, 9, 4, 0.5, seed=5), 4),
    "2d": (random_tw_mask(16, 9, 4, 0.5, col_density=0.6, seed=6), 4),
    "n_not_multiple": (random_tw_mask(13, 7, 4, 0.5, col_density=0.8, seed=4), 4),
    "k1": (random_tw_mask(9, 1, 4, 1.0, col_density=0.7, seed=3), 4),
    "dense": (torch.ones(7, 5, dtype=torch.bool), 4),
    "empty": (torch.zeros(7, 5, dtype=torch.bool), 4),
}


@pytest.mark.parametrize("case", list(GRADCHECK_MASKS))
def test_pack_unpack_gradcheck(case):
    """pack and unpack are differentiable (float64 gradcheck and gradgradcheck):
    each is the other's adjoint."""
    mask, tile = GRADCHECK_MASKS[case]
    layout = TileLayout.from_mask(mask, tile)
    w = torch.randn(mask.shape, dtype=torch.float64, requires_grad=True)
    v = torch.randn(layout.num_values, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layout.pack, (w,))
    assert torch.autograd.gradcheck(layout.unpack, (v,))
    assert torch.autograd.gradgradcheck(layout.pack, (w,))
    assert torch.autograd.gradgradcheck(layout.unpack, (v,))


def test_pack_gradient_is_the_mask():
    """d sum(pack(w)) / dw is exactly the mask (independent of gradcheck's numerics)."""
    mask, tile = _mask("random_2d")
    layout = TileLayout.from_mask(mask, tile)
    w = torch.randn(mask.shape, dtype=torch.float64, requires_grad=True)
    layout.pack(w).sum().backward()
    assert torch.equal(w.grad, mask.double())
