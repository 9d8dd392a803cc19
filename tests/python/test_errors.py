"""Bad inputs raise a Python exception whose message names the offending
argument, and malformed layout indices are rejected before any kernel reads
through them (an unchecked out-of-range read would crash the test process)."""
import math

import pytest
import torch

from tilesparse import TileLayout, ops
from tilesparse.testing import device_params, devices, random_tw_mask

T = torch.ops.tilesparse
F64 = torch.float64
# Devices an argument can wrongly be on while the rest is on the CPU: "meta"
# always exists; CUDA when available.
OTHER_DEVICES = ["meta"] + [d for d in devices() if d != "cpu"]
DEVICES = device_params()


@pytest.fixture
def setup():
    """A valid 2-D TW problem: N=10 (not a multiple of tile 4), K=6."""
    mask = random_tw_mask(10, 6, 4, 0.5, col_density=0.8, seed=1)
    layout = TileLayout.from_mask(mask, 4)
    w = torch.randn(10, 6, dtype=F64)
    return dict(layout=layout, w=w, v=layout.pack(w), x=torch.randn(3, 6, dtype=F64), b=torch.randn(10, dtype=F64),
                gy=torch.randn(3, 10, dtype=F64))


def _idx(layout):
    return layout.cols, layout.row_offsets, layout.rows


def _on(setup, device):
    """The setup problem moved to `device`."""
    return {k: v.to(device) for k, v in setup.items()}


# ---------------------------------------------------------------------------
# tw_linear and its backward operators
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("what,exc,match", [
    ("x_int", TypeError, "x must be a floating-point tensor"),
    ("x_scalar", ValueError, "x must have at least 1 dimension"),
    ("x_wrong_k", ValueError, r"x must have in_features = 6 as its last dimension"),
    ("x_too_wide", ValueError, r"x must have in_features = 6 as its last dimension"),
    ("values_dtype", TypeError, "values must have the dtype"),
    ("values_2d", ValueError, "values must be 1-D"),
    ("values_short", ValueError, r"values must have \d+ elements for this layout, got \d+"),
    ("values_long", ValueError, r"values must have \d+ elements for this layout, got \d+"),
    ("bias_dtype", TypeError, "bias must have the dtype of x"),
    ("bias_len", ValueError, r"bias must have shape \[out_features\] = \[10\], got \[9\]"),
    ("bias_2d", ValueError, r"bias must have shape \[out_features\] = \[10\], got \[1, 10\]"),
    ("layout_type", TypeError, "layout must be a tilesparse.TileLayout"),
])
def test_tw_linear_bad_arguments(setup, device, what, exc, match):
    """Wrong dtype/shape of x, values, bias, or a non-layout, through ops.tw_linear."""
    setup = _on(setup, device)
    x, v, b, layout = setup["x"], setup["v"], setup["b"], setup["layout"]
    args = dict(x=x, values=v, layout=layout, bias=b)
    args.update({
        "x_int": dict(x=x.long()),
        "x_scalar": dict(x=torch.tensor(1.0, dtype=F64, device=device)),
        "x_wrong_k": dict(x=torch.randn(3, 5, dtype=F64, device=device)),
        "x_too_wide": dict(x=torch.randn(3, 7, dtype=F64, device=device)),  # the op alone would accept it
        "values_dtype": dict(values=v.float()),
        "values_2d": dict(values=v.view(1, -1)),
        "values_short": dict(values=v[:-1]),
        "values_long": dict(values=torch.cat([v, v[:1]])),
        "bias_dtype": dict(bias=b.float()),
        "bias_len": dict(bias=b[:9]),
        "bias_2d": dict(bias=b.view(1, -1)),
        "layout_type": dict(layout=(layout.cols, layout.row_offsets, layout.rows)),
    }[what])
    with pytest.raises(exc, match=match):
        ops.tw_linear(**args)


@pytest.mark.parametrize("other", OTHER_DEVICES)
@pytest.mark.parametrize("arg", ["x", "values", "bias", "cols", "row_offsets", "rows"])
def test_tw_linear_wrong_device(setup, other, arg):
    """One argument on another device than the rest is rejected, naming a
    mismatched argument and both devices (never a silent garbage output)."""
    layout = setup["layout"]
    args = dict(x=setup["x"], values=setup["v"], cols=layout.cols, row_offsets=layout.row_offsets,
                rows=layout.rows, bias=setup["b"])
    args[arg] = args[arg].to(other)
    # A wrong x shows up as the other tensors not being on x's device.
    pattern = r"(values|bias|cols|row_offsets|rows) must be on" if arg == "x" else rf"{arg} must be on"
    with pytest.raises((RuntimeError, ValueError), match=pattern):
        T.tw_linear(args["x"], args["values"], args["cols"], args["row_offsets"], args["rows"], args["bias"], 10,
                    layout.tile)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_operators_bad_arguments(setup, device):
    """tw_linear_grad_input / tw_linear_grad_values check dtypes, shapes and num_values."""
    setup = _on(setup, device)
    layout, v, x, gy = setup["layout"], setup["v"], setup["x"], setup["gy"]
    idx = _idx(layout)
    with pytest.raises(TypeError, match="grad_out must be a floating-point tensor"):
        T.tw_linear_grad_input(gy.long(), v, *idx, 6, 4)
    with pytest.raises(TypeError, match="values must have the dtype"):
        T.tw_linear_grad_input(gy.float(), v, *idx, 6, 4)
    with pytest.raises(ValueError, match=r"values must have \d+ elements"):
        T.tw_linear_grad_input(gy, v[1:], *idx, 6, 4)
    with pytest.raises(ValueError, match="grad_out must have at least 1 dimension"):
        T.tw_linear_grad_input(torch.tensor(1.0, dtype=F64, device=device), v, *idx, 6, 4)
    with pytest.raises(TypeError, match="x must have the dtype of grad_out"):
        T.tw_linear_grad_values(gy, x.float(), *idx, 4, layout.num_values)
    with pytest.raises(ValueError, match="must share their leading dimensions"):
        T.tw_linear_grad_values(gy, x[:2], *idx, 4, layout.num_values)
    with pytest.raises(ValueError, match=rf"num_values must be {layout.num_values} for this layout, got"):
        T.tw_linear_grad_values(gy, x, *idx, 4, layout.num_values + 1)
    with pytest.raises((RuntimeError, ValueError), match="x must be on"):
        T.tw_linear_grad_values(gy, x.to("meta"), *idx, 4, layout.num_values)


# ---------------------------------------------------------------------------
# Layout indices: every consumer validates before reading
# ---------------------------------------------------------------------------
BIG = 2**31 - 1


def _corrupt(layout, what):
    """(cols, row_offsets, rows, tile, expected exception, message pattern)."""
    c, ro, r = (t.clone() for t in _idx(layout))
    tile = layout.tile
    if what == "cols_eq_n":
        c[-1] = 10; pat = r"cols\[\d+\] = 10 is out of range \[0, 10\)"
    elif what == "cols_negative":
        c[0] = -1; pat = r"cols\[0\] = -1 is out of range"
    elif what == "cols_huge":
        c[-1] = BIG; pat = rf"cols\[\d+\] = {BIG} is out of range"
    elif what == "cols_unsorted":
        c[[0, 1]] = c[[1, 0]]; pat = "cols must be strictly increasing"
    elif what == "cols_duplicate":
        c[1] = c[0]; pat = "cols must be strictly increasing"
    elif what == "cols_too_many":
        c = torch.arange(11, dtype=torch.int32)
        pat = "cols has 11 entries but out_features is 10|grad_out must have at least as many features"
    elif what == "rows_eq_k":
        r[-1] = 6; pat = r"rows\[\d+\] = 6 is out of range \[0, 6\)"
    elif what == "rows_negative":
        r[0] = -5; pat = r"rows\[0\] = -5 is out of range"
    elif what == "rows_huge":
        r[0] = BIG; pat = rf"rows\[0\] = {BIG} is out of range"
    elif what == "rows_unsorted":
        r[[0, 1]] = r[[1, 0]]; pat = r"rows must be strictly increasing within a tile, but rows\[1\] = \d+ follows"
    elif what == "rows_duplicate":
        r[1] = r[0]; pat = "rows must be strictly increasing within a tile"
    elif what == "row_offsets_first":
        ro[0] = 1; pat = r"row_offsets\[0\] must be 0, got 1"
    elif what == "row_offsets_decreasing":
        ro[1] = ro[2] + 1; pat = r"row_offsets must be non-decreasing within \[0, len\(rows\)\]"
    elif what == "row_offsets_past_rows":
        ro[1] = BIG; pat = r"row_offsets must be non-decreasing within \[0, len\(rows\)\]"
    elif what == "row_offsets_last":
        ro[-1] += 1; pat = r"row_offsets\[-1\] must equal len\(rows\)"
    elif what == "row_offsets_short":
        ro = ro[:-1]; pat = r"row_offsets must have ceil\(len\(cols\) / tile\) \+ 1 = \d+ entries"
    elif what == "row_offsets_empty":
        ro = ro[:0]; pat = "row_offsets must have at least one entry"
    elif what == "tile_mismatch":
        tile = 3; pat = r"row_offsets must have ceil\(len\(cols\) / tile\) \+ 1"
    elif what == "tile_too_many_rows":
        ro = torch.tensor([0] + [7] * layout.num_tiles, dtype=torch.int32); r = torch.arange(7, dtype=torch.int32)
        pat = r"rows\[6\] = 6 is out of range \[0, 6\)"
    elif what == "tile_zero":
        tile = 0; pat = "tile must be positive, got 0"
    elif what == "tile_negative":
        tile = -4; pat = "tile must be positive, got -4"
    elif what == "cols_int64":
        return c.long(), ro, r, tile, TypeError, "cols must have dtype"
    elif what == "rows_2d":
        return c, ro, r.view(1, -1), tile, ValueError, "rows must be 1-D"
    elif what == "row_offsets_float":
        return c, ro.float(), r, tile, TypeError, "row_offsets must have dtype"
    else:
        raise KeyError(what)
    return c, ro, r, tile, ValueError, pat


CORRUPTIONS = ["cols_eq_n", "cols_negative", "cols_huge", "cols_unsorted", "cols_duplicate", "cols_too_many",
               "rows_eq_k", "rows_negative", "rows_huge", "rows_unsorted", "rows_duplicate", "row_offsets_first",
               "row_offsets_decreasing", "row_offsets_past_rows", "row_offsets_last", "row_offsets_short",
               "row_offsets_empty", "tile_mismatch", "tile_too_many_rows", "tile_zero", "tile_negative",
               "cols_int64", "rows_2d", "row_offsets_float"]
CONSUMERS = ["tw_pack", "tw_unpack", "tw_linear", "tw_linear_grad_input", "tw_linear_grad_values"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", CONSUMERS)
@pytest.mark.parametrize("what", CORRUPTIONS)
def test_malformed_layout_rejected(setup, device, op, what):
    """Every operator that reads through a layout rejects each malformed index
    set with a message naming cols / rows / row_offsets / tile; num_values and
    values are sized for the valid layout, so only the indices are wrong."""
    c, ro, r, tile, exc, pat = _corrupt(setup["layout"], what)
    c, ro, r = c.to(device), ro.to(device), r.to(device)
    setup = _on(setup, device)
    nv, v, w, x, gy = setup["layout"].num_values, setup["v"], setup["w"], setup["x"], setup["gy"]
    call = {
        "tw_pack": lambda: T.tw_pack(w, c, ro, r, tile, nv),
        "tw_unpack": lambda: T.tw_unpack(v, c, ro, r, tile, 10, 6),
        "tw_linear": lambda: T.tw_linear(x, v, c, ro, r, setup["b"], 10, tile),
        "tw_linear_grad_input": lambda: T.tw_linear_grad_input(gy, v, c, ro, r, 6, tile),
        "tw_linear_grad_values": lambda: T.tw_linear_grad_values(gy, x, c, ro, r, tile, nv),
    }[op]
    with pytest.raises(exc, match=pat):
        call()


@pytest.mark.parametrize("device", DEVICES)
def test_pack_unpack_sizes(setup, device):
    """Wrong num_values for tw_pack, wrong values length for tw_unpack, wrong
    weight shape for TileLayout.pack, negative sizes for tw_unpack."""
    setup = _on(setup, device)
    layout, w, v = setup["layout"], setup["w"], setup["v"]
    idx = _idx(layout)
    with pytest.raises(ValueError, match=rf"num_values must be {layout.num_values} for this layout, got"):
        T.tw_pack(w, *idx, 4, layout.num_values - 1)
    with pytest.raises(ValueError, match=rf"values must have {layout.num_values} elements for this layout, got"):
        T.tw_unpack(v[:-1], *idx, 4, 10, 6)
    with pytest.raises(ValueError, match="values must be 1-D"):
        T.tw_unpack(v.view(1, -1), *idx, 4, 10, 6)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        T.tw_pack(w.flatten(), *idx, 4, layout.num_values)
    with pytest.raises(ValueError, match=r"out_features and in_features must be >= 0"):
        T.tw_unpack(v, *idx, 4, -1, 6)
    with pytest.raises(ValueError, match=r"weight must have the layout's shape \(10, 6\), got \(12, 8\)"):
        layout.pack(torch.randn(12, 8, dtype=F64, device=device))  # the op alone would read a sub-block of it


# ---------------------------------------------------------------------------
# Mask selection
# ---------------------------------------------------------------------------
MASK_OPS = {
    "tile_mask": lambda s, tile=4: ops.tile_mask(s, tile, 0.5),
    "tile_mask_2d": lambda s, tile=4: ops.tile_mask(s, tile, 0.5, 0.2),
    "tile_mask_threshold": lambda s, tile=4: ops.tile_mask_threshold(s, tile, 0.1),
    "tile_mask_threshold_2d": lambda s, tile=4: ops.tile_mask_threshold(s, tile, 0.1, 0.05),
    "tile_segment_scores": lambda s, tile=4: ops.tile_segment_scores(s, tile),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(MASK_OPS))
@pytest.mark.parametrize("bad,exc,match", [
    ("nan", ValueError, r"scores must be finite, but scores\[2, 3\] = nan"),
    ("inf", ValueError, r"scores must be finite, but scores\[2, 3\] = inf"),
    ("-inf", ValueError, r"scores must be finite, but scores\[2, 3\] = -inf"),
    ("int", TypeError, "scores must be a floating-point tensor"),
    ("1d", ValueError, "scores must be 2-D"),
    ("3d", ValueError, "scores must be 2-D"),
    ("tile0", ValueError, "tile must be positive, got 0"),
    ("tile-1", ValueError, "tile must be positive, got -1"),
])
def test_mask_ops_bad_scores_and_tile(device, op, bad, exc, match):
    """NaN/inf scores (position reported), non-float or non-2-D scores, tile <= 0."""
    s = torch.rand(10, 6, dtype=F64, device=device)
    tile = 4
    if bad in ("nan", "inf", "-inf"):
        s[2, 3] = float(bad)
    elif bad == "int":
        s = (s * 10).long()
    elif bad == "1d":
        s = s.flatten()
    elif bad == "3d":
        s = s[None]
    else:
        tile = int(bad[4:])
    with pytest.raises(exc, match=match):
        MASK_OPS[op](s, tile)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), r"sparsity must be in \[0, 1\), got 1"),
    (dict(sparsity=1.5), r"sparsity must be in \[0, 1\)"),
    (dict(sparsity=-0.1), r"sparsity must be in \[0, 1\), got -0.1"),
    (dict(sparsity=math.nan), r"sparsity must be in \[0, 1\), got nan"),
    (dict(sparsity=0.3, col_sparsity=0.4), r"col_sparsity must be in \[0, sparsity=0.3\], got 0.4"),
    (dict(sparsity=0.3, col_sparsity=-0.1), r"col_sparsity must be in \[0, sparsity=0.3\], got -0.1"),
    (dict(sparsity=0.3, col_sparsity=math.nan), r"col_sparsity must be in \[0, sparsity=0.3\], got nan"),
    (dict(sparsity=0.3, k_align=0), "k_align must be positive, got 0"),
    (dict(sparsity=0.3, k_align=-2), "k_align must be positive, got -2"),
])
@pytest.mark.parametrize("device", DEVICES)
def test_tile_mask_bad_targets(device, kwargs, match):
    """sparsity outside [0, 1), col_sparsity outside [0, sparsity], k_align <= 0."""
    with pytest.raises(ValueError, match=match):
        ops.tile_mask(torch.rand(10, 6, dtype=F64, device=device), 4, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_threshold_bad_values(device):
    """NaN thresholds are rejected, naming which one; k_align <= 0 too."""
    s = torch.rand(10, 6, dtype=F64, device=device)
    with pytest.raises(ValueError, match="threshold must not be NaN"):
        ops.tile_mask_threshold(s, 4, math.nan)
    with pytest.raises(ValueError, match="col_threshold must not be NaN"):
        ops.tile_mask_threshold(s, 4, 0.1, col_threshold=math.nan)
    with pytest.raises(ValueError, match="col_threshold must not be NaN"):
        ops.tile_segment_scores(s, 4, col_threshold=math.nan)
    with pytest.raises(ValueError, match="k_align must be positive"):
        ops.tile_mask_threshold(s, 4, 0.1, k_align=0)


# ---------------------------------------------------------------------------
# TileLayout.from_mask
# ---------------------------------------------------------------------------
def test_from_mask_bad_arguments():
    """Non-tensor, non-bool, non-2-D masks and tile <= 0 are rejected by name."""
    with pytest.raises(TypeError, match="mask must be a torch.Tensor, got list"):
        TileLayout.from_mask([[True]], 1)
    with pytest.raises(TypeError, match="mask must have dtype Bool"):
        TileLayout.from_mask(torch.ones(4, 4), 2)
    with pytest.raises(ValueError, match="mask must be 2-D"):
        TileLayout.from_mask(torch.ones(2, 2, 2, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="tile must be positive, got 0"):
        TileLayout.from_mask(torch.ones(4, 4, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="not tile-wise for tile=2"):
        TileLayout.from_mask(torch.eye(4, dtype=torch.bool), 2)


# ---------------------------------------------------------------------------
# Fake (meta) kernels raise the same errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("case,match", [
    ("tile0", "tile must be positive"),
    ("cols_int64", "cols must have dtype"),
    ("values_dtype", "values must have the dtype"),
    ("bias_shape", r"bias must have (shape|out_features)"),
    ("bias_dtype", "bias must have the dtype of x"),
])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_fake_kernels_check_like_real_kernels(setup, case, match, device):
    """Under torch.compile the fake kernels run instead of the real ones: they
    reject the same bad arguments (meta tensors dispatch to them)."""
    layout = setup["layout"].to(device)
    x, v, b = (setup[k].to(device) for k in ("x", "v", "b"))
    c, ro, r = _idx(layout)
    tile = 4
    if case == "tile0":
        tile = 0
    elif case == "cols_int64":
        c = c.long()
    elif case == "values_dtype":
        v = v.float()
    elif case == "bias_shape":
        b = b[:9]
    elif case == "bias_dtype":
        b = b.float()
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        T.tw_linear(x, v, c, ro, r, b, 10, tile)
