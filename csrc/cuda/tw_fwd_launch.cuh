// Launch configuration of the tw_linear forward, torch-free: which kernel
// runs (plan_fwd) and the launches that run it (run_fwd), parameterised by a
// `launch(kernel, grid, block, smem_bytes, params...)` callable. The CUDA
// operator passes one that launches on the current stream; the host
// emulation (tests/cuda_emulation) one that runs the blocks on CPU threads,
// so both execute this very logic.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "tw_fwd_kernels.cuh"
#include "tw_fwd_v2_kernels.cuh"

namespace tilesparse::cuda {

enum class FwdKernel : int {
  kSimt = 0,     // fp32/fp64
  kMmaV1 = 1,    // tensor cores, x gathered per tile (any tile width, any alignment)
  kV2 = 2,       // tensor cores, x once per 128-row M-block (tile % 64 == 0, x 16-byte rows)
  kV2Small = 3,  // the same for M <= 64 (16/32/64-row blocks), K-split to fill the device
};

inline const char* fwd_kernel_name(FwdKernel k) {
  switch (k) {
    case FwdKernel::kSimt: return "simt";
    case FwdKernel::kMmaV1: return "mma_v1";
    case FwdKernel::kV2: return "v2";
    case FwdKernel::kV2Small: return "v2_small_m";
  }
  return "?";
}

constexpr int kFwdV1BM = 128, kFwdV1BK = 32, kFwdV1Stages = 3;
constexpr int kV2WarpsN = 4;  // slices per block

// The problem, as the plan sees it.
struct FwdShape {
  int64_t m, k, n;
  int64_t tile, num_tiles, num_cols;
  bool half;   // fp16/bf16 (tensor cores), else fp32/fp64 (SIMT)
  bool x_vec;  // x 16-byte aligned with rows of whole 16-byte units
};

struct FwdPlan {
  FwdKernel kernel;
  int bm = 0;                // rows per block
  int splits = 1;            // v2: K-splits (grid.z)
  int chunks_per_split = 0;  // v2
  int nchunks = 0;           // v2: ceil(k / kV2KC)
  int64_t bounds_count = 0;  // int32 workspace: v2 chunk bounds
  int64_t ws_floats = 0;     // fp32 workspace: v2 split partials
  int64_t covered_bytes = 0; // uint8 workspace: outputs no tile computes
};

inline int64_t fwd_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// `force` (tests): run that kernel where it applies instead of the choice below.
inline FwdPlan plan_fwd(const FwdShape& s, const DeviceCaps& caps, const FwdKernel* force = nullptr) {
  FwdPlan p;
  p.covered_bytes = std::min(s.num_cols, s.num_tiles * s.tile) < s.n ? s.n : 0;
  if (!s.half) {
    p.kernel = FwdKernel::kSimt;
    p.bm = kSimtBM;
    return p;
  }
  const bool v2_ok = s.x_vec && s.tile % kV2Slice == 0 && s.k > 0;
  FwdKernel kind = !v2_ok ? FwdKernel::kMmaV1 : (s.m <= 64 ? FwdKernel::kV2Small : FwdKernel::kV2);
  if (force != nullptr && (*force == FwdKernel::kMmaV1 || v2_ok)) kind = *force;
  if (kind == FwdKernel::kV2Small && s.m > 64) kind = FwdKernel::kV2;
  p.kernel = kind;
  if (kind == FwdKernel::kMmaV1) {
    p.bm = kFwdV1BM;
    return p;
  }
  p.bm = kind == FwdKernel::kV2 ? 128 : (s.m <= 16 ? 16 : (s.m <= 32 ? 32 : 64));
  const int smem = p.bm == 128 ? fwd_v2_smem_bytes<128>() : fwd_v2_smem_bytes<64>();
  if (smem > caps.smem_optin) {  // small devices: the v1 kernel's smaller ring
    p.kernel = FwdKernel::kMmaV1;
    p.bm = kFwdV1BM;
    return p;
  }
  p.nchunks = static_cast<int>(fwd_ceil_div(s.k, kV2KC));
  p.bounds_count = s.num_tiles * (p.nchunks + 1);
  // K-split when the blocks would not cover the device twice (small M, few
  // tiles): each split owns whole chunks; partials are reduced in order.
  const int64_t num_slices = s.num_tiles * (s.tile / kV2Slice);
  const int64_t blocks = fwd_ceil_div(num_slices, kV2WarpsN) * fwd_ceil_div(s.m, p.bm);
  int64_t splits = 1;
  if (blocks > 0 && blocks < 2 * caps.num_sms) splits = std::min<int64_t>(p.nchunks, fwd_ceil_div(2 * caps.num_sms, blocks));
  const int64_t wcols = num_slices * kV2Slice;
  while (splits > 1 && splits * s.m * wcols > (int64_t(1) << 26)) splits /= 2;  // workspace <= 256 MiB
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535));
  p.chunks_per_split = static_cast<int>(fwd_ceil_div(p.nchunks, splits));
  p.splits = static_cast<int>(fwd_ceil_div(p.nchunks, p.chunks_per_split));
  p.ws_floats = p.splits > 1 ? p.splits * s.m * wcols : 0;
  return p;
}

// Device pointers of one forward call.
template <typename T>
struct FwdArgs {
  const T* x;
  int64_t ldx, m, k;
  const T* values;
  int64_t nv;
  const T* bias;  // nullable
  T* y;           // [m, n], leading dimension ldy
  int64_t ldy, n;
  DevLayout layout;
  bool x_vec16;  // x 16-byte aligned with rows of whole 16-byte units
  bool v_vec16;  // values 16-byte aligned
  bool v_vec8;   // values 8-byte aligned
  bool y_vec16;  // y 16-byte aligned with rows of whole 16-byte units
};

struct FwdWorkspace {
  int32_t* bounds;   // plan.bounds_count
  float* ws;         // plan.ws_floats
  uint8_t* covered;  // plan.covered_bytes
  bool bounds_ready = false;  // bounds already hold this layout's chunk bounds (cached): skip their kernel
};

static __global__ void fill_bytes_kernel(uint8_t* p, int64_t count, uint8_t v) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) p[i] = v;
}

// Runs the plan: outputs that no tile computes (bias or zero), then the
// chosen kernel over all tiles (and the split reduction).
template <typename T, typename Launch>
void run_fwd(const FwdPlan& plan, const FwdArgs<T>& a, const FwdWorkspace& w, Launch&& launch) {
  const DevLayout& l = a.layout;
  if (a.m <= 0 || a.n <= 0) return;
  if (plan.covered_bytes > 0) {
    const int64_t count = std::min(l.num_cols, l.num_tiles * l.tile);
    launch(fill_bytes_kernel, dim3(static_cast<unsigned>(fwd_ceil_div(a.n, 256))), dim3(256), 0, w.covered, a.n,
           uint8_t(0));
    if (count > 0)
      launch(mark_covered_kernel, dim3(static_cast<unsigned>(fwd_ceil_div(count, 256))), dim3(256), 0, l.cols, count,
             a.n, w.covered);
    const dim3 grid(static_cast<unsigned>(fwd_ceil_div(a.n, 256)), static_cast<unsigned>(std::min<int64_t>(a.m, 1024)));
    // 16-bit floats as their bits (0 is +0.0 in fp16 and bf16): a pure copy
    using S = std::conditional_t<std::is_same_v<T, float> || std::is_same_v<T, double>, T, uint16_t>;
    launch(fill_uncovered_kernel<S>, grid, dim3(256), 0, reinterpret_cast<S*>(a.y), a.m, a.n, a.ldy,
           const_cast<const uint8_t*>(w.covered), reinterpret_cast<const S*>(a.bias));
  }
  if (l.num_tiles == 0 || a.k == 0) return;

  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    FwdParams<T> p{a.x, a.ldx, a.m, a.k, a.values, a.nv, a.bias, a.y, a.ldy, a.n, l,
                   static_cast<int32_t>(fwd_ceil_div(l.tile, kSimtBN)), 0, false, false, false};
    const int64_t gx = l.num_tiles * p.jchunks, mblocks = fwd_ceil_div(a.m, kSimtBM);
    for (int64_t mb = 0; mb < mblocks; mb += kMaxGridY) {
      p.mblock_offset = mb;
      launch(tw_fwd_simt_kernel<T>, dim3(static_cast<unsigned>(gx), static_cast<unsigned>(std::min(mblocks - mb, kMaxGridY))),
             dim3(256), 0, p);
    }
  } else if (plan.kernel == FwdKernel::kMmaV1) {
    FwdParams<T> p{a.x, a.ldx, a.m, a.k, a.values, a.nv, a.bias, a.y, a.ldy, a.n, l, 1, 0, a.x_vec16, a.v_vec16,
                   a.y_vec16};
    auto go = [&](auto kernel, int bn, int threads, int smem) {
      p.jchunks = static_cast<int32_t>(fwd_ceil_div(l.tile, bn));
      const int64_t gx = l.num_tiles * p.jchunks, mblocks = fwd_ceil_div(a.m, kFwdV1BM);
      for (int64_t mb = 0; mb < mblocks; mb += kMaxGridY) {
        p.mblock_offset = mb;
        launch(kernel, dim3(static_cast<unsigned>(gx), static_cast<unsigned>(std::min(mblocks - mb, kMaxGridY))),
               dim3(threads), smem, p);
      }
    };
    if (l.tile <= 64)
      go(tw_fwd_mma_kernel<T, kFwdV1BM, 64, kFwdV1BK, 4, 2, kFwdV1Stages>, 64, 256,
         fwd_mma_smem_bytes<kFwdV1BM, 64, kFwdV1BK, kFwdV1Stages>());
    else
      go(tw_fwd_mma_kernel<T, kFwdV1BM, 128, kFwdV1BK, 2, 4, kFwdV1Stages>, 128, 256,
         fwd_mma_smem_bytes<kFwdV1BM, 128, kFwdV1BK, kFwdV1Stages>());
  } else {
    const int64_t count = l.num_tiles * (plan.nchunks + 1);
    if (!w.bounds_ready)
      launch(chunk_bounds_kernel, dim3(static_cast<unsigned>(fwd_ceil_div(count, 256))), dim3(256), 0, l, a.k,
           static_cast<int32_t>(kV2KC), static_cast<int32_t>(plan.nchunks), w.bounds);
    FwdV2Params<T> p{a.x, a.ldx, a.m, a.k, a.values, a.nv, a.bias, a.y, a.ldy, a.n, l, w.bounds, plan.nchunks,
                     plan.chunks_per_split, l.num_tiles * (l.tile / kV2Slice), plan.splits > 1 ? w.ws : nullptr, 0,
                     a.v_vec8};
    const int64_t gx = fwd_ceil_div(p.num_slices, kV2WarpsN), mblocks = fwd_ceil_div(a.m, plan.bm);
    auto go = [&](auto kernel, int threads, int smem) {
      for (int64_t mb = 0; mb < mblocks; mb += kMaxGridY) {
        p.mblock_offset = mb;
        launch(kernel, dim3(static_cast<unsigned>(gx), static_cast<unsigned>(std::min(mblocks - mb, kMaxGridY)),
                            static_cast<unsigned>(plan.splits)),
               dim3(threads), smem, p);
      }
    };
    switch (plan.bm) {
      case 16: go(tw_fwd_v2_kernel<T, 16, 1, kV2WarpsN>, 128, fwd_v2_smem_bytes<16>()); break;
      case 32: go(tw_fwd_v2_kernel<T, 32, 1, kV2WarpsN>, 128, fwd_v2_smem_bytes<32>()); break;
      case 64: go(tw_fwd_v2_kernel<T, 64, 1, kV2WarpsN>, 128, fwd_v2_smem_bytes<64>()); break;
      default: go(tw_fwd_v2_kernel<T, 128, 2, kV2WarpsN>, 256, fwd_v2_smem_bytes<128>()); break;
    }
    if (plan.splits > 1) {
      const int64_t total = a.m * p.num_slices * kV2Slice;
      launch(reduce_fwd_splits_kernel<T>, dim3(static_cast<unsigned>(std::min<int64_t>(fwd_ceil_div(total, 256), 4096))),
             dim3(256), 0, p, static_cast<int32_t>(plan.splits));
    }
  }
}

}  // namespace tilesparse::cuda
