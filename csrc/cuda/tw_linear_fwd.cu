// CUDA kernel of tw_linear (forward): argument checks as on the CPU, then
// one launch over (tiles x column chunks, M-blocks). fp16/bf16: tensor cores
// (tw_fwd_mma_kernel); fp32/fp64: SIMT (tw_fwd_simt_kernel, fp32 arithmetic
// like cuBLAS without TF32).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "checks_cuda.cuh"
#include "tw_fwd_kernels.cuh"

namespace tilesparse::cuda {
namespace {

constexpr int kBM = 128, kBK = 32, kStages = 3;

template <typename T>
FwdParams<T> make_params(const at::Tensor& x2, int64_t ldx, const at::Tensor& values, const at::Tensor* bias,
                         at::Tensor& y, const LayoutArgs& l) {
  FwdParams<T> p;
  p.x = reinterpret_cast<const T*>(x2.data_ptr());
  p.ldx = ldx;
  p.m = x2.size(0);
  p.k = x2.size(1);
  p.values = reinterpret_cast<const T*>(values.data_ptr());
  p.nv = values.numel();
  p.bias = bias != nullptr ? reinterpret_cast<const T*>(bias->data_ptr()) : nullptr;
  p.y = reinterpret_cast<T*>(y.data_ptr());
  p.ldy = y.size(1);
  p.n = y.size(1);
  p.layout = dev_layout(l);
  p.jchunks = 1;
  p.mblock_offset = 0;
  p.x_vec = vec16_ok(p.x, ldx);
  p.v_vec = vec16_ok(p.values, 0);
  p.y_vec = vec16_ok(p.y, p.ldy);
  return p;
}

template <typename T, int BN, int WARPS_M, int WARPS_N>
void launch_mma(FwdParams<T> p, cudaStream_t stream) {
  constexpr int smem = fwd_mma_smem_bytes<kBM, BN, kBK, kStages>();
  auto kernel = tw_fwd_mma_kernel<T, kBM, BN, kBK, WARPS_M, WARPS_N, kStages>;
  allow_smem(kernel, smem);
  p.jchunks = static_cast<int32_t>(ceil_div(p.layout.tile, BN));
  const int64_t gx = p.layout.num_tiles * p.jchunks;
  TORCH_CHECK_VALUE(gx <= std::numeric_limits<int32_t>::max(), "tw_linear: too many tiles for one launch");
  if (gx == 0) return;
  const int64_t mblocks = ceil_div(p.m, kBM);
  for (int64_t mb = 0; mb < mblocks; mb += kMaxGridY) {
    p.mblock_offset = mb;
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(std::min(mblocks - mb, kMaxGridY)));
    kernel<<<grid, WARPS_M * WARPS_N * 32, smem, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T>
void launch_simt(FwdParams<T> p, cudaStream_t stream) {
  p.jchunks = static_cast<int32_t>(ceil_div(p.layout.tile, kSimtBN));
  const int64_t gx = p.layout.num_tiles * p.jchunks;
  TORCH_CHECK_VALUE(gx <= std::numeric_limits<int32_t>::max(), "tw_linear: too many tiles for one launch");
  if (gx == 0) return;
  const int64_t mblocks = ceil_div(p.m, kSimtBM);
  for (int64_t mb = 0; mb < mblocks; mb += kMaxGridY) {
    p.mblock_offset = mb;
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(std::min(mblocks - mb, kMaxGridY)));
    tw_fwd_simt_kernel<T><<<grid, 256, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Output features outside cols (2-D TW, or tiles that kept nothing) get bias or zero.
void fill_uncovered(at::Tensor& y, const LayoutArgs& l, const at::Tensor* bias, cudaStream_t stream) {
  const int64_t m = y.size(0), n = y.size(1);
  const int64_t covered_count = std::min(l.cols.numel(), l.view.num_tiles * l.view.tile);
  if (covered_count == n || m == 0 || n == 0) return;  // cols strictly increasing in [0, n): all covered
  at::Tensor covered = at::zeros({n}, y.options().dtype(at::kByte));
  if (covered_count > 0) {
    mark_covered_kernel<<<static_cast<unsigned>(ceil_div(covered_count, 256)), 256, 0, stream>>>(
        l.cols.data_ptr<int32_t>(), covered_count, n, covered.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(n, 256)), static_cast<unsigned>(std::min<int64_t>(m, 1024)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "tw_linear_fill_cuda", [&] {
    fill_uncovered_kernel<scalar_t><<<grid, 256, 0, stream>>>(
        y.data_ptr<scalar_t>(), m, n, n, covered.data_ptr<uint8_t>(),
        bias != nullptr ? bias->data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
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
    fill_uncovered(y, l, bp, stream);
    switch (x.scalar_type()) {
      case at::kHalf:
      case at::kBFloat16: {
        auto run = [&](auto tag) {
          using T = decltype(tag);
          const FwdParams<T> p = make_params<T>(x2, ldx, v, bp, y, l);
          if (tile <= 64) launch_mma<T, 64, 4, 2>(p, stream);
          else launch_mma<T, 128, 2, 4>(p, stream);
        };
        if (x.scalar_type() == at::kHalf) run(__half());
        else run(__nv_bfloat16());
        break;
      }
      case at::kFloat:
        launch_simt<float>(make_params<float>(x2, ldx, v, bp, y, l), stream);
        break;
      case at::kDouble:
        launch_simt<double>(make_params<double>(x2, ldx, v, bp, y, l), stream);
        break;
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
