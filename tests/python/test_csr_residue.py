"""The TEW residue operators (csr_linear and its backward operators) against a
dense float64 reference, their gradients (gradcheck, gradgradcheck), their
argument errors, and the TEW modules that run on them."""
import math

import pytest
import torch
from torch import nn

import tilesparse
from tilesparse import ops
from tilesparse.testing import (FLOAT_DTYPES, assert_close_to_reference, cpu_kernel, cpu_kernel_params,
                                device_params, random_csr, reference_csr_dense)

T = torch.ops.tilesparse
DEVICES = device_params()

# rows/cols not multiples of the kernels' 64-row and 64-sample blocks; M = 1, 63, 130 samples
SHAPES = [(13, 10, 0.3, (5,)), (130, 70, 0.05, (63,)), (70, 200, 0.02, (2, 65)), (9, 7, 0.0, (4,)),
          (20, 12, 0.5, (0,)), (1, 1, 1.0, (1,)), (6, 0, 0.5, (3,)), (0, 5, 0.5, (3,))]  # no features in / out


def _case(rows, cols, density, lead, dtype, device, seed=0):
    row_ptr, col_idx, _ = random_csr(rows, cols, density, seed=seed, device=device, empty_rows=max(0, min(2, rows - 1)))
    g = torch.Generator().manual_seed(seed + 1)
    values = torch.randn(col_idx.numel(), generator=g, dtype=torch.float64).to(device, dtype)
    x = torch.randn(*lead, cols, generator=g, dtype=torch.float64).to(device, dtype)
    gy = torch.randn(*lead, rows, generator=g, dtype=torch.float64).to(device, dtype)
    return row_ptr, col_idx, values, x, gy


# the AVX2 kernels' edges too: M at and around the 8-lane vectors and 64-sample blocks
KERNEL_SHAPES = SHAPES + [(17, 33, 0.2, (72,)), (40, 24, 0.3, (8, 8)), (40, 24, 0.3, (9,)), (33, 31, 0.1, (133,))]


def _check_against_dense(dtype, shape, device="cpu"):
    rows, cols, density, lead = shape
    row_ptr, col_idx, values, x, gy = _case(rows, cols, density, lead, dtype, device)
    R = reference_csr_dense(row_ptr, col_idx, values, (rows, cols))
    xd, gd = x.double().cpu(), gy.double().cpu()
    y = T.csr_linear(x, values, row_ptr, col_idx, rows)
    assert y.shape == (*lead, rows) and y.dtype == dtype and y.device.type == device
    assert_close_to_reference(y, xd @ R.T, cols)
    gx = T.csr_linear_grad_input(gy, values, row_ptr, col_idx, cols)
    assert gx.shape == (*lead, cols) and gx.dtype == dtype
    assert_close_to_reference(gx, gd @ R, rows)
    gv = T.csr_linear_grad_values(gy, x, row_ptr, col_idx)
    m = math.prod(lead)
    full = gd.reshape(m, rows).T @ xd.reshape(m, cols)  # dL/dR dense; the values' gradient is its entries
    entry_rows = torch.repeat_interleave(torch.arange(rows), (row_ptr[1:] - row_ptr[:-1]).long().cpu())
    assert gv.shape == (col_idx.numel(),) and gv.dtype == dtype
    assert_close_to_reference(gv, full[entry_rows, col_idx.long().cpu()], max(1, m))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_dense_reference(device, dtype, shape):
    _check_against_dense(dtype, shape, device)


@pytest.mark.parametrize("kernel", cpu_kernel_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", KERNEL_SHAPES)
def test_every_cpu_kernel_matches_dense_reference(kernel, dtype, shape):
    """Each CPU kernel family named explicitly (avx2 and avx512 run the AVX2
    residue kernels, generic the portable ones), float32 and bfloat16 (computed
    in float32), against the float64 reference."""
    with cpu_kernel(kernel):
        assert T.cpu_kernel() == kernel
        _check_against_dense(dtype, shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_gather_formulas_match_cpu_kernels(shape):
    """The plain-torch kernels registered for CUDA (ops._csr_*_gather), run on the CPU, agree with the C++
    kernels, so the formula a CUDA device runs is tested even where no GPU is present."""
    rows, cols, density, lead = shape
    row_ptr, col_idx, values, x, gy = _case(rows, cols, density, lead, torch.float64, "cpu", seed=5)
    torch.testing.assert_close(ops._csr_linear_gather(x, values, row_ptr, col_idx, rows),
                               T.csr_linear(x, values, row_ptr, col_idx, rows))
    torch.testing.assert_close(ops._csr_grad_input_gather(gy, values, row_ptr, col_idx, cols),
                               T.csr_linear_grad_input(gy, values, row_ptr, col_idx, cols))
    torch.testing.assert_close(ops._csr_grad_values_gather(gy, x, row_ptr, col_idx),
                               T.csr_linear_grad_values(gy, x, row_ptr, col_idx))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    row_ptr, col_idx, values, x, _ = _case(11, 9, 0.3, (3, 2), torch.float64, device, seed=2)
    x.requires_grad_()
    values.requires_grad_()
    f = lambda x, v: T.csr_linear(x, v, row_ptr, col_idx, 11)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, values))
    assert torch.autograd.gradgradcheck(f, (x, values))


def test_non_contiguous_input():
    row_ptr, col_idx, values, x, _ = _case(30, 17, 0.2, (8,), torch.float32, "cpu", seed=4)
    wide = torch.randn(8, 40)
    xs = wide[:, 3:20]  # strided rows
    assert not xs.is_contiguous()
    torch.testing.assert_close(T.csr_linear(xs, values, row_ptr, col_idx, 30),
                               T.csr_linear(xs.contiguous(), values, row_ptr, col_idx, 30))
    xt = torch.randn(17, 8).t()  # transposed
    torch.testing.assert_close(T.csr_linear(xt, values, row_ptr, col_idx, 30),
                               T.csr_linear(xt.contiguous(), values, row_ptr, col_idx, 30))


def test_errors_name_the_argument():
    row_ptr, col_idx, values, x, _ = _case(6, 5, 0.5, (3,), torch.float32, "cpu", seed=1)
    with pytest.raises(ValueError, match="row_ptr must have out_features \\+ 1"):
        T.csr_linear(x, values, row_ptr, col_idx, 7)
    with pytest.raises(ValueError, match="cols must have one entry per value"):
        T.csr_linear(x, values[:-1], row_ptr, col_idx, 6)
    bad = col_idx.clone()
    bad[0] = 5
    with pytest.raises(ValueError, match=r"cols\[0\] = 5 is out of range \[0, 5\)"):
        T.csr_linear(x, values, row_ptr, bad, 6)
    bad_ptr = row_ptr.clone()
    bad_ptr[3], bad_ptr[4] = bad_ptr[4] + 1, bad_ptr[4]
    with pytest.raises(ValueError, match="row_ptr must be non-decreasing"):
        T.csr_linear(x, values, bad_ptr, col_idx, 6)
    with pytest.raises(TypeError, match="row_ptr must have dtype Int"):
        T.csr_linear(x, values, row_ptr.long(), col_idx, 6)
    with pytest.raises(TypeError, match="values must have the dtype of x"):
        T.csr_linear(x, values.double(), row_ptr, col_idx, 6)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        T.csr_linear(x.int(), values, row_ptr, col_idx, 6)


def _tew_linear(k=70, n=150, seed=0):
    torch.manual_seed(seed)
    return tilesparse.sparsify(nn.Sequential(nn.Linear(k, n)), 0.5, 32, "tew", delta=0.05, progress=False)[0]


@pytest.mark.parametrize("finalized", [False, True])
def test_tew_module_matches_its_dense_weight(finalized):
    """A TEW Linear (tile GEMM + CSR residue) equals F.linear with its effective dense weight, forward and
    backward, masked and finalized."""
    mod = _tew_linear()
    assert mod.has_residue and mod.residue_index.shape[1] > 0
    if finalized:
        mod.finalize()
    x = torch.randn(2, 33, 70, requires_grad=True)
    y = mod(x)
    w = mod.dense_weight().detach()
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, mod.bias), atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    x2 = x.detach().requires_grad_()
    torch.nn.functional.linear(x2, w, mod.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-4)


def test_tew_load_rejects_an_unsorted_residue_index():
    mod = _tew_linear().finalize()
    sd = mod.state_dict()
    assert sd["residue_index"].shape[1] >= 2
    perm = torch.arange(sd["residue_index"].shape[1]).flip(0)
    sd["residue_index"], sd["residue_values"] = sd["residue_index"][:, perm], sd["residue_values"][perm]
    fresh = _tew_linear().finalize()
    with pytest.raises(RuntimeError, match="residue_index: entries must be sorted by \\(group, row, col\\)"):
        fresh.load_state_dict(sd)
