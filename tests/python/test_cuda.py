"""CUDA kernels against the CPU operators and dense float64 references.

Everything here is skipped when no CUDA device is present. On a machine with
a GPU, a build without the CUDA kernels is an error (test_cuda_kernels_built).

Accuracy rule for fp16/bf16/fp32: the kernel's max error against a float64
reference computed from the same (rounded) inputs must be at most twice the
error of the dense PyTorch op (F.linear / matmul, cuBLAS) in the same dtype,
plus a tiny epsilon.
"""
import pytest
import torch
import torch.nn.functional as F

import tilesparse
from tilesparse import TileLayout, ops

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

_ops = torch.ops.tilesparse
DEV = "cuda"
LOW = [torch.bfloat16, torch.float16]


def test_cuda_kernels_built():
    assert tilesparse.built_with_cuda(), "a CUDA device is present but tilesparse._C has no CUDA kernels"
    for op in ("tw_linear", "tw_linear_grad_input", "tw_linear_grad_values", "tw_pack", "tw_unpack",
               "layout_from_mask", "tile_mask", "tile_mask_threshold", "tile_segment_scores"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tilesparse::{op}", "CUDA"), op


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def make_case(n, k, tile, sparsity, col_sparsity=0.0, k_align=1, seed=0):
    """A tile-wise weight on the CPU (float64), its mask and layout."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    scores = w.abs() + 0.1 * torch.rand(n, k, generator=g, dtype=torch.float64)
    mask = ops.tile_mask(scores, tile, sparsity, col_sparsity, k_align)
    return w, mask, TileLayout.from_mask(mask, tile)


def make_x(shape, k, dtype, kind, seed=1):
    g = torch.Generator(device=DEV).manual_seed(seed)
    if kind == "contiguous":
        return torch.randn(*shape, k, device=DEV, dtype=torch.float32, generator=g).to(dtype)
    if kind == "sliced":  # rows with a stride larger than k
        big = torch.randn(*shape, k + 13, device=DEV, dtype=torch.float32, generator=g).to(dtype)
        return big[..., 5:5 + k]
    if kind == "transposed":  # inner stride != 1
        return torch.randn(k, *shape, device=DEV, dtype=torch.float32, generator=g).to(dtype).movedim(0, -1)
    raise ValueError(kind)


def check_accuracy(out, ref, dense, name):
    """max|out - ref| <= 2 * max|dense - ref| + eps (ref float64)."""
    assert out.shape == ref.shape, (name, out.shape, ref.shape)
    assert torch.isfinite(out).all(), name
    if ref.numel() == 0:
        return
    err = (out.double() - ref).abs().max().item()
    err_dense = (dense.double() - ref).abs().max().item()
    # fp32: both sum in fp32 in different orders; allow a few ulps of the largest value
    eps = (4e-6 if out.dtype == torch.float32 else 1e-6) * (1.0 + ref.abs().max().item())
    assert err <= 2 * err_dense + eps, f"{name}: error {err:.3e} > 2 x dense error {err_dense:.3e} + {eps:.1e}"


def masked_weight(w, mask, dtype):
    return (w * mask).to(DEV, dtype)


# The shapes: (lead dims of x, K, N, tile, sparsity, col_sparsity, k_align)
CASES = [
    ((37,), 70, 300, 128, 0.75, 0.0, 1),        # K % 8 != 0, N % tile != 0, scalar gathers
    ((2, 3), 77, 200, 64, 0.5, 0.0, 1),         # batch dims, odd K
    ((1,), 64, 128, 128, 0.75, 0.0, 8),         # M = 1, k_align 8
    ((0,), 48, 96, 64, 0.5, 0.0, 1),            # M = 0
    ((300,), 512, 384, 128, 0.75, 0.0, 8),      # several stages and M-blocks, vector V loads
    ((260,), 256, 256, 64, 0.0, 0.0, 1),        # keeps every weight: the cuBLAS path
    ((260,), 256, 256, 64, 0.25, 0.25, 1),      # full rows, pruned columns: vectorised x gathers
    ((129,), 200, 500, 128, 0.75, 0.5, 1),      # 2-D TW: scattered output features, uncovered outputs
    ((70,), 96, 260, 64, 0.6, 0.3, 8),          # 2-D TW, tile 64
    ((33,), 100, 150, 100, 0.5, 0.0, 1),        # tile 100: not a multiple of the kernels' blocks
    ((17,), 130, 70, 32, 0.9, 0.0, 1),          # tile 32, high sparsity
    ((45,), 160, 600, 256, 0.5, 0.0, 1),        # tile 256: two column chunks per tile
]


def _ids(c):
    return f"x{'x'.join(map(str, c[0]))}-K{c[1]}-N{c[2]}-t{c[3]}-s{c[4]}-c{c[5]}-a{c[6]}"


# ---------------------------------------------------------------------------
# forward / backward vs float64 references
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("dtype", LOW + [torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_accuracy(case, dtype, bias):
    lead, k, n, tile, s, cs, ka = case
    w, mask, layout = make_case(n, k, tile, s, cs, ka)
    lay = layout.to(DEV)
    wl = masked_weight(w, mask, dtype)
    values = lay.pack(wl)
    b = torch.randn(n, device=DEV).to(dtype) if bias else None
    for kind in ("contiguous", "sliced", "transposed"):
        x = make_x(lead, k, dtype, kind)
        y = ops.tw_linear(x, values, lay, b)
        ref = F.linear(x.double(), wl.double(), None if b is None else b.double())
        dense = F.linear(x, wl, b)
        check_accuracy(y, ref, dense, f"forward {kind}")


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("dtype", LOW + [torch.float32])
def test_grad_input_accuracy(case, dtype):
    lead, k, n, tile, s, cs, ka = case
    w, mask, layout = make_case(n, k, tile, s, cs, ka)
    lay = layout.to(DEV)
    wl = masked_weight(w, mask, dtype)
    values = lay.pack(wl)
    for kind in ("contiguous", "sliced"):
        gy = make_x(lead, n, dtype, kind, seed=3)
        gx = _ops.tw_linear_grad_input(gy, values, lay.cols, lay.row_offsets, lay.rows, k, tile)
        ref = gy.double() @ wl.double()
        dense = gy @ wl
        check_accuracy(gx, ref, dense, f"grad_input {kind}")


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("dtype", LOW + [torch.float32])
def test_grad_values_accuracy(case, dtype):
    lead, k, n, tile, s, cs, ka = case
    w, mask, layout = make_case(n, k, tile, s, cs, ka)
    lay = layout.to(DEV)
    for kind in ("contiguous", "transposed"):
        x = make_x(lead, k, dtype, kind, seed=4)
        gy = make_x(lead, n, dtype, "contiguous", seed=5)
        gv = _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, tile, lay.num_values)
        gy2, x2 = gy.reshape(-1, n), x.reshape(-1, k)
        ref = lay.pack(gy2.double().t() @ x2.double())
        dense = lay.pack(gy2.t() @ x2)
        check_accuracy(gv, ref, dense, f"grad_values {kind}")


@pytest.mark.parametrize("dtype", LOW)
def test_grad_values_v1_and_v2_agree(dtype, monkeypatch):
    """TILESPARSE_CUDA_GRAD_VALUES_KERNEL forces v1 or v2 (the A/B of
    scripts/gpu_check.sh); both match the float64 reference, also with a
    tile that keeps every feature (a second pass of v2) and 2-D TW."""
    for n, k, tile, s, cs in ((512, 1024, 64, 0.9, 0.0), (384, 768, 128, 0.75, 0.3)):
        w, mask, layout = make_case(n, k, tile, s, cs)
        if cs == 0.0:  # one tile keeps everything
            mask[:tile] = True
            layout = TileLayout.from_mask(mask, tile)
        lay = layout.to(DEV)
        x = torch.randn(300, k, device=DEV).to(dtype)
        gy = torch.randn(300, n, device=DEV).to(dtype)
        ref = lay.pack(gy.double().t() @ x.double())
        for kernel in ("v1", "v2", "auto"):
            monkeypatch.setenv("TILESPARSE_CUDA_GRAD_VALUES_KERNEL", kernel)
            gv = _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, tile, lay.num_values)
            check_accuracy(gv, ref, lay.pack(gy.t() @ x), f"grad_values {kernel} tile {tile}")
    monkeypatch.setenv("TILESPARSE_CUDA_GRAD_VALUES_KERNEL", "v3")
    with pytest.raises(ValueError, match="TILESPARSE_CUDA_GRAD_VALUES_KERNEL"):
        _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, tile, lay.num_values)


def test_grad_values_long_m_uses_splits():
    """Few tiles and a long M: the split-M path with its reduction."""
    w, mask, layout = make_case(128, 96, 128, 0.5)
    lay = layout.to(DEV)
    for dtype in LOW + [torch.float32, torch.float64]:
        x = torch.randn(20000, 96, device=DEV).to(dtype)
        gy = torch.randn(20000, 128, device=DEV).to(dtype)
        gv = _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, 128, lay.num_values)
        ref = lay.pack(gy.double().t() @ x.double())
        if dtype == torch.float64:
            torch.testing.assert_close(gv, ref, rtol=1e-10, atol=1e-9)
        else:
            check_accuracy(gv, ref, lay.pack(gy.t() @ x), f"grad_values splits {dtype}")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_float64_matches_reference(case):
    lead, k, n, tile, s, cs, ka = case
    w, mask, layout = make_case(n, k, tile, s, cs, ka)
    lay = layout.to(DEV)
    wd = (w * mask).to(DEV)
    values = lay.pack(wd)
    b = torch.randn(n, device=DEV, dtype=torch.float64)
    x = make_x(lead, k, torch.float64, "sliced")
    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ops.tw_linear(x, values, lay, b), F.linear(x, wd, b), **tol)
    gy = torch.randn(*lead, n, device=DEV, dtype=torch.float64)
    torch.testing.assert_close(_ops.tw_linear_grad_input(gy, values, lay.cols, lay.row_offsets, lay.rows, k, tile),
                               gy @ wd, **tol)
    gv = _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, tile, lay.num_values)
    torch.testing.assert_close(gv, lay.pack(gy.reshape(-1, n).t() @ x.reshape(-1, k)), **tol)


def test_gradcheck_float64():
    w, mask, layout = make_case(40, 23, 16, 0.5, 0.2)
    lay = layout.to(DEV)
    values = lay.pack((w * mask).to(DEV)).requires_grad_()
    x = torch.randn(3, 5, 23, device=DEV, dtype=torch.float64, requires_grad=True)
    b = torch.randn(40, device=DEV, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: ops.tw_linear(x, v, lay, b), (x, values, b))


@pytest.mark.parametrize("dtype", LOW + [torch.float32, torch.float64])
def test_autograd_matches_cpu(dtype):
    w, mask, layout = make_case(192, 80, 64, 0.75, 0.0)
    values_cpu = layout.pack((w * mask).to(dtype))
    x_cpu = torch.randn(4, 9, 80).to(dtype)
    b_cpu = torch.randn(192).to(dtype)
    grads = []
    for dev in ("cpu", DEV):
        lay = layout.to(dev)
        v = values_cpu.to(dev).requires_grad_()
        x = x_cpu.to(dev).requires_grad_()
        b = b_cpu.to(dev).requires_grad_()
        y = ops.tw_linear(x, v, lay, b)
        (y.float() * torch.linspace(-1, 1, y.numel(), device=dev).view_as(y)).sum().backward()
        grads.append([y.detach().cpu(), x.grad.cpu(), v.grad.cpu(), b.grad.cpu()])
    tol = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4),
           torch.bfloat16: dict(rtol=3e-2, atol=3e-2), torch.float16: dict(rtol=5e-3, atol=5e-3)}[dtype]
    for a, b in zip(*grads):
        torch.testing.assert_close(b.double(), a.double(), **tol)


def test_deterministic():
    w, mask, layout = make_case(512, 384, 128, 0.75)
    lay = layout.to(DEV)
    values = lay.pack((w * mask).to(DEV, torch.bfloat16))
    x = torch.randn(1000, 384, device=DEV).bfloat16()
    gy = torch.randn(1000, 512, device=DEV).bfloat16()
    a = [ops.tw_linear(x, values, lay),
         _ops.tw_linear_grad_input(gy, values, lay.cols, lay.row_offsets, lay.rows, 384, 128),
         _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, 128, lay.num_values)]
    b = [ops.tw_linear(x, values, lay),
         _ops.tw_linear_grad_input(gy, values, lay.cols, lay.row_offsets, lay.rows, 384, 128),
         _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, 128, lay.num_values)]
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_empty_layout_and_zero_sizes():
    for dtype in (torch.bfloat16, torch.float32):
        mask = torch.zeros(50, 30, dtype=torch.bool)
        lay = TileLayout.from_mask(mask, 64).to(DEV)
        values = torch.empty(0, device=DEV, dtype=dtype)
        x = torch.randn(7, 30, device=DEV).to(dtype)
        b = torch.randn(50, device=DEV).to(dtype)
        torch.testing.assert_close(ops.tw_linear(x, values, lay, b), b.expand(7, 50))
        gy = torch.randn(7, 50, device=DEV).to(dtype)
        gx = _ops.tw_linear_grad_input(gy, values, lay.cols, lay.row_offsets, lay.rows, 30, 64)
        assert gx.shape == (7, 30) and not gx.any()
        gv = _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, 64, 0)
        assert gv.shape == (0,)


def test_cuda_graph_capture():
    """A validated layout runs inside CUDA-graph capture (no sync there)."""
    w, mask, layout = make_case(256, 128, 128, 0.5)
    lay = layout.to(DEV)
    values = lay.pack((w * mask).to(DEV, torch.bfloat16))
    x = torch.randn(64, 128, device=DEV).bfloat16()
    expected = ops.tw_linear(x, values, lay)  # validates (and caches) the layout
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.tw_linear(x, values, lay)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = ops.tw_linear(x, values, lay)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, expected)


# ---------------------------------------------------------------------------
# packed format and mask ops: CUDA equals CPU exactly
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64,
                                   torch.bool])
def test_pack_unpack_match_cpu(dtype):
    w, mask, layout = make_case(300, 70, 128, 0.6, 0.3)
    weight = (torch.randn(300, 70) * 10).to(dtype)
    values = layout.pack(weight)
    lay = layout.to(DEV)
    v_cuda = lay.pack(weight.to(DEV))
    assert torch.equal(v_cuda.cpu(), values)
    assert torch.equal(lay.unpack(v_cuda).cpu(), layout.unpack(values))
    assert torch.equal(lay.mask().cpu(), layout.mask())


@pytest.mark.parametrize("tile", [64, 128])
@pytest.mark.parametrize("k_align,unit", [(1, 1), (8, 1), (1, 8), (16, 8)])
@pytest.mark.parametrize("col_sparsity", [0.0, 0.3])
def test_mask_ops_match_cpu(tile, k_align, unit, col_sparsity):
    g = torch.Generator().manual_seed(tile + k_align)
    scores = torch.rand(333, 150, generator=g, dtype=torch.float64)  # K = 150: a partial run of 6 for unit 8
    scores[:, 7] = scores[:, 8]  # ties
    sc = scores.to(DEV)
    for sp in (0.0, 0.5, 0.9):
        cs = min(col_sparsity, sp)
        m_cpu = ops.tile_mask(scores, tile, sp, cs, k_align, unit)
        m_cuda = ops.tile_mask(sc, tile, sp, cs, k_align, unit)
        assert m_cuda.device.type == "cuda" and torch.equal(m_cuda.cpu(), m_cpu)
        for a, b in zip(_ops.layout_from_mask(m_cuda, tile), _ops.layout_from_mask(m_cpu, tile)):
            assert a.device.type == "cuda" and torch.equal(a.cpu(), b)
    ct = (scores.norm(dim=1) / 150).median().item() if col_sparsity else None  # prunes about half the columns
    seg_cpu = ops.tile_segment_scores(scores, tile, ct, unit)
    seg_cuda = ops.tile_segment_scores(sc, tile, ct, unit)
    assert torch.equal(seg_cuda.cpu(), seg_cpu)
    thr = seg_cpu.flatten().quantile(0.6).item()
    assert torch.equal(ops.tile_mask_threshold(sc, tile, thr, ct, k_align, unit).cpu(),
                       ops.tile_mask_threshold(scores, tile, thr, ct, k_align, unit))
    s32 = scores.float()
    assert torch.equal(ops.tile_mask(s32.to(DEV), tile, 0.5).cpu(), ops.tile_mask(s32, tile, 0.5))


def test_mask_ops_errors_match_cpu():
    bad = torch.rand(10, 10, dtype=torch.float64)
    bad[3, 4] = float("nan")
    for dev in ("cpu", DEV):
        with pytest.raises(ValueError, match=r"scores must be finite"):
            ops.tile_mask(bad.to(dev), 4, 0.5)
    mask = torch.ones(10, 10, dtype=torch.bool)
    mask[1, 2] = False
    with pytest.raises(ValueError, match="not tile-wise"):
        _ops.layout_from_mask(mask.to(DEV), 4)


# ---------------------------------------------------------------------------
# malformed layouts raise (the CPU's message), and never crash the device
# ---------------------------------------------------------------------------
def _malformed():
    w, mask, layout = make_case(200, 40, 64, 0.5)
    c, ro, r = layout.cols.clone(), layout.row_offsets.clone(), layout.rows.clone()
    out = []
    c1 = c.clone(); c1[3] = 500; out.append(("col out of range", c1, ro, r))
    c2 = c.clone(); c2[5] = c2[4]; out.append(("cols not increasing", c2, ro, r))
    r1 = r.clone(); r1[2] = 40; out.append(("row out of range", c, ro, r1))
    r2 = r.clone(); r2[1] = -1; out.append(("negative row", c, ro, r2))
    r3 = r.clone(); r3[4], r3[5] = r3[5].item(), r3[4].item(); out.append(("rows not increasing", c, ro, r3))
    ro1 = ro.clone(); ro1[1] = ro1[2] + 1; out.append(("offsets decreasing", c, ro1, r))
    ro2 = ro.clone(); ro2[0] = 1; out.append(("offsets start", c, ro2, r))
    ro3 = ro.clone(); ro3[-1] = ro3[-1] - 1; out.append(("offsets end", c, ro3, r))
    out.append(("too few offsets", c, ro[:-1], r))
    return w, mask, layout, out


@pytest.mark.parametrize("op", ["tw_linear", "grad_input", "grad_values", "pack", "unpack"])
def test_malformed_layouts_raise(op):
    w, mask, layout, cases = _malformed()
    n, k, tile = 200, 40, 64
    for name, c, ro, r in cases:
        msgs = []
        for dev in ("cpu", DEV):
            cd, rod, rd = c.to(dev), ro.to(dev), r.to(dev)
            values = torch.randn(layout.num_values, device=dev)
            x = torch.randn(5, k, device=dev)
            gy = torch.randn(5, n, device=dev)
            with pytest.raises(ValueError) as info:
                if op == "tw_linear":
                    _ops.tw_linear(x, values, cd, rod, rd, None, n, tile)
                elif op == "grad_input":
                    _ops.tw_linear_grad_input(gy, values, cd, rod, rd, k, tile)
                elif op == "grad_values":
                    _ops.tw_linear_grad_values(gy, x, cd, rod, rd, tile, layout.num_values)
                elif op == "pack":
                    _ops.tw_pack(torch.randn(n, k, device=dev), cd, rod, rd, tile, layout.num_values)
                else:
                    _ops.tw_unpack(values, cd, rod, rd, tile, n, k)
            msgs.append(str(info.value).splitlines()[0])
        assert "invalid tile layout" in msgs[1], (name, msgs)
        assert msgs[0] == msgs[1], (name, msgs)
    torch.cuda.synchronize()  # the device is still healthy


def test_wrong_values_size_raises():
    w, mask, layout = make_case(200, 40, 64, 0.5)
    lay = layout.to(DEV)
    x = torch.randn(3, 40, device=DEV)
    with pytest.raises(ValueError, match="values must have"):
        ops.tw_linear(x, torch.randn(layout.num_values + 1, device=DEV), lay)
    with pytest.raises(ValueError, match="num_values must be"):
        _ops.tw_linear_grad_values(torch.randn(3, 200, device=DEV), x, lay.cols, lay.row_offsets, lay.rows, 64,
                                   layout.num_values - 1)
    with pytest.raises(TypeError, match="values must have the dtype"):
        ops.tw_linear(x, torch.randn(layout.num_values, device=DEV, dtype=torch.float64), lay)


def test_validation_cache_sees_inplace_changes():
    w, mask, layout = make_case(200, 40, 64, 0.5)
    lay = layout.to(DEV)
    values = lay.pack((w * mask).to(DEV).float())
    x = torch.randn(3, 40, device=DEV)
    ops.tw_linear(x, values, lay)  # validated and cached
    lay.rows[0] = 1000  # in place: bumps the version counter
    with pytest.raises(ValueError, match="invalid tile layout"):
        ops.tw_linear(x, values, lay)


# ---------------------------------------------------------------------------
# opcheck on CUDA for every operator
# ---------------------------------------------------------------------------
def _opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_opcheck_linear_ops(dtype):
    w, mask, layout = make_case(150, 45, 64, 0.5, 0.2)
    lay = layout.to(DEV)
    values = lay.pack((w * mask).to(DEV, dtype))
    x = torch.randn(2, 7, 45, device=DEV).to(dtype)
    b = torch.randn(150, device=DEV).to(dtype)
    gy = torch.randn(2, 7, 150, device=DEV).to(dtype)
    idx = (lay.cols, lay.row_offsets, lay.rows)
    _opcheck(_ops.tw_linear.default, (x.requires_grad_(), values.requires_grad_(), *idx, b.requires_grad_(), 150, 64))
    _opcheck(_ops.tw_linear_grad_input.default, (gy, values.detach(), *idx, 45, 64))
    _opcheck(_ops.tw_linear_grad_values.default, (gy, x.detach(), *idx, 64, lay.num_values))


def test_opcheck_layout_and_mask_ops():
    w, mask, layout = make_case(150, 45, 64, 0.5, 0.2)
    lay = layout.to(DEV)
    idx = (lay.cols, lay.row_offsets, lay.rows)
    weight = torch.randn(150, 45, device=DEV, dtype=torch.float64, requires_grad=True)
    _opcheck(_ops.tw_pack.default, (weight, *idx, 64, lay.num_values))
    values = torch.randn(lay.num_values, device=DEV, dtype=torch.float64, requires_grad=True)
    _opcheck(_ops.tw_unpack.default, (values, *idx, 64, 150, 45))
    _opcheck(_ops.layout_from_mask.default, (mask.to(DEV), 64))
    scores = w.abs().to(DEV)
    _opcheck(_ops.tile_mask.default, (scores, 64, 0.5, 0.2, 8))
    _opcheck(_ops.tile_mask_threshold.default, (scores, 64, 0.05, None, 1))
    _opcheck(_ops.tile_segment_scores.default, (scores, 64, None))
    _opcheck(_ops.tile_segment_scores.default, (scores, 64, 0.05))


# ---------------------------------------------------------------------------
# sm_90a forward (TMA + wgmma): Hopper only
# ---------------------------------------------------------------------------
def _hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


# (lead dims of x, K, N, tile, sparsity, col_sparsity, k_align)
SM90_CASES = [
    ((300,), 512, 512, 128, 0.75, 0.0, 8),      # M tail, k_align 8: the ldmatrix gather
    ((4096,), 1024, 1024, 128, 0.9, 0.0, 1),    # persistent, 2-byte gathers, clusters of 4
    ((1,), 1024, 1024, 128, 0.75, 0.0, 8),      # small M: K-split reduced by the last CTA
    ((2, 32), 520, 768, 256, 0.5, 0.25, 1),     # M = 64, 2-D TW, tile 256, K % 64 != 0
    ((17,), 200, 300, 128, 0.5, 0.0, 1),        # small M, partial last tile
    ((129,), 2048, 2048, 128, 0.95, 0.0, 16),   # 95% sparse, unit-16 runs: design U
    ((4096,), 1024, 1024, 128, 0.75, 0.0, 16),  # design U: clusters of 4 along M, persistent
    ((3, 100), 512, 768, 256, 0.5, 0.25, 16),   # design U: 2-D TW, tile 256, M tail
]


@pytest.mark.skipif(not _hopper(), reason="needs compute capability 9.x (the sm_90a kernels)")
@pytest.mark.parametrize("case", SM90_CASES, ids=_ids)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_sm90_matches_linear(case, dtype, bias, monkeypatch):
    """TILESPARSE_CUDA_FWD_KERNEL=sm90 against F.linear (float64 reference),
    sm90 and v2 agree within the accuracy rule, and sm90 is deterministic."""
    lead, k, n, tile, s, cs, ka = case
    w, mask, layout = make_case(n, k, tile, s, cs, ka)
    lay = layout.to(DEV)
    wl = masked_weight(w, mask, dtype)
    values = lay.pack(wl)
    b = torch.randn(n, device=DEV).to(dtype) if bias else None
    x = make_x(lead, k, dtype, "contiguous")
    ref = F.linear(x.double(), wl.double(), None if b is None else b.double())
    dense = F.linear(x, wl, b)
    monkeypatch.setenv("TILESPARSE_CUDA_FWD_KERNEL", "sm90")
    y = ops.tw_linear(x, values, lay, b)
    check_accuracy(y, ref, dense, "forward sm90")
    assert torch.equal(y, ops.tw_linear(x, values, lay, b)), "sm90 forward is not deterministic"
    monkeypatch.setenv("TILESPARSE_CUDA_FWD_KERNEL", "v2")
    check_accuracy(ops.tw_linear(x, values, lay, b), ref, dense, "forward v2")
    if ka == 16:  # unit-16 runs: design U above; design A (sm90a) on the same layout
        monkeypatch.setenv("TILESPARSE_CUDA_FWD_KERNEL", "sm90a")
        check_accuracy(ops.tw_linear(x, values, lay, b), ref, dense, "forward sm90a")


@pytest.mark.skipif(not _hopper(), reason="needs compute capability 9.x (the sm_90a kernels)")
def test_forward_sm90_values_pointer_change_and_env(monkeypatch):
    """New values (a new pointer: the per-tile tensor maps are re-encoded),
    strided x (TMA row stride), and a bad TILESPARSE_CUDA_FWD_KERNEL."""
    w, mask, layout = make_case(512, 384, 128, 0.75, k_align=8)
    lay = layout.to(DEV)
    monkeypatch.setenv("TILESPARSE_CUDA_FWD_KERNEL", "sm90")
    x = make_x((200,), 384, torch.bfloat16, "sliced")
    for scale in (1.0, -2.0):
        wl = masked_weight(w * scale, mask, torch.bfloat16)
        values = lay.pack(wl)
        ref = F.linear(x.double(), wl.double())
        check_accuracy(ops.tw_linear(x, values, lay), ref, F.linear(x, wl), f"sm90 values x{scale}")
    monkeypatch.setenv("TILESPARSE_CUDA_FWD_KERNEL", "sm100")
    with pytest.raises(ValueError, match="TILESPARSE_CUDA_FWD_KERNEL"):
        ops.tw_linear(x, values, lay)


GV_SM90_CASES = [
    ((300,), 400, 256, 128, 0.6, 0.0, 16),     # cluster 1, M tail
    ((256,), 2048, 256, 128, 0.55, 0.0, 16),   # cluster 4 (gy multicast)
    ((4, 275), 1024, 400, 256, 0.5, 0.0, 16),  # tile 256, N tail, M-ranges
    ((4096,), 1024, 1024, 128, 0.75, 0.0, 16),  # persistent items
]


@pytest.mark.skipif(not _hopper(), reason="needs compute capability 9.x (the sm_90a kernels)")
@pytest.mark.parametrize("case", GV_SM90_CASES, ids=_ids)
@pytest.mark.parametrize("dtype", LOW)
def test_grad_values_sm90_matches_reference(case, dtype, monkeypatch):
    """TILESPARSE_CUDA_GRAD_VALUES_KERNEL=sm90 (the sm90u kernel on unit-16 layouts) against float64, v2 on the
    same call, deterministic."""
    lead, k, n, tile, s, cs, ka = case
    w, mask, layout = make_case(n, k, tile, s, cs, ka)
    lay = layout.to(DEV)
    x = make_x(lead, k, dtype, "contiguous", seed=4)
    gy = make_x(lead, n, dtype, "contiguous", seed=5)
    gy2, x2 = gy.reshape(-1, n), x.reshape(-1, k)
    ref = lay.pack(gy2.double().t() @ x2.double())
    dense = lay.pack(gy2.t() @ x2)
    for kernel in ("sm90", "v2"):
        monkeypatch.setenv("TILESPARSE_CUDA_GRAD_VALUES_KERNEL", kernel)
        gv = _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, tile, lay.num_values)
        check_accuracy(gv, ref, dense, f"grad_values {kernel}")
        again = _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, tile, lay.num_values)
        assert torch.equal(gv, again), f"grad_values {kernel} is not deterministic"


GI_SM90_CASES = [
    ((300,), 400, 256, 128, 0.75, 0.0, 1),      # M tail (a partial 128-row block), K = 2 chunks of 200
    ((4, 130), 768, 384, 128, 0.75, 0.0, 16),  # unit 16, 3-D input, chunks of 192
    ((129,), 300, 400, 256, 0.6, 0.0, 8),      # tile 256 (two slices a tile), N tail, unit 8
    ((64,), 4096, 1024, 128, 0.9, 0.0, 1),     # small M, few kept features a chunk (forced: v1's by the plan)
    ((2048,), 1024, 1024, 128, 0.5, 0.0, 1),   # several 64-position items a (slice, chunk)
]


@pytest.mark.skipif(not _hopper(), reason="needs compute capability 9.x (the sm_90a kernels)")
@pytest.mark.parametrize("case", GI_SM90_CASES, ids=_ids)
@pytest.mark.parametrize("dtype", LOW)
def test_grad_input_sm90_matches_reference(case, dtype, monkeypatch):
    """TILESPARSE_CUDA_GRAD_INPUT_KERNEL=sm90 (wgmma, tw_gi_sm90_kernels.cuh) against float64 and v1 on the same
    call, deterministic, strided grad_out rows included."""
    lead, k, n, tile, s, cs, ka = case
    w, mask, layout = make_case(n, k, tile, s, cs, ka)
    lay = layout.to(DEV)
    wl = masked_weight(w, mask, dtype)
    values = lay.pack(wl)
    for kind in ("contiguous", "sliced"):
        gy = make_x(lead, n, dtype, kind, seed=6)
        ref, low = gy.double() @ wl.double(), gy @ wl
        for kernel in ("sm90", "v1"):
            monkeypatch.setenv("TILESPARSE_CUDA_GRAD_INPUT_KERNEL", kernel)
            gx = _ops.tw_linear_grad_input(gy, values, lay.cols, lay.row_offsets, lay.rows, k, tile)
            check_accuracy(gx, ref, low, f"grad_input {kernel} ({kind})")
            again = _ops.tw_linear_grad_input(gy, values, lay.cols, lay.row_offsets, lay.rows, k, tile)
            assert torch.equal(gx, again), f"grad_input {kernel} is not deterministic"


@pytest.mark.parametrize("dtype", LOW)
def test_backward_dense_fallback_matches_sparse(dtype, monkeypatch):
    """The dense fallback (prefer_dense_backward: unpack V and one cuBLAS GEMM for grad_input, the dense weight
    gradient packed for grad_values), forced by the environment, against float64 and the sparse kernels, with
    a layout that leaves output features out and sliced inputs; a 50% layer at large M takes it on its own on an
    H100 (and gives the same answer)."""
    w, mask, layout = make_case(384, 768, 128, 0.5, 0.25)
    lay = layout.to(DEV)
    wl = masked_weight(w, mask, dtype)
    values = lay.pack(wl)
    gy = make_x((300,), 384, dtype, "sliced", seed=3)
    x = make_x((300,), 768, dtype, "sliced", seed=4)
    gi_ref, gv_ref = gy.double() @ wl.double(), lay.pack(gy.double().t() @ x.double())
    for choice in ("dense", "sparse"):
        monkeypatch.setenv("TILESPARSE_CUDA_GRAD_INPUT_KERNEL", choice)
        monkeypatch.setenv("TILESPARSE_CUDA_GRAD_VALUES_KERNEL", "dense" if choice == "dense" else "v2")
        gx = _ops.tw_linear_grad_input(gy, values, lay.cols, lay.row_offsets, lay.rows, 768, 128)
        gv = _ops.tw_linear_grad_values(gy, x, lay.cols, lay.row_offsets, lay.rows, 128, lay.num_values)
        check_accuracy(gx, gi_ref, gy @ wl, f"grad_input {choice}")
        check_accuracy(gv, gv_ref, lay.pack(gy.t() @ x), f"grad_values {choice}")
    monkeypatch.delenv("TILESPARSE_CUDA_GRAD_INPUT_KERNEL")
    monkeypatch.delenv("TILESPARSE_CUDA_GRAD_VALUES_KERNEL")
    gy = torch.randn(8192, 384, device=DEV).to(dtype)
    gx = _ops.tw_linear_grad_input(gy, values, lay.cols, lay.row_offsets, lay.rows, 768, 128)
    check_accuracy(gx, gy.double() @ wl.double(), gy @ wl, "grad_input auto, M = 8192")
