"""plot_mask writes a valid PNG of the requested size, with tile boundaries."""
import struct
import zlib

import pytest
import torch

from tilesparse import ops
from tilesparse.nn import TileSparseConv2d, TileSparseLinear
from tilesparse.viz import _tile_starts, plot_mask

pytest.importorskip("matplotlib")


def read_png(path):
    """(width, height) from the IHDR chunk, after checking the signature and CRCs."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(ctype + body) & 0xFFFFFFFF == crc
        chunks.append(ctype)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    ihdr = data[16:24]
    return struct.unpack(">II", ihdr)


def test_plot_mask_tensor(tmp_path):
    mask = ops.tile_mask(torch.rand(64, 40, dtype=torch.float64), 16, 0.6)
    path = plot_mask(mask, tmp_path / "m.png", tile=16, figsize=(5, 3), dpi=80)
    assert read_png(path) == (400, 240)


def test_plot_mask_module_and_tile_starts(tmp_path):
    torch.manual_seed(0)
    mod = TileSparseLinear.from_dense(torch.nn.Linear(40, 70), 0.75, tile=16, col_sparsity=0.3, delta=0.02)
    path = plot_mask(mod, str(tmp_path / "lin.png"), dpi=50, figsize=(4, 4))
    assert read_png(path) == (200, 200)
    # 2-D TW: boundaries follow the surviving output features
    kept = mod.tw_mask().any(dim=1).nonzero().flatten().tolist()
    assert _tile_starts(mod.tw_mask(), 16) == kept[::16]
    conv = TileSparseConv2d.from_dense(torch.nn.Conv2d(4, 16, 3, groups=2), 0.5, tile=4).finalize()
    assert read_png(plot_mask(conv, tmp_path / "c.png", group=1)) == (600, 400)
    with pytest.raises(ValueError, match="group"):
        plot_mask(conv, tmp_path / "x.png", group=2)
    with pytest.raises(TypeError, match="mask_or_module"):
        plot_mask(3, tmp_path / "x.png")
    with pytest.raises(ValueError, match="tile"):
        plot_mask(torch.ones(4, 4, dtype=torch.bool), tmp_path / "x.png", tile=0)
