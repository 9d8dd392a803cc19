// CPU kernels of the TEW residue (csr_linear and its two backward operators):
// argument checks, the feature-major transposes, then core/csr_residue.h
// under at::parallel_for. float32/float64 run natively; float16/bfloat16 are
// computed in float32 and rounded once at the end. Float32 compute runs the
// AVX2 kernels (core/csr_residue_avx2.h) whenever the CPU kernel choice
// (cpu_kernel.h) is avx2 or avx512, the generic ones otherwise.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../core/csr_residue.h"
#include "../core/csr_residue_avx2.h"
#include "checks.h"
#include "cpu_kernel.h"

namespace tilesparse {
namespace {

// The AVX2 kernels serve float32 compute (float16/bfloat16 inputs included)
// wherever a fused CPU kernel family is selected.
bool use_avx2(at::ScalarType compute) {
  const CpuKernel k = selected_kernel();  // validates TILESPARSE_CPU_KERNEL for every dtype
  return compute == at::kFloat && k != CpuKernel::kGeneric;
}

// row_ptr/cols checked (int32, 1-D, on `ref`'s device, sizes) and validated;
// the view points into the returned contiguous tensors.
struct CsrArgs {
  at::Tensor row_ptr, cols;
  core::CsrView view;
};

CsrArgs csr_args(const at::Tensor& row_ptr, const at::Tensor& cols, int64_t rows, int64_t num_cols, int64_t nnz,
                 const at::Tensor& ref) {
  TS_CHECK_DTYPE(row_ptr, at::kInt);
  TS_CHECK_DTYPE(cols, at::kInt);
  TS_CHECK_DIM(row_ptr, 1);
  TS_CHECK_DIM(cols, 1);
  TS_CHECK_SAME_DEVICE(row_ptr, ref);
  TS_CHECK_SAME_DEVICE(cols, ref);
  TORCH_CHECK_VALUE(rows >= 0 && num_cols >= 0, "out_features and in_features must be >= 0, got ", rows, " and ",
                    num_cols);
  TORCH_CHECK_VALUE(row_ptr.numel() == rows + 1, "row_ptr must have out_features + 1 = ", rows + 1,
                    " entries, got ", row_ptr.numel());
  TORCH_CHECK_VALUE(cols.numel() == nnz, "cols must have one entry per value (", nnz, "), got ", cols.numel());
  CsrArgs a{row_ptr.contiguous(), cols.contiguous(), {}};
  a.view = core::CsrView{a.row_ptr.data_ptr<int32_t>(), a.cols.data_ptr<int32_t>(), rows, num_cols, nnz};
  const std::string err = core::validate_csr(a.view);
  TORCH_CHECK_VALUE(err.empty(), "invalid CSR residue: ", err);
  return a;
}

void check_values(const at::Tensor& values, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() >= 1, name, " must have at least 1 dimension");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), name, " must be a floating-point tensor, got ",
                   x.scalar_type());
  TS_CHECK_DIM(values, 1);
  TS_CHECK_SAME_DEVICE(values, x);
  TORCH_CHECK_TYPE(values.scalar_type() == x.scalar_type(), "values must have the dtype of ", name, " (",
                   x.scalar_type(), "), got ", values.scalar_type());
}

// The dtype the core runs in.
at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// [..., F] -> feature-major [F, M] in the compute dtype (by the AVX2 register
// transposes when `avx2`: torch's strided copy costs as much as a kernel).
at::Tensor feature_major(const at::Tensor& a, bool avx2) {
  at::Tensor m = a.reshape({leading_rows(a), a.size(-1)}).to(compute_type(a.scalar_type()));
  if (!avx2) return m.t().contiguous();
  m = m.contiguous();
  at::Tensor out = at::empty({m.size(1), m.size(0)}, m.options());
  core::avx2::feature_major(m.data_ptr<float>(), m.size(0), m.size(1), out.data_ptr<float>(), aten_parallel_for());
  return out;
}

at::Tensor csr_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                          const at::Tensor& cols, int64_t out_features) {
  check_values(values, x, "x");
  const int64_t K = x.size(-1);
  const CsrArgs r = csr_args(row_ptr, cols, out_features, K, values.numel(), x);
  const bool avx2 = use_avx2(compute_type(x.scalar_type()));
  const at::Tensor xt = feature_major(x, avx2);
  const at::Tensor v = values.to(compute_type(values.scalar_type())).contiguous();
  const int64_t M = xt.size(1);
  at::Tensor y = at::empty({M, out_features}, xt.options());
  if (avx2) {
    core::avx2::csr_forward(xt.data_ptr<float>(), M, v.data_ptr<float>(), r.view, y.data_ptr<float>(),
                            aten_parallel_for());
  } else {
    AT_DISPATCH_FLOATING_TYPES(xt.scalar_type(), "csr_linear", [&] {
      core::csr_forward(xt.data_ptr<scalar_t>(), M, v.data_ptr<scalar_t>(), r.view, y.data_ptr<scalar_t>(),
                        AtenParallelFor{});
    });
  }
  return y.to(x.scalar_type()).view(with_last(x.sizes(), out_features));
}

at::Tensor csr_linear_grad_input_cpu(const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& row_ptr,
                                     const at::Tensor& cols, int64_t in_features) {
  check_values(values, grad_out, "grad_out");
  const CsrArgs r = csr_args(row_ptr, cols, grad_out.size(-1), in_features, values.numel(), grad_out);
  const bool avx2 = use_avx2(compute_type(grad_out.scalar_type()));
  const at::Tensor gt = feature_major(grad_out, avx2);
  const at::Tensor v = values.to(compute_type(values.scalar_type())).contiguous();
  const int64_t M = gt.size(1);
  at::Tensor gx = at::empty({M, in_features}, gt.options());
  if (avx2) {
    core::avx2::csr_grad_input(gt.data_ptr<float>(), M, v.data_ptr<float>(), r.view, gx.data_ptr<float>(),
                               aten_parallel_for());
  } else {
    AT_DISPATCH_FLOATING_TYPES(gt.scalar_type(), "csr_linear_grad_input", [&] {
      core::csr_grad_input(gt.data_ptr<scalar_t>(), M, v.data_ptr<scalar_t>(), r.view, gx.data_ptr<scalar_t>(),
                           AtenParallelFor{});
    });
  }
  return gx.to(grad_out.scalar_type()).view(with_last(grad_out.sizes(), in_features));
}

at::Tensor csr_linear_grad_values_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& row_ptr,
                                      const at::Tensor& cols) {
  check_grad_values_inputs(grad_out, x);
  const CsrArgs r = csr_args(row_ptr, cols, grad_out.size(-1), x.size(-1), cols.numel(), grad_out);
  const bool avx2 = use_avx2(compute_type(grad_out.scalar_type()));
  const at::Tensor gt = feature_major(grad_out, avx2);
  const at::Tensor xt = feature_major(x, avx2);
  const int64_t M = gt.size(1);
  at::Tensor dv = at::empty({cols.numel()}, gt.options());
  if (avx2) {
    core::avx2::csr_grad_values_t(gt.data_ptr<float>(), xt.data_ptr<float>(), M, r.view, dv.data_ptr<float>(),
                                  aten_parallel_for());
  } else {
    AT_DISPATCH_FLOATING_TYPES(gt.scalar_type(), "csr_linear_grad_values", [&] {
      core::csr_grad_values_t(gt.data_ptr<scalar_t>(), xt.data_ptr<scalar_t>(), M, r.view, dv.data_ptr<scalar_t>(),
                              AtenParallelFor{});
    });
  }
  return dv.to(grad_out.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(tilesparse, CPU, m) {
  m.impl("csr_linear", &csr_linear_cpu);
  m.impl("csr_linear_grad_input", &csr_linear_grad_input_cpu);
  m.impl("csr_linear_grad_values", &csr_linear_grad_values_cpu);
}

}  // namespace tilesparse
