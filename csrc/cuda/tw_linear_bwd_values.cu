// CUDA operator tw_linear_grad_values: gV_t = grad_out[:, cols_t]^T @ x[:, rows_t].
// plan_grad_values (tw_bwd_launch.cuh) picks the kernel: sm90u on compute
// capability 9.x for unit-16 layouts whose slices are column runs (TMA +
// wgmma, tw_gv_sm90u_kernels.cuh), else v2 (x read once per
// block of 4 slices) for fp16/bf16 with tiles of multiples of 64 and 16-byte
// x rows, else v1 (x gathered per tile) or SIMT for fp32/fp64; M-splits only
// when the blocks would not fill the GPU, with fp32 (fp64) partials added in a
// fixed order afterwards. Deterministic. Where v2 / v1 would be slower than
// cuBLAS (prefer_dense_backward: fp16/bf16 at low sparsity), the dense weight
// gradient is taken and its kept entries packed (dense_fallback.cuh).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <mutex>
#include <cstring>
#include <limits>
#include <type_traits>

#include "checks_cuda.cuh"
#include "dense_fallback.cuh"
#include "sm90_layout_cache.cuh"
#include "tw_bwd_launch.cuh"

namespace tilesparse::cuda {
namespace {

template <typename T, typename Acc>
GradValuesParams<T, Acc> make_params(const at::Tensor& gy, int64_t ldg, const at::Tensor& x, int64_t ldx,
                                     const LayoutArgs& l, int64_t m, int64_t n, int64_t k, int64_t nv,
                                     at::Tensor& out) {
  GradValuesParams<T, Acc> p{};
  p.gy = reinterpret_cast<const T*>(gy.data_ptr());
  p.ldg = ldg;
  p.x = reinterpret_cast<const T*>(x.data_ptr());
  p.ldx = ldx;
  p.m = m;
  p.n = n;
  p.k = k;
  p.layout = dev_layout(l);
  p.nv = nv;
  p.out = reinterpret_cast<T*>(out.data_ptr());
  p.ws = nullptr;
  p.split_rows = m;
  p.jchunks = 1;
  p.kchunks = 1;
  p.gy_vec = vec16_ok(p.gy, ldg);
  p.x_vec = vec16_ok(p.x, ldx);
  return p;
}

// TILESPARSE_CUDA_GRAD_VALUES_KERNEL=sm90|v2|v1|dense (read on every call): run
// that kernel where it applies (sm90 -> v2 -> v1 fall back in that order;
// dense: the dense fallback for fp16/bf16),
// for A/B measurements (scripts/gpu_check.sh); unset or "auto": the plan's
// choice.
const GradValuesKernel* forced_kernel() {
  static const GradValuesKernel v1 = GradValuesKernel::kMma128, v2 = GradValuesKernel::kV2,
                                sm90 = GradValuesKernel::kSm90U;
  const char* e = std::getenv("TILESPARSE_CUDA_GRAD_VALUES_KERNEL");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "auto") == 0) return nullptr;
  if (std::strcmp(e, "sm90") == 0) return &sm90;
  if (std::strcmp(e, "v1") == 0) return &v1;
  if (std::strcmp(e, "v2") == 0) return &v2;
  if (std::strcmp(e, "dense") == 0) return nullptr;  // dense_fallback.cuh reads it
  TORCH_CHECK_VALUE(false, "TILESPARSE_CUDA_GRAD_VALUES_KERNEL must be auto, sm90, v2, v1 or dense, got '", e, "'");
}

template <int C>
int query_gv_sm90u_clusters() {
  return max_active_clusters(tw_gv_sm90u_kernel<__nv_bfloat16, C>, C, sm90u_gv::kThreads, gv_sm90u_smem_bytes());
}

// Runs the planned kernel; returns false (nothing launched) where the plan is not sm90u and the dense
// fallback wins (prefer_dense_backward): the caller then takes the dense weight gradient and packs it.
template <typename T, typename Acc>
bool run(GradValuesParams<T, Acc> p, const LayoutArgs& l, const LayoutInfo& info, const at::TensorOptions& acc_opts,
         cudaStream_t stream) {
  constexpr bool half = !std::is_same_v<T, Acc>;
  GradValuesShape shape{p.m, p.k, p.layout.tile, p.layout.num_tiles, p.layout.num_rows,
                        info.known ? info.max_rows : p.k, p.nv, half, p.x_vec};
  shape.gy_vec = p.gy_vec;
  DeviceCaps caps = device_caps();
  // sm90: the layout's host side (cached with it); held for the call
  Sm90LayoutCache* c = kSm90aBuilt && half && caps.cc_major == 9 && info.known ? info.sm90.get() : nullptr;
  std::unique_lock<std::mutex> lock;
  if (c != nullptr) {
    set_resident_clusters(caps, "tw_gv_sm90u", [] {
      return std::array<int, 3>{query_gv_sm90u_clusters<1>(), query_gv_sm90u_clusters<2>(), query_gv_sm90u_clusters<4>()};
    });
    lock = std::unique_lock<std::mutex>(c->mutex);
    if (!c->built) build_sm90_layout(l, *c);
    shape.sm90_layout = c->unit16 && c->slots_aligned && c->cols_runs && !c->table.empty();
    if (shape.sm90_layout) {
      ensure_sm90_gv_entries(l, *c);
      shape.sm90_cluster = c->gv_cluster;
      shape.sm90_entries = c->gv_entries_count;
      p.sm90_slices = c->slices.data_ptr<int32_t>();
      p.sm90_num_slices = c->slices.numel();
      p.sm90_entries = c->gv_entries.data_ptr<int32_t>();
      p.sm90_num_entries = c->gv_entries_count;
    }
  }
  const GradValuesPlan plan = plan_grad_values(shape, caps, forced_kernel());
  if (plan.kernel != GradValuesKernel::kSm90U &&
      use_dense_backward(BackwardOp::kGradValues, dense_choice_from_env("TILESPARSE_CUDA_GRAD_VALUES_KERNEL"),
                         half ? (std::is_same_v<T, __half> ? at::kHalf : at::kBFloat16) : at::kFloat, caps.cc_major,
                         p.m, p.n, p.k, p.nv))
    return false;
  const int64_t blocks = plan.kernel == GradValuesKernel::kSm90U ? plan.grid
                         : plan.kernel == GradValuesKernel::kV2 ? plan.groups * plan.nchunks
                                                                : p.layout.num_tiles * plan.jchunks * plan.kchunks;
  TORCH_CHECK_VALUE(blocks <= std::numeric_limits<int32_t>::max(), "tw_linear_grad_values: too many tiles");
  at::Tensor ws, bounds;
  if (plan.ws_count > 0) ws = at::empty({plan.ws_count}, acc_opts);
  if (plan.bounds_count > 0) bounds = at::empty({plan.bounds_count}, acc_opts.dtype(at::kInt));
  run_grad_values(plan, p, plan.bounds_count > 0 ? bounds.data_ptr<int32_t>() : nullptr,
                  plan.ws_count > 0 ? ws.data_ptr<Acc>() : nullptr, CudaLaunch{stream});
  return true;
}

at::Tensor tw_linear_grad_values_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& cols,
                                      const at::Tensor& row_offsets, const at::Tensor& rows, int64_t tile,
                                      int64_t num_values) {
  check_grad_values_inputs(grad_out, x);
  const int64_t N = grad_out.size(-1), K = x.size(-1);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, N, K, grad_out.device(), false);
  const LayoutInfo info = check_layout_cuda(l, N, K);
  if (info.known) {
    TORCH_CHECK_VALUE(num_values == info.num_values, "num_values must be ", info.num_values,
                      " for this layout, got ", num_values);
  }
  TORCH_CHECK_VALUE(num_values >= 0, "num_values must be >= 0, got ", num_values);
  const int64_t M = leading_rows(grad_out);
  at::Tensor gv = at::empty({num_values}, grad_out.options());
  if (num_values == 0) return gv;
  if (M == 0 || K == 0 || N == 0) return gv.zero_();
  if (keeps_everything(info, N, K)) {  // the layout is the dense weight: cuBLAS
    at::Tensor gw = gv.view({N, K});
    at::mm_out(gw, grad_out.reshape({M, N}).t(), x.reshape({M, K}));
    return gv;
  }
  int64_t ldg = N, ldx = K;
  const at::Tensor gy2 = rows_view(grad_out, M, N, &ldg);
  const at::Tensor x2 = rows_view(x, M, K, &ldx);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  bool ran = true;
  switch (grad_out.scalar_type()) {
    case at::kHalf:
      ran = run(make_params<__half, float>(gy2, ldg, x2, ldx, l, M, N, K, num_values, gv), l, info,
                grad_out.options().dtype(at::kFloat), stream);
      break;
    case at::kBFloat16:
      ran = run(make_params<__nv_bfloat16, float>(gy2, ldg, x2, ldx, l, M, N, K, num_values, gv), l, info,
                grad_out.options().dtype(at::kFloat), stream);
      break;
    case at::kFloat:
      run(make_params<float, float>(gy2, ldg, x2, ldx, l, M, N, K, num_values, gv), l, info, grad_out.options(), stream);
      break;
    case at::kDouble:
      run(make_params<double, double>(gy2, ldg, x2, ldx, l, M, N, K, num_values, gv), l, info, grad_out.options(),
          stream);
      break;
    default:
      TORCH_CHECK_TYPE(false, "tw_linear_grad_values on CUDA supports float16, bfloat16, float32 and float64, got ",
                       grad_out.scalar_type());
  }
  if (!ran) {  // the dense fallback: cuBLAS's weight gradient, its kept entries packed
    const at::Tensor gw = at::mm(grad_out.reshape({M, N}).t(), x.reshape({M, K}));
    return values_from_dense_weight(gw, cols, row_offsets, rows, tile, num_values);
  }
  return gv;
}

}  // namespace

TORCH_LIBRARY_IMPL(tilesparse, CUDA, m) { m.impl("tw_linear_grad_values", &tw_linear_grad_values_cuda); }

}  // namespace tilesparse::cuda
