// CUDA operator tw_linear (forward): argument checks as on the CPU, then the
// torch-free plan of tw_fwd_launch.cuh on the current stream. fp16/bf16:
// tensor cores (v2: x once per M-block; v1 where v2 does not apply);
// fp32/fp64: SIMT (fp32 arithmetic like cuBLAS without TF32).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>

#include "checks_cuda.cuh"
#include "tw_fwd_launch.cuh"

namespace tilesparse::cuda {
namespace {

template <typename T>
void forward(const at::Tensor& x2, int64_t ldx, const at::Tensor& values, const at::Tensor* bias, at::Tensor& y,
             const LayoutArgs& l, const LayoutInfo& info, cudaStream_t stream) {
  FwdArgs<T> a;
  a.x = reinterpret_cast<const T*>(x2.data_ptr());
  a.ldx = ldx;
  a.m = x2.size(0);
  a.k = x2.size(1);
  a.values = reinterpret_cast<const T*>(values.data_ptr());
  a.nv = values.numel();
  a.bias = bias != nullptr ? reinterpret_cast<const T*>(bias->data_ptr()) : nullptr;
  a.y = reinterpret_cast<T*>(y.data_ptr());
  a.ldy = y.size(1);
  a.n = y.size(1);
  a.layout = dev_layout(l);
  a.x_vec16 = vec16_ok(a.x, ldx);
  a.v_vec16 = vec16_ok(a.values, 0);
  a.v_vec8 = reinterpret_cast<uintptr_t>(a.values) % 8 == 0;
  a.y_vec16 = vec16_ok(a.y, a.ldy);
  const bool half = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
  const FwdShape shape{a.m, a.k, a.n, l.view.tile, l.view.num_tiles, l.cols.numel(), half, a.x_vec16};
  const FwdPlan plan = plan_fwd(shape, device_caps());
  // the chunk bounds depend on the layout only: cached with the validated layout
  at::Tensor bounds = info.fwd_bounds;
  const bool ready = bounds.defined() && bounds.numel() == plan.bounds_count && plan.bounds_count > 0;
  if (!ready) bounds = at::empty({std::max<int64_t>(plan.bounds_count, 1)}, l.cols.options());
  // one workspace allocation (caching allocator) for the partials and the covered flags
  const int64_t bytes = plan.ws_floats * 4 + plan.covered_bytes;
  at::Tensor ws = at::empty({std::max<int64_t>(bytes, 1)}, y.options().dtype(at::kByte));
  uint8_t* base = ws.data_ptr<uint8_t>();
  const FwdWorkspace w{bounds.data_ptr<int32_t>(), reinterpret_cast<float*>(base), base + plan.ws_floats * 4, ready};
  run_fwd<T>(plan, a, w, CudaLaunch{stream});
  if (!ready && plan.bounds_count > 0 && info.known) {
    // once per layout (like its validation): a later call on another stream
    // must not read the bounds before this stream has written them
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
    cache_fwd_bounds(l, a.n, a.k, bounds);
  }
}

at::Tensor tw_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& cols,
                          const at::Tensor& row_offsets, const at::Tensor& rows, const std::optional<at::Tensor>& bias,
                          int64_t out_features, int64_t tile) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dimension (in_features), got a scalar");
  TS_CHECK_FLOATING(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = x.size(-1), N = out_features;
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, N, K, x.device(), false);
  const LayoutInfo info = check_layout_cuda(l, N, K);
  check_values_cuda(values, x, info);
  check_bias(bias, x, N);
  const int64_t M = leading_rows(x);
  // Allocated in its final shape, so the op returns a fresh tensor, not a view.
  at::Tensor out = at::empty(with_last(x.sizes(), N), x.options());
  at::Tensor y = out.view({M, N});
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  const at::Tensor* bp = bias ? &b : nullptr;
  if (K == 0 || l.cols.numel() == 0) {
    if (bias) y.copy_(b.unsqueeze(0).expand({M, N}));
    else y.zero_();
  } else if (keeps_everything(info, N, K)) {  // the layout is the dense weight: cuBLAS
    const at::Tensor w = values.contiguous().view({N, K});
    const at::Tensor x2 = x.reshape({M, K});
    if (bias) at::addmm_out(y, b, x2, w.t());
    else at::mm_out(y, x2, w.t());
  } else if (M > 0 && N > 0) {
    int64_t ldx = K;
    const at::Tensor x2 = rows_view(x, M, K, &ldx);
    const at::Tensor v = values.contiguous();
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    switch (x.scalar_type()) {
      case at::kHalf: forward<__half>(x2, ldx, v, bp, y, l, info, stream); break;
      case at::kBFloat16: forward<__nv_bfloat16>(x2, ldx, v, bp, y, l, info, stream); break;
      case at::kFloat: forward<float>(x2, ldx, v, bp, y, l, info, stream); break;
      case at::kDouble: forward<double>(x2, ldx, v, bp, y, l, info, stream); break;
      default:
        TORCH_CHECK_TYPE(false, "tw_linear on CUDA supports float16, bfloat16, float32 and float64, got ",
                         x.scalar_type());
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tilesparse, CUDA, m) { m.impl("tw_linear", &tw_linear_cuda); }

}  // namespace tilesparse::cuda
