"""torch.library.opcheck on every operator of csrc/ops/schemas.cpp: schema
(no mutation/aliasing lies), fake kernels (shapes, dtypes, strides match the
real kernels), autograd registration, and AOT dispatch with dynamic shapes
(torch.compile's path), on every device.

Data-dependent output sizes (layout_from_mask; tile_segment_scores with
col_threshold) run the full default test_utils too: their fake kernels
allocate unbacked sizes with ``ctx.new_dynamic_size()``, which
test_faketensor and test_aot_dispatch_dynamic accept. Should a future torch
reject that, restrict those samples to ("test_schema",
"test_autograd_registration") rather than deleting them.
"""
import pytest
import torch

from tilesparse import TileLayout, ops
from tilesparse.testing import device_params, layout_with_empty_tile, random_tw_mask

DEVICES = device_params()
T = torch.ops.tilesparse


def _layout(kind, device):
    if kind == "1d":  # N = 21, not a multiple of the tile; first tile keeps every row
        mask, tile = random_tw_mask(21, 10, 8, 0.5, seed=1), 8
    elif kind == "2d":  # non-contiguous cols in every tile
        mask, tile = random_tw_mask(21, 10, 4, 0.5, col_density=0.6, seed=2), 4
    elif kind == "empty":
        mask, tile = torch.zeros(9, 10, dtype=torch.bool), 4
    elif kind == "empty_tile":
        return layout_with_empty_tile(device)[0]
    else:
        raise KeyError(kind)
    return TileLayout.from_mask(mask, tile).to(device)


def _idx(layout):
    return layout.cols, layout.row_offsets, layout.rows


def _rand(*shape, device, dtype=torch.float64, grad=False):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(grad)


def _samples(name, device):
    """(args, kwargs) samples for operator `name`."""
    scores = torch.rand(21, 10, dtype=torch.float64, device=device)
    if name == "tile_segment_scores":
        return [((scores, 4), {}), ((scores.float(), 8), {}),
                ((scores, 4), {"col_threshold": float(ops.tile_segment_scores(scores, 21).median()) / 21 ** 0.5}),
                ((scores, 4), {"col_threshold": 1e9}),  # every feature dropped: [0, K]
                ((scores, 4), {"unit": 3})]  # run scores [T, ceil(K / 3)]
    if name == "tile_mask":
        return [((scores, 4, 0.5), {}), ((scores.float(), 8, 0.75, 0.3, 2), {}), ((scores, 3, 0.0), {}),
                ((scores, 4, 0.6), {"k_align": 6, "unit": 3})]
    if name == "tile_mask_threshold":
        thr = float(ops.tile_segment_scores(scores, 4).median())
        return [((scores, 4, thr), {}), ((scores, 4, thr), {"col_threshold": 0.02, "k_align": 2}),
                ((scores, 4, thr), {"unit": 4})]
    if name == "layout_from_mask":
        return [((random_tw_mask(21, 10, 8, 0.5, seed=1).to(device), 8), {}),
                ((random_tw_mask(21, 10, 4, 0.5, col_density=0.6, seed=2).to(device), 4), {}),
                ((torch.zeros(9, 10, dtype=torch.bool, device=device), 4), {})]
    if name.startswith("csr_linear"):
        return _csr_samples(name, device)
    out = []
    for kind in ("1d", "2d", "empty", "empty_tile"):
        layout = _layout(kind, device)
        n, k = layout.shape
        nv = layout.num_values
        if name == "tw_pack":
            out.append(((_rand(n, k, device=device, grad=True), *_idx(layout), layout.tile, nv), {}))
        elif name == "tw_unpack":
            out.append(((_rand(nv, device=device, grad=True), *_idx(layout), layout.tile, n, k), {}))
        elif name == "tw_linear":
            for lead, bias, dtype in (((5,), True, torch.float64), ((2, 3), False, torch.float64),
                                      ((0,), True, torch.float64), ((4,), True, torch.float32)):
                out.append(((_rand(*lead, k, device=device, dtype=dtype, grad=True),
                             _rand(nv, device=device, dtype=dtype, grad=True), *_idx(layout),
                             _rand(n, device=device, dtype=dtype, grad=True) if bias else None, n, layout.tile), {}))
        elif name == "tw_linear_grad_input":
            for lead in ((5,), (2, 3)):
                out.append(((_rand(*lead, n, device=device, grad=True), _rand(nv, device=device, grad=True),
                             *_idx(layout), k, layout.tile), {}))
        elif name == "tw_linear_grad_values":
            for lead in ((5,), (2, 3), (0,)):
                out.append(((_rand(*lead, n, device=device, grad=True), _rand(*lead, k, device=device, grad=True),
                             *_idx(layout), layout.tile, nv), {}))
        else:
            raise KeyError(name)
    return out


def _csr_samples(name, device):
    """The residue operators on a random CSR [13, 10] (empty rows included), an empty one, and leading shapes
    (5,), (2, 3), (0,)."""
    from tilesparse.testing import random_csr

    out = []
    for density in (0.2, 0.0):
        row_ptr, cols, _ = random_csr(13, 10, density, seed=3, device=device)
        nnz = cols.numel()
        for lead in ((5,), (2, 3), (0,)):
            if name == "csr_linear":
                args = (_rand(*lead, 10, device=device, grad=True), _rand(nnz, device=device, grad=True), row_ptr,
                        cols, 13)
            elif name == "csr_linear_grad_input":
                args = (_rand(*lead, 13, device=device, grad=True), _rand(nnz, device=device, grad=True), row_ptr,
                        cols, 10)
            else:
                args = (_rand(*lead, 13, device=device, grad=True), _rand(*lead, 10, device=device, grad=True),
                        row_ptr, cols)
            out.append((args, {}))
    return out


OPS = ["tile_segment_scores", "tile_mask", "tile_mask_threshold", "layout_from_mask", "tw_pack", "tw_unpack",
       "tw_linear", "tw_linear_grad_input", "tw_linear_grad_values",
       "csr_linear", "csr_linear_grad_input", "csr_linear_grad_values"]


def test_every_schema_op_is_covered():
    """OPS lists exactly the operators registered under tilesparse:: (a new op in
    schemas.cpp fails here until it gets opcheck samples)."""
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("tilesparse::")}
    assert registered == set(OPS) | INFO_OPS


# Operators without tensor arguments that report the CPU kernel choice and its
# panel cache (nothing for opcheck to check); they must answer.
INFO_OPS = {"cpu_kernel", "cpu_kernels_supported", "cpu_panel_cache_clear", "cpu_panel_cache_stats"}


def test_info_ops_answer():
    assert T.cpu_kernel() in T.cpu_kernels_supported()
    T.cpu_panel_cache_clear()
    assert T.cpu_panel_cache_stats() is not None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OPS)
def test_opcheck(device, name):
    """opcheck passes for every sample of the operator on the device."""
    op = getattr(T, name).default
    samples = _samples(name, device)
    assert samples
    for args, kwargs in samples:
        torch.library.opcheck(op, args, kwargs)
