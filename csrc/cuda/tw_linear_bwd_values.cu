// CUDA kernel of tw_linear_grad_values: gV_t = grad_out[:, cols_t]^T @ x[:, rows_t].
// One launch over (tile, j-chunk, kk-chunk) x M-splits; splits > 1 only when
// the blocks would not fill the GPU (few tiles, long M), with fp32 (fp64)
// partials added in a fixed order afterwards. Deterministic.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "checks_cuda.cuh"
#include "tw_bwd_values_kernels.cuh"

namespace tilesparse::cuda {
namespace {

constexpr int kBK = 32, kBNK = 128, kStages = 3;

template <typename T>
struct ToHalf16 {
  __device__ uint16_t operator()(float v) const { return Half16<T>::from_float(v); }
};
struct Same {
  template <typename A>
  __device__ A operator()(A v) const {
    return v;
  }
};

// Splits of M so that about two blocks per SM are busy; at least 512 rows each.
int64_t choose_splits(int64_t m, int64_t active_blocks) {
  const int64_t want = ceil_div(2 * num_sms(), std::max<int64_t>(active_blocks, 1));
  return std::max<int64_t>(1, std::min({want, ceil_div(m, 512), kMaxGridY}));
}

template <typename T, typename Acc>
GradValuesParams<T, Acc> make_params(const at::Tensor& gy, int64_t ldg, const at::Tensor& x, int64_t ldx,
                                     const LayoutArgs& l, int64_t m, int64_t n, int64_t k, int64_t nv,
                                     at::Tensor& out) {
  GradValuesParams<T, Acc> p;
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

// Shared driver: grid, splits, workspace, reduction. Launch(p, grid) runs the kernel.
template <typename T, typename Acc, typename Launch, typename Convert>
void run(GradValuesParams<T, Acc> p, const LayoutInfo& info, int bj, int bk, int row_step, Launch launch,
         Convert convert, const at::TensorOptions& acc_opts, cudaStream_t stream) {
  const int64_t T_ = p.layout.num_tiles;
  p.jchunks = static_cast<int32_t>(ceil_div(p.layout.tile, bj));
  const int64_t max_k = info.known ? info.max_rows : p.k;
  p.kchunks = static_cast<int32_t>(std::max<int64_t>(1, ceil_div(max_k, bk)));
  const int64_t gx = T_ * p.jchunks * p.kchunks;
  TORCH_CHECK_VALUE(gx <= std::numeric_limits<int32_t>::max(), "tw_linear_grad_values: too many tiles");
  if (gx == 0) {  // no tiles (only reachable for an unchecked layout inside graph capture)
    C10_CUDA_CHECK(cudaMemsetAsync(p.out, 0, p.nv * (std::is_same_v<Acc, T> ? sizeof(T) : 2), stream));
    return;
  }
  const int64_t avg_k = T_ > 0 ? p.layout.num_rows / T_ : 0;
  const int64_t active = T_ * p.jchunks * std::max<int64_t>(1, ceil_div(avg_k, bk));
  int64_t splits = choose_splits(p.m, active);
  p.split_rows = ceil_div(ceil_div(p.m, splits), row_step) * row_step;
  splits = ceil_div(p.m, p.split_rows);
  at::Tensor ws;
  if (splits > 1) {
    ws = at::empty({splits, p.nv}, acc_opts);
    p.ws = ws.data_ptr<Acc>();
  }
  launch(p, dim3(static_cast<unsigned>(gx), static_cast<unsigned>(splits)));
  if (splits > 1) {
    // half types are written as raw uint16_t, fp32/fp64 as themselves
    using Out = std::conditional_t<std::is_same_v<Acc, T>, T, uint16_t>;
    const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(p.nv, 256), 8 * num_sms()));
    reduce_splits_kernel<<<blocks, 256, 0, stream>>>(p.ws, splits, p.nv, reinterpret_cast<Out*>(p.out), convert);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T, int BMJ, int WARPS_M, int WARPS_N>
void run_mma(GradValuesParams<T, float> p, const LayoutInfo& info, const at::TensorOptions& acc_opts,
             cudaStream_t stream) {
  constexpr int smem = gv_mma_smem_bytes<BMJ, kBNK, kBK, kStages>();
  auto kernel = tw_grad_values_mma_kernel<T, BMJ, kBNK, kBK, WARPS_M, WARPS_N, kStages>;
  allow_smem(kernel, smem);
  run(
      p, info, BMJ, kBNK, kBK,
      [&](const GradValuesParams<T, float>& q, dim3 grid) {
        kernel<<<grid, WARPS_M * WARPS_N * 32, smem, stream>>>(q);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      },
      ToHalf16<T>(), acc_opts, stream);
}

template <typename T>
void run_simt(GradValuesParams<T, T> p, const LayoutInfo& info, const at::TensorOptions& acc_opts,
              cudaStream_t stream) {
  run(
      p, info, kGvSimtBJ, kGvSimtBK, kGvSimtBM,
      [&](const GradValuesParams<T, T>& q, dim3 grid) {
        tw_grad_values_simt_kernel<T><<<grid, 256, 0, stream>>>(q);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      },
      Same(), acc_opts, stream);
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
  switch (grad_out.scalar_type()) {
    case at::kHalf:
    case at::kBFloat16: {
      auto go = [&](auto tag) {
        using T = decltype(tag);
        const auto p = make_params<T, float>(gy2, ldg, x2, ldx, l, M, N, K, num_values, gv);
        const auto acc = grad_out.options().dtype(at::kFloat);
        if (tile <= 64) run_mma<T, 64, 2, 4>(p, info, acc, stream);
        else run_mma<T, 128, 2, 4>(p, info, acc, stream);
      };
      if (grad_out.scalar_type() == at::kHalf) go(__half());
      else go(__nv_bfloat16());
      break;
    }
    case at::kFloat:
      run_simt<float>(make_params<float, float>(gy2, ldg, x2, ldx, l, M, N, K, num_values, gv), info,
                      grad_out.options(), stream);
      break;
    case at::kDouble:
      run_simt<double>(make_params<double, double>(gy2, ldg, x2, ldx, l, M, N, K, num_values, gv), info,
                       grad_out.options(), stream);
      break;
    default:
      TORCH_CHECK_TYPE(false, "tw_linear_grad_values on CUDA supports float16, bfloat16, float32 and float64, got ",
                       grad_out.scalar_type());
  }
  return gv;
}

}  // namespace

TORCH_LIBRARY_IMPL(tilesparse, CUDA, m) { m.impl("tw_linear_grad_values", &tw_linear_grad_values_cuda); }

}  // namespace tilesparse::cuda
