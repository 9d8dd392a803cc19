"""tw_linear and its backward operators against the independent reference: a
dense masked F.linear in float64 (tilesparse.testing.reference_tw_linear),
over 1-D/2-D layouts, dtypes, batch dims, M=0, K=1 and strided inputs."""
import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse import TileLayout, ops
from tilesparse.testing import (CPU_KERNELS, FLOAT_DTYPES, assert_close_to_reference, cpu_kernel, cpu_kernel_params,
                                device_params, devices, layout_with_empty_tile, random_tw_mask, reference_pack,
                                reference_tw_linear, supported_cpu_kernels)

DEVICES = device_params()
_ops = torch.ops.tilesparse

KERNEL_DTYPES = [pytest.param((dtype, None), id=str(dtype).split(".")[-1]) for dtype in FLOAT_DTYPES] + \
    cpu_kernel_params(torch.float32)
CPU_KERNEL_PARAMS = cpu_kernel_params()
SUPPORTED_KERNELS = supported_cpu_kernels()


def _case(name):
    """(mask, layout) of the layouts every test sweeps."""
    if name == "empty_tile":
        layout, mask = layout_with_empty_tile()
        return mask, layout
    g = torch.Generator().manual_seed(0)
    mask, tile = {
        "1d": lambda: (random_tw_mask(37, 19, 8, 0.4, seed=1), 8),  # N % tile != 0, tile 0 full
        "2d": lambda: (random_tw_mask(41, 23, 4, 0.5, col_density=0.6, seed=2), 4),  # non-contiguous cols
        "tile_mask_2d": lambda: (ops.tile_mask(torch.rand(70, 40, generator=g, dtype=torch.float64), 16, 0.75,
                                               0.3), 16),
        "k1": lambda: (random_tw_mask(9, 1, 4, 1.0, col_density=0.7, seed=3), 4),
        "dense": lambda: (torch.ones(13, 5, dtype=torch.bool), 4),
        "empty": lambda: (torch.zeros(13, 5, dtype=torch.bool), 4),
    }[name]()
    return mask, TileLayout.from_mask(mask, tile)


CASES = ["1d", "2d", "tile_mask_2d", "k1", "dense", "empty", "empty_tile"]


def _idx(layout):
    return layout.cols, layout.row_offsets, layout.rows


def _packed(dense, layout):
    """Packed values of a dense [N, K] tensor in the layout's slots, built
    block by block in plain Python (docs/format.md; zero in padding slots).
    test_layout checks the layout's indices against reference_layout."""
    idx = (layout.cols.cpu().tolist(), layout.row_offsets.cpu().tolist(), layout.rows.cpu().tolist())
    return reference_pack(dense.detach().cpu(), *idx, layout.tile).to(dense.dtype)


def _operands(mask, layout, dtype, device, lead=(5,), bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, k = mask.shape
    w = torch.randn(n, k, generator=g, dtype=torch.float64).to(dtype)
    x = torch.randn(*lead, k, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype) if bias else None
    layout = layout.to(device)
    values = layout.pack(w.to(device))
    return w, x.to(device), None if b is None else b.to(device), layout, values


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype_kernel", KERNEL_DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(6,), (2, 3), (0,), ()], ids=["M6", "batch2x3", "M0", "vector"])
def test_forward_matches_dense_masked_reference(device, dtype_kernel, case, bias, lead):
    """y == x @ (W*mask)^T + b for every layout, dtype, CPU kernel, bias or not,
    batch dims, M=0 and a 1-D x; pruned output features give exactly their bias."""
    dtype, kernel = dtype_kernel
    mask, layout = _case(case)
    w, x, b, layout, values = _operands(mask, layout, dtype, device, lead, bias)
    with cpu_kernel(kernel):
        y = ops.tw_linear(x, values, layout, b)
    assert y.dtype == dtype and y.device == x.device and y.shape == (*lead, mask.shape[0])
    ref = reference_tw_linear(x.cpu(), w, mask, None if b is None else b.cpu())
    assert_close_to_reference(y, ref, reduction_len=mask.shape[1])
    dead = ~mask.any(1)
    if dead.any() and y.numel():
        expected = (b.cpu()[dead] if bias else torch.zeros(int(dead.sum()), dtype=dtype)).expand(*lead, -1)
        assert torch.equal(y.cpu()[..., dead], expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype_kernel", KERNEL_DTYPES)
@pytest.mark.parametrize("m", [257, 600])
@pytest.mark.parametrize("case", ["1d", "tile_mask_2d"])
def test_many_row_blocks(device, dtype_kernel, m, case):
    """M spanning several row blocks, not a multiple of any block size: forward
    and both backward operators (grad_values sums over the blocks)."""
    dtype, kernel = dtype_kernel
    mask, layout = _case(case)
    w, x, b, layout, values = _operands(mask, layout, dtype, device, (m,))
    n, k = mask.shape
    gy = torch.randn(m, n, dtype=torch.float64).to(dtype=dtype, device=device)
    with cpu_kernel(kernel):
        y = ops.tw_linear(x, values, layout, b)
        gx = _ops.tw_linear_grad_input(gy, values, *_idx(layout), k, layout.tile)
        gv = _ops.tw_linear_grad_values(gy, x, *_idx(layout), layout.tile, layout.num_values)
    assert_close_to_reference(y, reference_tw_linear(x.cpu(), w, mask, b.cpu()), reduction_len=k)
    assert_close_to_reference(gx, gy.cpu().double() @ (w.double() * mask), reduction_len=n)
    assert_close_to_reference(gv, _packed(gy.cpu().double().t() @ x.cpu().double(), layout), reduction_len=m)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype_kernel", KERNEL_DTYPES)
@pytest.mark.parametrize("case", ["2d", "dense"])
def test_strided_values_and_bias(device, dtype_kernel, case):
    """Non-contiguous values and bias (every other element of a larger buffer)."""
    dtype, kernel = dtype_kernel
    mask, layout = _case(case)
    w, x, b, layout, values = _operands(mask, layout, dtype, device)
    v2 = torch.zeros(2 * values.numel(), dtype=dtype, device=device)[::2]
    v2.copy_(values)
    b2 = torch.zeros(2 * b.numel(), dtype=dtype, device=device)[1::2]
    b2.copy_(b)
    assert not v2.is_contiguous() and not b2.is_contiguous()
    with cpu_kernel(kernel):
        y = ops.tw_linear(x, v2, layout, b2)
    assert_close_to_reference(y, reference_tw_linear(x.cpu(), w, mask, b.cpu()), reduction_len=mask.shape[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["transposed", "sliced", "expanded", "permuted_batch"])
def test_forward_strided_x(device, kind):
    """Non-contiguous x (transposed, sliced, stride-0 expanded, permuted batch)
    gives the same result as the reference on its values."""
    mask, layout = _case("2d")
    k = mask.shape[1]
    w, _, b, layout, values = _operands(mask, layout, torch.float64, device)
    base = torch.randn(40, 3 * k, dtype=torch.float64, device=device)
    x = {
        "transposed": lambda: base[:, :k].t().contiguous().t(),
        "sliced": lambda: base[::3, ::3],
        "expanded": lambda: base[:1, :k].expand(7, k),
        "permuted_batch": lambda: base[:, :2 * k].reshape(4, 10, 2, k).permute(1, 2, 0, 3)[:, :, ::2],
    }[kind]()
    assert not x.is_contiguous()
    y = ops.tw_linear(x, values, layout, b)
    torch.testing.assert_close(y.cpu(), reference_tw_linear(x.cpu(), w, mask, b.cpu()))


@pytest.mark.parametrize("n,k", [(4, 0), (0, 5)], ids=["K0", "N0"])
def test_zero_features(n, k):
    """A layer with no input features returns its bias; one with no output
    features returns [..., 0]; backward gives zero / empty gradients."""
    layout = TileLayout.from_mask(torch.zeros(n, k, dtype=torch.bool), 4)
    x = torch.randn(2, 3, k, dtype=torch.float64, requires_grad=True)
    values = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, dtype=torch.float64, requires_grad=True)
    y = ops.tw_linear(x, values, layout, b)
    torch.testing.assert_close(y, b.detach().expand(2, 3, n))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    torch.testing.assert_close(b.grad, torch.full_like(b, 6.0))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_and_backward_independent_of_thread_count(threads, dtype):
    """The CPU work split (row blocks per worker, per-worker partial sums of
    grad_values) does not change the results."""
    mask, layout = _case("tile_mask_2d")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        w, x, b, layout, values = _operands(mask, layout, dtype, "cpu", (300,))
        x.requires_grad_(True)
        values.requires_grad_(True)
        gy = torch.randn(300, mask.shape[0], dtype=torch.float64).to(dtype)
        y = ops.tw_linear(x, values, layout, b)
        (y * gy).sum().backward()
    finally:
        torch.set_num_threads(old)
    n, k = mask.shape
    assert_close_to_reference(y, reference_tw_linear(x.detach(), w, mask, b), reduction_len=k)
    assert_close_to_reference(x.grad, gy.double() @ (w.double() * mask), reduction_len=n)
    assert_close_to_reference(values.grad, _packed(gy.double().t() @ x.detach().double(), layout), reduction_len=300)


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype_kernel", KERNEL_DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("lead", [(6,), (2, 3), (0,)], ids=["M6", "batch2x3", "M0"])
def test_backward_matches_dense_masked_reference(device, dtype_kernel, case, lead):
    """Autograd grads wrt x, values and bias equal those of the dense masked
    reference: grad_values is the packed (masked) dense weight gradient."""
    dtype, kernel = dtype_kernel
    mask, layout = _case(case)
    w, x, b, layout, values = _operands(mask, layout, dtype, device, lead)
    x.requires_grad_(True)
    values.requires_grad_(True)
    b.requires_grad_(True)
    gy = torch.randn(*lead, mask.shape[0], dtype=torch.float64)
    with cpu_kernel(kernel):
        (ops.tw_linear(x, values, layout, b) * gy.to(dtype=dtype, device=device)).sum().backward()

    gy_ = gy.to(dtype).double()
    wr = w.double().requires_grad_(True)
    xr = x.detach().cpu().double().requires_grad_(True)
    br = b.detach().cpu().double().requires_grad_(True)
    (reference_tw_linear(xr, wr, mask, br) * gy_).sum().backward()
    m = max(1, gy.numel() // max(1, mask.shape[0]))
    assert_close_to_reference(x.grad, xr.grad, reduction_len=mask.shape[0])
    assert_close_to_reference(values.grad, _packed(wr.grad, layout), reduction_len=m)
    assert_close_to_reference(b.grad, br.grad, reduction_len=m)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["1d", "2d", "empty_tile", "k1"])
@pytest.mark.parametrize("lead", [(6,), (2, 3), (0,)], ids=["M6", "batch2x3", "M0"])
def test_backward_operators_directly(device, case, lead):
    """tw_linear_grad_input == grad_out @ (W*mask) and tw_linear_grad_values ==
    pack(grad_out^T @ x), called as operators (M=0 gives zero grad_values)."""
    mask, layout = _case(case)
    w, x, _, layout, values = _operands(mask, layout, torch.float64, device, lead)
    n, k = mask.shape
    gy = torch.randn(*lead, n, dtype=torch.float64, device=device)
    gx = _ops.tw_linear_grad_input(gy, values, layout.cols, layout.row_offsets, layout.rows, k, layout.tile)
    assert gx.shape == (*lead, k)
    torch.testing.assert_close(gx.cpu(), gy.cpu() @ (w * mask))
    gv = _ops.tw_linear_grad_values(gy, x, layout.cols, layout.row_offsets, layout.rows, layout.tile,
                                    layout.num_values)
    dense = gy.cpu().reshape(-1, n).t() @ x.cpu().reshape(-1, k)
    torch.testing.assert_close(gv.cpu(), _packed(dense, layout))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_16bit_backward_operators_round_once(device, dtype):
    """In 16 bits the backward sums (grad_input over the tiles that keep a feature, grad_values over M) are
    as accurate as torch's own 16-bit matmul against float64 (within 2x of its error): accumulated in fp32
    and rounded once, not once per tile or per M-block."""
    n, k, m, tile = 1024, 96, 3000, 64   # 16 tiles a feature sums over; M in several blocks
    mask = random_tw_mask(n, k, tile, 0.5, seed=7)
    layout = TileLayout.from_mask(mask, tile).to(device)
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(n, k, generator=g, dtype=torch.float64) * mask).to(dtype)
    gy = torch.randn(m, n, generator=g, dtype=torch.float64).to(dtype).to(device)
    x = torch.randn(m, k, generator=g, dtype=torch.float64).to(dtype).to(device)
    values = layout.pack(w.to(device))
    wd = w.double().to(device)
    gx = _ops.tw_linear_grad_input(gy, values, layout.cols, layout.row_offsets, layout.rows, k, tile)
    ref, low = gy.double() @ wd, gy @ w.to(device)
    assert (gx.double() - ref).abs().max() <= 2 * (low.double() - ref).abs().max()
    gv = _ops.tw_linear_grad_values(gy, x, layout.cols, layout.row_offsets, layout.rows, tile, layout.num_values)
    ref_v = layout.pack((gy.double().t() @ x.double()))
    low_v = layout.pack(gy.t() @ x)
    assert (gv.double() - ref_v).abs().max() <= 2 * (low_v.double() - ref_v).abs().max()


@pytest.mark.parametrize("needs", ["x", "values", "bias", "x+bias"])
def test_backward_only_requested_grads(needs):
    """Only the inputs that require grad get one, and each is still correct."""
    mask, layout = _case("2d")
    w, x, b, layout, values = _operands(mask, layout, torch.float64, "cpu", (4,))
    for name, t in (("x", x), ("values", values), ("bias", b)):
        t.requires_grad_(name in needs.split("+"))
    ops.tw_linear(x, values, layout, b).sum().backward()
    ones = torch.ones(4, mask.shape[0], dtype=torch.float64)
    assert (x.grad is not None) == ("x" in needs) and (values.grad is not None) == (needs == "values")
    assert (b.grad is not None) == ("bias" in needs)
    if x.grad is not None:
        torch.testing.assert_close(x.grad, ones @ (w * mask))
    if values.grad is not None:
        torch.testing.assert_close(values.grad, _packed(ones.t() @ x, layout))
    if b.grad is not None:
        torch.testing.assert_close(b.grad, torch.full_like(b, 4.0))


GRADCHECK_CASES = {  # small shapes, so gradcheck (2 evaluations per input entry) stays cheap
    "1d": (random_tw_mask(16, 9, 4, 0.5, seed=5), 4, (3,)),
    "2d": (random_tw_mask(16, 9, 4, 0.5, col_density=0.6, seed=6), 4, (3,)),
    "n_not_multiple": (random_tw_mask(13, 7, 4, 0.5, col_density=0.8, seed=4), 4, (2, 2)),
    "k1": (random_tw_mask(9, 1, 4, 1.0, col_density=0.7, seed=3), 4, (3,)),
    "m0": (random_tw_mask(10, 6, 4, 0.5, col_density=0.8, seed=7), 4, (0,)),
    "batch": (random_tw_mask(10, 6, 4, 0.5, col_density=0.8, seed=8), 4, (2, 1, 2)),
    "empty_tile": (None, 4, (3,)),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
@pytest.mark.parametrize("bias", [True, False])
def test_tw_linear_gradcheck(case, bias):
    """float64 gradcheck of tw_linear wrt x, values and bias, and gradgradcheck
    (the backward operators are differentiable too)."""
    mask, tile, lead = GRADCHECK_CASES[case]
    layout = layout_with_empty_tile()[0] if mask is None else TileLayout.from_mask(mask, tile)
    n, k = layout.shape
    x = torch.randn(*lead, k, dtype=torch.float64, requires_grad=True)
    v = torch.randn(layout.num_values, dtype=torch.float64, requires_grad=True)
    inputs = (x, v) + ((torch.randn(n, dtype=torch.float64, requires_grad=True),) if bias else ())

    def fn(x, v, b=None):
        return ops.tw_linear(x, v, layout, b)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


# ---------------------------------------------------------------------------
# Property test
# ---------------------------------------------------------------------------
@settings(max_examples=150)
@given(n=st.integers(1, 40), k=st.integers(1, 24), tile=st.integers(1, 12), sparsity=st.floats(0.0, 0.95),
       col_share=st.sampled_from([0.0, 0.0, 0.5, 1.0]), lead=st.lists(st.integers(0, 5), min_size=0, max_size=3),
       dtype=st.sampled_from(FLOAT_DTYPES), x_kind=st.sampled_from(["contiguous", "transposed", "sliced"]),
       bias=st.booleans(), seed=st.integers(0, 2**16), device=st.sampled_from(devices()),
       kernel=st.sampled_from([None] + SUPPORTED_KERNELS))
def test_tw_linear_property(n, k, tile, sparsity, col_share, lead, dtype, x_kind, bias, seed, device, kernel):
    """Random shapes (N not a multiple of the tile, K=1, M=0, 0-3 batch dims),
    sparsity 0..0.95, 1-D and 2-D TW, every float dtype, strided x, bias or
    not: forward and backward match the float64 dense masked reference."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    mask = ops.tile_mask(w.abs(), tile, sparsity, col_share * sparsity)
    layout = TileLayout.from_mask(mask, tile).to(device)
    w = w.to(dtype)
    values = layout.pack(w.to(device)).requires_grad_(True)
    shape = (*lead, k)
    if x_kind == "transposed":  # last dim strided
        x = torch.randn(k, *lead, generator=g, dtype=torch.float64).movedim(0, -1)
    elif x_kind == "sliced":
        x = torch.randn(*lead, 2 * k, generator=g, dtype=torch.float64)[..., 1::2]
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = x.to(dtype=dtype, device=device).requires_grad_(True)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_(True) \
        if bias else None
    with cpu_kernel(kernel):
        y = ops.tw_linear(x, values, layout, b)
    ref = reference_tw_linear(x.detach().cpu(), w, mask, None if b is None else b.detach().cpu())
    assert y.shape == (*lead, n)
    assert_close_to_reference(y, ref, reduction_len=k)

    gy = torch.randn(*lead, n, generator=g, dtype=torch.float64).to(dtype)
    with cpu_kernel(kernel):
        (y * gy.to(device)).sum().backward()
    m = max(1, x.numel() // k)
    assert_close_to_reference(x.grad, gy.double() @ (w.double() * mask), reduction_len=n)
    gw = gy.double().reshape(-1, n).t() @ x.detach().cpu().double().reshape(-1, k)
    assert_close_to_reference(values.grad, _packed(gw, layout), reduction_len=m)
    if bias:
        assert_close_to_reference(b.grad, gy.double().reshape(-1, n).sum(0), reduction_len=m)


# ---------------------------------------------------------------------------
# CPU kernel choice and the inference cache of packed panels
# ---------------------------------------------------------------------------
def test_cpu_kernel_reports_the_choice():
    """cpu_kernel() names the kernel float32 runs on: the widest supported one
    by default, the one TILESPARSE_CPU_KERNEL names otherwise."""
    supported = list(_ops.cpu_kernels_supported())
    print(f"CPU kernels supported here: {supported}; default: {_ops.cpu_kernel()}")
    assert supported[-1] == "generic" and set(supported) <= set(CPU_KERNELS)
    with cpu_kernel(None):
        assert _ops.cpu_kernel() == supported[0]
    for name in supported:
        with cpu_kernel(name):
            assert _ops.cpu_kernel() == name


@pytest.mark.parametrize("kernel", CPU_KERNEL_PARAMS)
def test_each_cpu_kernel_matches_reference(kernel):
    """Every kernel this CPU supports, named explicitly, on a layout with 2-D
    tiles, several row blocks and a partial last tile: forward, grad_input and
    grad_values against the float64 reference."""
    mask = ops.tile_mask(torch.rand(150, 90, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                         32, 0.6, 0.2)
    layout = TileLayout.from_mask(mask, 32)
    w, x, b, layout, values = _operands(mask, layout, torch.float32, "cpu", (301,))
    gy = torch.randn(301, 150, dtype=torch.float32)
    with cpu_kernel(kernel):
        assert _ops.cpu_kernel() == kernel
        print(f"running CPU kernel {kernel}")
        y = ops.tw_linear(x, values, layout, b)
        gx = _ops.tw_linear_grad_input(gy, values, *_idx(layout), 90, layout.tile)
        gv = _ops.tw_linear_grad_values(gy, x, *_idx(layout), layout.tile, layout.num_values)
    assert_close_to_reference(y, reference_tw_linear(x, w, mask, b), reduction_len=90)
    assert_close_to_reference(gx, gy.double() @ (w.double() * mask), reduction_len=150)
    assert_close_to_reference(gv, _packed(gy.double().t() @ x.double(), layout), reduction_len=301)


def test_unsupported_or_unknown_cpu_kernel_is_an_error():
    """Naming a kernel the CPU lacks (or no kernel at all) raises, naming the
    variable; it never falls back silently."""
    mask, layout = _case("1d")
    _, x, b, layout, values = _operands(mask, layout, torch.float32, "cpu")
    with cpu_kernel("avx1024"), pytest.raises(ValueError, match="TILESPARSE_CPU_KERNEL"):
        ops.tw_linear(x, values, layout, b)
    missing = [k for k in CPU_KERNELS if k not in SUPPORTED_KERNELS]
    for name in missing:
        with cpu_kernel(name), pytest.raises(RuntimeError, match=f"TILESPARSE_CPU_KERNEL={name}.*avx2="):
            ops.tw_linear(x, values, layout, b)
    if not missing:
        print("every CPU kernel is supported here: the unsupported-kernel error is not exercised")


# the fused kernels, whose forward holds the panel cache
FUSED = [k for k in ("avx2", "avx512") if k in SUPPORTED_KERNELS]
fused_kernels = pytest.mark.parametrize("kernel", FUSED or [pytest.param(
    "avx2", marks=pytest.mark.skip(reason="no fused CPU kernel (avx2/avx512) supported by this CPU"))])


@contextlib.contextmanager
def _clean_panel_cache():
    _ops.cpu_panel_cache_clear()
    try:
        yield
    finally:
        _ops.cpu_panel_cache_clear()


@fused_kernels
def test_panel_cache_reuses_and_sees_in_place_updates(kernel):
    """Unchanged values are packed once more on their second use, then served
    from the cache; an in-place update (which bumps the version counter) is
    seen at once and replaces the stale entry."""
    mask, layout = _case("tile_mask_2d")
    w, x, b, layout, values = _operands(mask, layout, torch.float32, "cpu", (9,))
    with cpu_kernel(kernel), _clean_panel_cache(), torch.no_grad():
        ys = [ops.tw_linear(x, values, layout, b) for _ in range(3)]
        entries, _, hits, misses = _ops.cpu_panel_cache_stats()
        assert (entries, hits, misses) == (1, 1, 2)
        assert torch.equal(ys[0], ys[1]) and torch.equal(ys[0], ys[2])
        values.mul_(-2.0)
        for _ in range(2):
            y3 = ops.tw_linear(x, values, layout, b)
            assert_close_to_reference(y3, reference_tw_linear(x, -2.0 * w, mask, b), reduction_len=mask.shape[1])
        assert _ops.cpu_panel_cache_stats()[0] == 1  # the stale version was replaced, not kept
        values[3] = 100.0  # indexed in-place write
        ops.tw_linear(x, values, layout, b)
        y4 = ops.tw_linear(x, values, layout, b)
    wd = layout.unpack(values.detach()).double()
    assert_close_to_reference(y4, reference_tw_linear(x, wd, mask, b), reduction_len=mask.shape[1])


@pytest.mark.skipif(len(FUSED) < 2, reason="needs both fused CPU kernels (avx2 and avx512)")
def test_panel_cache_keeps_each_kernels_panels_apart():
    """The two kernels pack panels of different widths: switching kernels
    over the same unchanged values never serves the other kernel's panels."""
    mask, layout = _case("tile_mask_2d")
    w, x, b, layout, values = _operands(mask, layout, torch.float32, "cpu", (9,))
    ref = reference_tw_linear(x, w, mask, b)
    with _clean_panel_cache(), torch.no_grad():
        for _ in range(3):
            for kernel in FUSED:
                with cpu_kernel(kernel):
                    assert_close_to_reference(ops.tw_linear(x, values, layout, b), ref, reduction_len=mask.shape[1])
        assert _ops.cpu_panel_cache_stats()[0] == 1  # an entry per buffer: the other kernel's replaced it


@fused_kernels
def test_panel_cache_never_serves_a_freed_buffer(kernel):
    """New values in a freed buffer's memory (same address, version 0) are
    packed afresh, and a different layout over the same values is too."""
    mask, layout = _case("1d")
    with cpu_kernel(kernel), _clean_panel_cache(), torch.no_grad():
        for seed in range(4):
            w, x, b, _, values = _operands(mask, layout, torch.float32, "cpu", (7,), seed=seed)
            for _ in range(3):
                y = ops.tw_linear(x, values, layout, b)
                assert_close_to_reference(y, reference_tw_linear(x, w, mask, b), reduction_len=mask.shape[1])
            del values
        mask2 = mask.flip(1)  # other rows kept, same number of values
        layout2 = TileLayout.from_mask(mask2, layout.tile)
        w, x, b, _, values = _operands(mask, layout, torch.float32, "cpu", (7,), seed=9)
        ops.tw_linear(x, values, layout, b)
        ops.tw_linear(x, values, layout, b)
        ops.tw_linear(x, values, layout2, b)
        y = ops.tw_linear(x, values, layout2, b)
        wd = layout2.unpack(values).double()  # flip keeps each tile's count, so the slots match
        assert_close_to_reference(y, reference_tw_linear(x, wd, mask2, b), reduction_len=mask.shape[1])


@fused_kernels
def test_panel_cache_is_bounded_and_skips_training(kernel, monkeypatch):
    """Values updated between every call (training) are never stored; the
    cache holds at most TILESPARSE_CPU_PANEL_CACHE_MB, least recently used
    evicted; a bad budget is a ValueError naming the variable."""
    mask, layout = _case("tile_mask_2d")
    with cpu_kernel(kernel), _clean_panel_cache():
        w, x, b, layout, values = _operands(mask, layout, torch.float32, "cpu", (5,))
        values.requires_grad_(True)
        opt = torch.optim.SGD([values], lr=0.1)
        for _ in range(4):
            ops.tw_linear(x, values, layout, b).sum().backward()
            opt.step()
        assert _ops.cpu_panel_cache_stats()[0] == 0
        with torch.no_grad():  # one entry's size (the kernels' panels differ in width)
            for _ in range(2):
                ops.tw_linear(x, values.detach(), layout, b)
        entry_bytes = _ops.cpu_panel_cache_stats()[1]
        assert entry_bytes > 0
        _ops.cpu_panel_cache_clear()
        budget_mb = 3.5 * entry_bytes / 2 ** 20  # room for 3 of these 6 layers
        monkeypatch.setenv("TILESPARSE_CPU_PANEL_CACHE_MB", repr(budget_mb))
        with torch.no_grad():
            layers = [values.detach().clone() for _ in range(6)]
            for _ in range(3):
                for v in layers:
                    ops.tw_linear(x, v, layout, b)
                    entries, nbytes, _, _ = _ops.cpu_panel_cache_stats()
                    assert nbytes <= budget_mb * 2 ** 20
        assert 1 <= entries < len(layers)
        monkeypatch.setenv("TILESPARSE_CPU_PANEL_CACHE_MB", "lots")
        with torch.no_grad(), pytest.raises(ValueError, match="TILESPARSE_CPU_PANEL_CACHE_MB"):
            ops.tw_linear(x, values, layout, b)
