// CUDA kernel of tw_linear_grad_input: gX[:, rows_t] += grad_out[:, cols_t] @ V_t
// over all tiles. Deterministic: one block per (K-chunk, M-block) adds the
// tiles' contributions to its chunk in fp32 (fp64) shared memory, tiles in
// ascending order, and writes the chunk once: on sm_90a by wgmma with both
// operands by TMA (tw_gi_sm90_kernels.cuh) where the layout allows it (fp16
// / bf16, every slice's outputs one run of columns, tile % 128 == 0, slots %
// 8 == 0), else by mma.sync (v1, tw_bwd_input_kernels.cuh). Where the sparse
// kernel would be slower than cuBLAS (prefer_dense_backward: fp16 / bf16 at
// low sparsity, e.g. 50% on an H100), V is unpacked to the dense weight and
// gX = gy W is one GEMM (dense_fallback.cuh).
//
// TILESPARSE_CUDA_GRAD_INPUT_KERNEL=auto|sparse|sm90|v1|dense (read on every
// call): sparse = the sparse kernel the plan picks (sm90 where it applies
// and pays, gi_sm90_pays, else v1); sm90 = sm90 wherever it applies; v1 =
// mma.sync even on Hopper; for A/B timing (scripts/gpu_check.sh).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <type_traits>

#include "checks_cuda.cuh"
#include "dense_fallback.cuh"
#include "sm90_layout_cache.cuh"
#include "tw_bwd_launch.cuh"

namespace tilesparse::cuda {
namespace {

template <typename T, typename Acc>
GradInputParams<T, Acc> make_params(const at::Tensor& gy, int64_t ldg, const at::Tensor& values, const LayoutArgs& l,
                                    int64_t m, int64_t n, int64_t k, at::Tensor& gx) {
  GradInputParams<T, Acc> p;
  p.gy = reinterpret_cast<const T*>(gy.data_ptr());
  p.ldg = ldg;
  p.values = reinterpret_cast<const T*>(values.data_ptr());
  p.nv = values.numel();
  p.m = m;
  p.n = n;
  p.k = k;
  p.layout = dev_layout(l);
  p.bounds = nullptr;
  p.nkc = 0;
  p.kc = 0;
  p.gx = reinterpret_cast<T*>(gx.data_ptr());
  p.ldx = k;
  p.mblock_offset = 0;
  p.gy_vec = vec16_ok(p.gy, ldg);
  p.v_vec = vec16_ok(p.values, 0);
  p.gx_vec = vec16_ok(p.gx, k);
  return p;
}

template <typename T, typename Acc>
void run(GradInputParams<T, Acc> p, const LayoutArgs& l, cudaStream_t stream) {
  constexpr bool half = !std::is_same_v<T, Acc>;
  const GradInputPlan plan = plan_grad_input(p.k, p.layout.num_rows, p.layout.num_tiles, half, device_caps());
  TORCH_CHECK(plan.kc > 0, "tw_linear_grad_input: the device has too little shared memory (",
              device_caps().smem_optin, " bytes per block)");
  at::Tensor bounds = at::empty({std::max<int64_t>(plan.bounds_count, 1)}, l.cols.options());
  run_grad_input(plan, p, bounds.data_ptr<int32_t>(), CudaLaunch{stream});
}

// The sparse kernel TILESPARSE_CUDA_GRAD_INPUT_KERNEL names: sm90 (wherever it applies), v1, or none (the
// plan's choice: auto, sparse, dense).
enum class GiForce { kNone, kSm90, kV1 };
GiForce forced_grad_input_kernel() {
  const char* e = std::getenv("TILESPARSE_CUDA_GRAD_INPUT_KERNEL");
  if (e == nullptr || *e == '\0') return GiForce::kNone;
  if (std::strcmp(e, "sm90") == 0) return GiForce::kSm90;
  if (std::strcmp(e, "v1") == 0) return GiForce::kV1;
  for (const char* ok : {"auto", "sparse", "dense"})
    if (std::strcmp(e, ok) == 0) return GiForce::kNone;
  TORCH_CHECK_VALUE(false, "TILESPARSE_CUDA_GRAD_INPUT_KERNEL must be auto, sparse, sm90, v1 or dense, got '", e, "'");
}

// The sm_90a kernel where it applies, with the layout's cached host side (tile maps of these values);
// nullptr otherwise. Holds the cache's lock in `lock` for the call.
Sm90LayoutCache* sm90_cache(const LayoutArgs& l, const LayoutInfo& info, bool half, const void* gy, int64_t ldg,
                            const void* values, int64_t nv, int64_t m, int64_t k, std::unique_lock<std::mutex>& lock) {
  const DeviceCaps caps = device_caps();
  if (!kSm90aBuilt || !half || caps.cc_major != 9 || !info.known) return nullptr;
  const GiForce force = forced_grad_input_kernel();
  if (force == GiForce::kV1) return nullptr;
  // forced sm90 runs where it applies, even where v1 is faster
  if (force != GiForce::kSm90 && !gi_sm90_pays(k, l.view.num_rows, l.view.num_tiles)) return nullptr;
  Sm90LayoutCache* c = info.sm90.get();
  if (c == nullptr) return nullptr;
  lock = std::unique_lock<std::mutex>(c->mutex);
  if (!c->built) build_sm90_layout(l, *c);
  if (!gi_sm90_applies(half, m, k, l.view.tile, c->slots_aligned, c->cols_runs, vec16_ok(gy, ldg), caps) ||
      !ensure_tile_maps(l, *c, values, nv)) {
    lock.unlock();
    return nullptr;
  }
  return c;
}

template <typename T>
void run_sm90(const at::Tensor& gy2, int64_t ldg, const at::Tensor& v, const LayoutArgs& l, const Sm90LayoutCache& c,
              int64_t m, int64_t n, int64_t k, at::Tensor& gx, cudaStream_t stream) {
  const GradInputPlan plan = plan_grad_input_sm90(k, l.view.num_tiles, device_caps());
  TORCH_CHECK(plan.kc > 0, "tw_linear_grad_input: the sm_90a kernel does not fit the device's shared memory");
  const GiSm90Params<T> p = gi_sm90_params<T>(
      reinterpret_cast<const T*>(gy2.data_ptr()), ldg, reinterpret_cast<const CUtensorMap*>(c.maps.data_ptr()),
      dev_layout(l), m, n, k, v.numel(), reinterpret_cast<T*>(gx.data_ptr()), k);
  at::Tensor bounds = at::empty({std::max<int64_t>(plan.bounds_count, 1)}, l.cols.options());
  run_grad_input_sm90(plan, p, bounds.data_ptr<int32_t>(), CudaLaunch{stream});
}

at::Tensor tw_linear_grad_input_cuda(const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& cols,
                                     const at::Tensor& row_offsets, const at::Tensor& rows, int64_t in_features,
                                     int64_t tile) {
  TORCH_CHECK_VALUE(grad_out.dim() >= 1, "grad_out must have at least 1 dimension, got a scalar");
  TS_CHECK_FLOATING(grad_out);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const int64_t N = grad_out.size(-1), K = in_features;
  TORCH_CHECK_VALUE(cols.numel() <= N, "grad_out must have at least as many features (last dimension, got ", N,
                    ") as the layout keeps output features (", cols.numel(), ")");
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, N, K, grad_out.device(), false);
  const LayoutInfo info = check_layout_cuda(l, N, K);
  check_values_cuda(values, grad_out, info);
  const int64_t M = leading_rows(grad_out);
  std::vector<int64_t> out_sizes(grad_out.sizes().begin(), grad_out.sizes().end());
  out_sizes.back() = K;
  // Allocated in its final shape, so the op returns a fresh tensor, not a view.
  at::Tensor out = at::empty(out_sizes, grad_out.options());
  at::Tensor gx = out.view({M, K});
  if (N == 0 || l.cols.numel() == 0) {
    gx.zero_();
  } else if (keeps_everything(info, N, K)) {  // the layout is the dense weight: cuBLAS
    at::mm_out(gx, grad_out.reshape({M, N}), values.contiguous().view({N, K}));
  } else if (M > 0 && K > 0) {
    int64_t ldg = N;
    const at::Tensor gy2 = rows_view(grad_out, M, N, &ldg);
    const at::Tensor v = values.contiguous();
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const at::ScalarType dtype = grad_out.scalar_type();
    const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
    std::unique_lock<std::mutex> lock;
    const Sm90LayoutCache* sm90 = sm90_cache(l, info, half, gy2.data_ptr(), ldg, v.data_ptr(), v.numel(), M, K, lock);
    if (use_dense_backward(BackwardOp::kGradInput, dense_choice_from_env("TILESPARSE_CUDA_GRAD_INPUT_KERNEL"), dtype,
                           device_caps().cc_major, M, N, K, values.numel(), sm90 != nullptr)) {
      // the sparse kernel would be slower than cuBLAS here (prefer_dense_backward): gX = gy W, W unpacked
      if (lock.owns_lock()) lock.unlock();
      const at::Tensor w = dense_weight_from_values(v, cols, row_offsets, rows, tile, N, K);
      at::mm_out(gx, grad_out.reshape({M, N}), w);
      return out;
    }
    if (sm90 != nullptr) {
      if (dtype == at::kHalf) run_sm90<__half>(gy2, ldg, v, l, *sm90, M, N, K, gx, stream);
      else run_sm90<__nv_bfloat16>(gy2, ldg, v, l, *sm90, M, N, K, gx, stream);
      return out;
    }
    switch (dtype) {
      case at::kHalf:
        run(make_params<__half, float>(gy2, ldg, v, l, M, N, K, gx), l, stream);
        break;
      case at::kBFloat16:
        run(make_params<__nv_bfloat16, float>(gy2, ldg, v, l, M, N, K, gx), l, stream);
        break;
      case at::kFloat:
        run(make_params<float, float>(gy2, ldg, v, l, M, N, K, gx), l, stream);
        break;
      case at::kDouble:
        run(make_params<double, double>(gy2, ldg, v, l, M, N, K, gx), l, stream);
        break;
      default:
        TORCH_CHECK_TYPE(false, "tw_linear_grad_input on CUDA supports float16, bfloat16, float32 and float64, got ",
                         grad_out.scalar_type());
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tilesparse, CUDA, m) { m.impl("tw_linear_grad_input", &tw_linear_grad_input_cuda); }

}  // namespace tilesparse::cuda
