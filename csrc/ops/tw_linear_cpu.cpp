// CPU kernels of tw_linear and its two backward operators: argument checks,
// then core/tw_linear_cpu.h with torch's BLAS matmul and at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <functional>
#include <optional>
#include <string>

#include "../core/tw_linear_avx512.h"
#include "../core/tw_linear_cpu.h"
#include "checks.h"

namespace tilesparse {
namespace {

// core Gemm on top of at::mm_out / addmm_: strided views over the raw
// buffers, so tiles write straight into their output columns without copies.
// Called inside at::parallel_for, where ATen and MKL run single-threaded.
template <typename T>
struct AtenGemm {
  at::TensorOptions opts;
  void operator()(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
                  const T* b, int64_t ldb, T beta, T* c, int64_t ldc) const {
    at::Tensor A = trans_a ? at::from_blob(const_cast<T*>(a), {k, m}, {lda, 1}, opts).t()
                           : at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
    at::Tensor B = trans_b ? at::from_blob(const_cast<T*>(b), {n, k}, {ldb, 1}, opts).t()
                           : at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opts);
    at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
    if (beta == T(0)) {
      at::mm_out(C, A, B);
    } else {
      C.addmm_(A, B, static_cast<double>(beta), 1.0);
    }
  }
};

struct ParallelFor {
  template <typename F>
  void operator()(int64_t begin, int64_t end, F&& fn) const {
    at::parallel_for(begin, end, /*grain_size=*/1, fn);
  }
};

const core::avx512::ParallelFn& aten_parallel_for() {
  static const core::avx512::ParallelFn fn = [](int64_t b, int64_t e, const std::function<void(int64_t, int64_t)>& f) {
    at::parallel_for(b, e, 1, f);
  };
  return fn;
}

// The fused AVX-512 kernels serve float32 on CPUs that have AVX-512;
// TILESPARSE_CPU_KERNEL=generic forces the BLAS-backed path (tests, benchmarks).
bool use_avx512(at::ScalarType dtype) {
  if (dtype != at::kFloat || !core::avx512::available()) return false;
  const char* choice = std::getenv("TILESPARSE_CPU_KERNEL");
  return choice == nullptr || std::string(choice) != "generic";
}

// A layout that keeps every weight without padding is the identity (cols =
// arange(N), every tile keeps rows = arange(K)), so its values are W itself,
// row-major [N, K]: run it as one dense GEMM. (Slots alone can reach N * K
// with padding, hence both counts.)
bool keeps_everything(const LayoutArgs& l, int64_t N, int64_t K) {
  return N > 0 && K > 0 && core::num_values(l.view) == N * K && core::num_kept(l.view) == N * K;
}

void check_values(const at::Tensor& values, const at::Tensor& ref, const LayoutArgs& l) {
  TS_CHECK_DIM(values, 1);
  TS_CHECK_SAME_DEVICE(values, ref);
  TORCH_CHECK_TYPE(values.scalar_type() == ref.scalar_type(), "values must have the dtype of ", "the input (",
                   ref.scalar_type(), "), got ", values.scalar_type());
  TORCH_CHECK_VALUE(values.numel() == core::num_values(l.view), "values must have ", core::num_values(l.view),
                    " elements for this layout, got ", values.numel());
}

at::Tensor tw_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& cols,
                         const at::Tensor& row_offsets, const at::Tensor& rows, const std::optional<at::Tensor>& bias,
                         int64_t out_features, int64_t tile) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dimension (in_features), got a scalar");
  TS_CHECK_FLOATING(x);
  const int64_t K = x.size(-1), N = out_features;
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, N, K, x.device(), true);
  check_values(values, x, l);
  check_bias(bias, x, N);
  const int64_t M = leading_rows(x);
  const at::Tensor x2 = x.reshape({M, K}).contiguous();
  // Allocated in its final shape, so the op returns a fresh tensor, not a view.
  at::Tensor out = at::empty(with_last(x.sizes(), N), x.options());
  at::Tensor y = out.view({M, N});
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  if (K == 0 || l.view.num_cols == 0) {
    y.copy_(bias ? b.unsqueeze(0).expand({M, N}) : at::zeros({M, N}, x.options()));
  } else if (keeps_everything(l, N, K)) {
    const at::Tensor w = values.view({N, K});
    if (bias) at::addmm_out(y, b, x2, w.t());
    else at::mm_out(y, x2, w.t());
  } else if (M > 0 && use_avx512(x.scalar_type())) {
    core::avx512::forward(l.view, x2.data_ptr<float>(), M, K, values.contiguous().data_ptr<float>(),
                          bias ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(), N, at::get_num_threads(),
                          aten_parallel_for());
  } else if (M > 0) {
    const at::Tensor v = values.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tw_linear_cpu", [&] {
      core::tw_linear_forward<scalar_t>(l.view, x2.data_ptr<scalar_t>(), M, K, v.data_ptr<scalar_t>(),
                                        bias ? b.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), N,
                                        at::get_num_threads(), AtenGemm<scalar_t>{x.options()}, ParallelFor{});
    });
  }
  return out;
}

at::Tensor tw_linear_grad_input_cpu(const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& cols,
                                    const at::Tensor& row_offsets, const at::Tensor& rows, int64_t in_features,
                                    int64_t tile) {
  TORCH_CHECK_VALUE(grad_out.dim() >= 1, "grad_out must have at least 1 dimension, got a scalar");
  TS_CHECK_FLOATING(grad_out);
  const int64_t N = grad_out.size(-1), K = in_features;
  TORCH_CHECK_VALUE(cols.numel() <= N, "grad_out must have at least as many features (last dimension, got ", N,
                    ") as the layout keeps output features (", cols.numel(), ")");
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, N, K, grad_out.device(), true);
  check_values(values, grad_out, l);
  const int64_t M = leading_rows(grad_out);
  const at::Tensor gy = grad_out.reshape({M, N}).contiguous();
  at::Tensor out = at::empty(with_last(grad_out.sizes(), K), grad_out.options());
  at::Tensor gx = out.view({M, K});
  if (N == 0 || l.view.num_cols == 0) {
    gx.zero_();
  } else if (keeps_everything(l, N, K)) {
    at::mm_out(gx, gy, values.view({N, K}));
  } else if (M > 0 && K > 0 && use_avx512(gy.scalar_type())) {
    core::avx512::grad_input(l.view, gy.data_ptr<float>(), M, N, values.contiguous().data_ptr<float>(),
                             gx.data_ptr<float>(), K, at::get_num_threads(), aten_parallel_for());
  } else if (M > 0 && K > 0) {
    const at::Tensor v = values.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "tw_linear_grad_input_cpu", [&] {
      core::tw_linear_grad_input<scalar_t>(l.view, gy.data_ptr<scalar_t>(), M, N, v.data_ptr<scalar_t>(),
                                           gx.data_ptr<scalar_t>(), K, at::get_num_threads(),
                                           AtenGemm<scalar_t>{gy.options()}, ParallelFor{});
    });
  }
  return out;
}

at::Tensor tw_linear_grad_values_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& cols,
                                     const at::Tensor& row_offsets, const at::Tensor& rows, int64_t tile,
                                     int64_t num_values) {
  check_grad_values_inputs(grad_out, x);
  const int64_t N = grad_out.size(-1), K = x.size(-1);
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, N, K, grad_out.device(), true);
  TORCH_CHECK_VALUE(num_values == core::num_values(l.view), "num_values must be ", core::num_values(l.view),
                    " for this layout, got ", num_values);
  const int64_t M = leading_rows(grad_out);
  const at::Tensor gy = grad_out.reshape({M, N}).contiguous();
  const at::Tensor x2 = x.reshape({M, K}).contiguous();
  at::Tensor gv = at::empty({num_values}, grad_out.options());
  if (num_values > 0 && keeps_everything(l, N, K)) {
    at::Tensor gw = gv.view({N, K});
    at::mm_out(gw, gy.t(), x2);
  } else if (num_values > 0 && use_avx512(gy.scalar_type())) {
    core::avx512::grad_values(l.view, gy.data_ptr<float>(), x2.data_ptr<float>(), M, N, K, gv.data_ptr<float>(),
                              aten_parallel_for());
  } else if (num_values > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "tw_linear_grad_values_cpu", [&] {
      core::tw_linear_grad_values<scalar_t>(l.view, gy.data_ptr<scalar_t>(), x2.data_ptr<scalar_t>(), M, N, K,
                                            gv.data_ptr<scalar_t>(), at::get_num_threads(),
                                            AtenGemm<scalar_t>{gy.options()}, ParallelFor{});
    });
  }
  return gv;
}

}  // namespace

TORCH_LIBRARY_IMPL(tilesparse, CPU, m) {
  m.impl("tw_linear", &tw_linear_cpu);
  m.impl("tw_linear_grad_input", &tw_linear_grad_input_cpu);
  m.impl("tw_linear_grad_values", &tw_linear_grad_values_cpu);
}

}  // namespace tilesparse
