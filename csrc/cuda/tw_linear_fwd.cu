// CUDA operator tw_linear (forward): argument checks as on the CPU, then the
// torch-free plan of tw_fwd_launch.cuh on the current stream. fp16/bf16:
// tensor cores (sm90: TMA + wgmma on compute capability 9.x; v2: x once per
// M-block; v1 where v2 does not apply); fp32/fp64: SIMT (fp32 arithmetic
// like cuBLAS without TF32). TILESPARSE_CUDA_FWD_KERNEL=auto|sm90|sm90a|v2|v1
// (read on every call) forces a kernel where it applies.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <type_traits>
#include <vector>

#include "checks_cuda.cuh"
#include "sm90_layout_cache.cuh"
#include "tw_fwd_launch.cuh"

namespace tilesparse::cuda {
namespace {

// TILESPARSE_CUDA_FWD_KERNEL=auto|sm90|sm90a|v2|v1 (read on every call): run
// that kernel family where it applies (sm90 -> v2 -> v1 fall back in that
// order; sm90: design U on unit-16 layouts, else design A; sm90a: design A
// only), for A/B measurements (scripts/gpu_check.sh); unset or "auto": the
// plan's choice.
const FwdKernel* forced_fwd_kernel() {
  static const FwdKernel sm90 = FwdKernel::kSm90U, sm90a = FwdKernel::kSm90, v2 = FwdKernel::kV2Small,
                         v1 = FwdKernel::kMmaV1;
  const char* e = std::getenv("TILESPARSE_CUDA_FWD_KERNEL");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "auto") == 0) return nullptr;
  if (std::strcmp(e, "sm90") == 0) return &sm90;
  if (std::strcmp(e, "sm90a") == 0) return &sm90a;
  if (std::strcmp(e, "v2") == 0) return &v2;  // kV2Small: the plan takes the 128-row v2 for M > 64
  if (std::strcmp(e, "v1") == 0) return &v1;
  TORCH_CHECK_VALUE(false, "TILESPARSE_CUDA_FWD_KERNEL must be auto, sm90, sm90a, v2 or v1, got '", e, "'");
}

// Clusters of `c` CTAs of the sm90 forward resident at once on the current
// device (both instantiations need one SM each: > 114 KB of shared memory).
template <int C>
int query_sm90_clusters() {
  return max_active_clusters(tw_fwd_sm90_kernel<__nv_bfloat16, 128, C>, C, sm90_fwd::kThreads, fwd_sm90_smem_bytes<128>());
}

void set_sm90_clusters(DeviceCaps& caps) {
  set_resident_clusters(caps, "tw_fwd_sm90", [] {
    return std::array<int, 3>{query_sm90_clusters<1>(), query_sm90_clusters<2>(), query_sm90_clusters<4>()};
  });
}

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
  constexpr bool half = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
  DeviceCaps caps = device_caps();
  FwdShape shape{a.m, a.k, a.n, l.view.tile, l.view.num_tiles, l.cols.numel(), half, a.x_vec16};
  shape.v_vec16 = a.v_vec16;

  // sm90: the layout's host side (cached with it); held for the call
  Sm90LayoutCache* c = kSm90aBuilt && half && caps.cc_major == 9 && info.known ? info.sm90.get() : nullptr;
  std::unique_lock<std::mutex> lock;
  if (c != nullptr) {
    set_sm90_clusters(caps);
    lock = std::unique_lock<std::mutex>(c->mutex);
    if (!c->built) build_sm90_layout(l, *c);
    shape.sm90_layout = c->slots_aligned;
    shape.num_slices = c->slices.numel();
    shape.sm90_unit16 = c->unit16;
    shape.v_bytes = a.nv * 2;
    shape.max_kept = c->kept.empty() ? 0 : *std::max_element(c->kept.begin(), c->kept.end());
  }
  const FwdKernel* force = forced_fwd_kernel();
  FwdPlan plan = plan_fwd(shape, caps, force);
  const bool sm90 = is_sm90_kernel(plan.kernel);
  if (sm90 && !ensure_tile_maps(l, *c, a.values, a.nv)) {
    shape.sm90_layout = false;  // the driver refused a tile's map: v2
    plan = plan_fwd(shape, caps, force);
  }
  if (is_sm90_kernel(plan.kernel)) {
    a.sm90_slices = c->slices.data_ptr<int32_t>();
    a.sm90_num_slices = c->slices.numel();
    a.sm90_tile_maps = reinterpret_cast<const CUtensorMap*>(c->maps.data_ptr());
  }
  const bool on_sm90 = a.sm90_tile_maps != nullptr;

  // the chunk bounds depend on the layout only: cached with the validated layout
  at::Tensor bounds = on_sm90 ? c->bounds : info.fwd_bounds;
  const bool ready = bounds.defined() && bounds.numel() == plan.bounds_count && plan.bounds_count > 0;
  if (!ready) bounds = at::empty({std::max<int64_t>(plan.bounds_count, 1)}, l.cols.options());
  // the K-split's arrival counters: zero after every launch (the last CTA resets them), so cached per stream
  at::Tensor counters;
  if (plan.counters_count > 0) {
    if (!c->counters.defined() || c->counters_stream != stream || c->counters.numel() < plan.counters_count) {
      c->counters = at::zeros({plan.counters_count}, l.cols.options());
      c->counters_stream = stream;
    }
    counters = c->counters;
  }
  // one workspace allocation (caching allocator) for the partials and the covered flags
  const int64_t bytes = plan.ws_floats * 4 + plan.covered_bytes;
  at::Tensor ws = at::empty({std::max<int64_t>(bytes, 1)}, y.options().dtype(at::kByte));
  uint8_t* base = ws.data_ptr<uint8_t>();
  FwdWorkspace w{bounds.data_ptr<int32_t>(), reinterpret_cast<float*>(base), base + plan.ws_floats * 4, ready};
  w.counters = counters.defined() ? counters.data_ptr<int32_t>() : nullptr;
  run_fwd<T>(plan, a, w, CudaLaunch{stream});
  if (!ready && plan.bounds_count > 0 && info.known) {
    // once per layout (like its validation): a later call on another stream
    // must not read the bounds before this stream has written them
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (on_sm90) c->bounds = bounds;
    else cache_fwd_bounds(l, a.n, a.k, bounds);
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
