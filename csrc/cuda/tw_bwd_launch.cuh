// Launch configuration of the two backward operators, torch-free, in the
// style of tw_fwd_launch.cuh: plan_* decides chunking, splits and workspace;
// run_* issues the launches through a `launch(kernel, grid, block, smem,
// params...)` callable (the current CUDA stream, or the host emulation).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "tw_bwd_input_kernels.cuh"
#include "tw_bwd_values_kernels.cuh"
#include "tw_device.cuh"
#include "tw_gi_sm90_kernels.cuh"
#include "tw_gv_sm90u_kernels.cuh"

namespace tilesparse::cuda {

inline int64_t bwd_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------
// The dense fallback of a backward operator (fp16/bf16): where the sparse
// kernel would be slower than cuBLAS on the dense weight, unpack V to a dense
// [N, K] weight and take gX = gy W (grad_input), or take the dense gW = gy^T x
// and pack its kept entries (grad_values). The rule is perf_model.py's
// dense_grad_time against the sparse kernels' modelled rates (gi_time,
// gv_time), as sustained FLOP/s on the bench shapes: grad_input v1 is
// shared-memory-bound at ~195 TFLOP/s on an H100 whatever the sparsity
// (ldmatrix operand reads + the fp32 chunk accumulator), so at 50% it would
// run at 0.49x of dense; grad_values v2 L2-bound at ~280. The dense path costs
// one GEMM plus the unpack / pack stream (N K + nv elements) and a launch; it
// is taken only where it wins by 10% (the model's margin), so the choice does
// not flip on a prior. A100-class rates for compute capability 8.x.
// ---------------------------------------------------------------------------
enum class BackwardOp : int { kGradInput = 0, kGradValues = 1 };

// grad_input on wgmma's sustained rate on an H100 (perf_model.py sm90_gi_time at M = 16384, 75%, the LLM
// shapes): shared-memory-bound, ~2.6x its tensor time.
constexpr double kGiSm90Rate = 235e12;

struct DenseFallbackRates {
  double dense, grad_input, grad_values;  // FLOP/s: cuBLAS bf16, grad_input v1, grad_values v2
  double hbm;                             // bytes/s a stream reaches
  double launch;                          // seconds per launch
  double grad_input_sm90 = 0;             // grad_input on wgmma (tw_gi_sm90_kernels.cuh; sm_90a only)
};
inline DenseFallbackRates dense_fallback_rates(int cc_major) {
  if (cc_major >= 9) return {800e12, 195e12, 280e12, 0.9 * 3.35e12, 4e-6, kGiSm90Rate};
  return {270e12, 122e12, 185e12, 0.9 * 2.0e12, 5e-6};
}

// nv: the packed values (kept outputs x slots); the kept fraction is nv / (n k). sm90: the sparse side is
// grad_input on wgmma (where it applies), not v1.
inline bool prefer_dense_backward(BackwardOp op, int cc_major, int64_t m, int64_t n, int64_t k, int64_t nv,
                                  bool sm90 = false) {
  if (m <= 0 || n <= 0 || k <= 0 || nv <= 0) return false;
  const DenseFallbackRates r = dense_fallback_rates(cc_major);
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  const double rate = op == BackwardOp::kGradValues ? r.grad_values
                      : sm90 && r.grad_input_sm90 > 0 ? r.grad_input_sm90
                                                      : r.grad_input;
  const double sparse = flops * (static_cast<double>(nv) / (static_cast<double>(n) * static_cast<double>(k))) / rate +
                        2 * r.launch;
  const double dense = flops / r.dense + 2.0 * (static_cast<double>(n) * static_cast<double>(k) + nv) / r.hbm +
                       2 * r.launch;
  return dense < 0.9 * sparse;
}

// ---------------------------------------------------------------------------
// grad_input: gx[m, k] = sum_t scatter(gy[:, cols_t] @ V_t)
// ---------------------------------------------------------------------------
constexpr int kGiBM = 128, kGiNB = 64, kGiBK = 32, kGiStages = 3, kGiWarpsM = 4, kGiWarpsN = 2;

enum class GradInputKernel : int { kSimt = 0, kMma = 1, kSm90 = 2 };
inline const char* grad_input_kernel_name(GradInputKernel k) {
  return k == GradInputKernel::kSm90 ? "sm90" : k == GradInputKernel::kMma ? "mma" : "simt";
}

struct GradInputPlan {
  GradInputKernel kernel;
  int kc;                    // chunk width of K per block
  int nkc;                   // chunks
  int smem;                  // dynamic shared memory per block
  int64_t bounds_count;      // int32 workspace
};

// kc: a tile should keep about 0.8 * NB features of a chunk (kept features
// spread over K with average density num_rows / (num_tiles * k)), within
// what shared memory holds. Returns kc = 0 when shared memory is too small.
inline GradInputPlan plan_grad_input(int64_t k, int64_t num_rows, int64_t num_tiles, bool half,
                                     const DeviceCaps& caps) {
  GradInputPlan p{};
  if (!half) {
    p.kernel = GradInputKernel::kSimt;
    p.kc = kGiSimtKC;
    p.smem = 0;  // set by run_grad_input (depends on the element size)
  } else {
    p.kernel = GradInputKernel::kMma;
    constexpr int pipe = gi_mma_pipe_bytes<kGiBM, kGiNB, kGiBK, kGiStages>();
    const int kc_max = ((caps.smem_optin - pipe) / (kGiBM * 4) - 4) / 8 * 8;
    if (kc_max < 64) return p;  // kc = 0: the caller reports the device as too small
    const double density = num_tiles > 0 && k > 0 ? static_cast<double>(num_rows) / (num_tiles * k) : 1.0;
    int64_t kc = density > 0 ? static_cast<int64_t>(0.8 * kGiNB / density) / 8 * 8 : kc_max;
    kc = std::max<int64_t>(64, std::min<int64_t>(kc, kc_max));
    kc = std::min<int64_t>(kc, std::max<int64_t>(64, bwd_ceil_div(k, 8) * 8));
    p.kc = static_cast<int>(kc);
    p.smem = gi_mma_smem_bytes<kGiBM, kGiNB, kGiBK, kGiStages>(p.kc);
  }
  p.nkc = static_cast<int>(bwd_ceil_div(k, p.kc));
  p.bounds_count = num_tiles * (p.nkc + 1);
  return p;
}

// grad_input on sm_90a (tw_gi_sm90_kernels.cuh): chunks of at most 240 features (the accumulator's most:
// 128 x 248 fp32), every (chunk, 128-row block) a CTA. Where it applies (the operator checks): fp16/bf16, compute capability 9, every
// slice's outputs one run of columns (gy's TMA box), tile % 128 == 0, slots % 8 == 0 (the tile maps), gy
// 16-byte aligned with rows of whole 16-byte units. Returns kc = 0 where shared memory is too small.
inline bool gi_sm90_applies(bool half, int64_t m, int64_t k, int64_t tile, bool slots_aligned, bool cols_runs,
                            bool gy_vec, const DeviceCaps& caps) {
  return half && caps.cc_major == 9 && m > 0 && k > 0 && tile % sm90_gi::kSliceOutputs == 0 && slots_aligned &&
         cols_runs && gy_vec && gi_sm90_smem_bytes(sm90_gi::kMaxChunk) <= caps.smem_optin;
}

// Where it applies, whether it beats v1 (perf_model.py sm90_gi_time against gi_time): its chunk is fixed at
// 240 features, so below ~48 kept features of a tile per chunk (a kept density of 0.2: 80% sparsity) its
// 64-position items are mostly padding and gy's 32 KB per (slice, chunk) dominates, while v1 widens its
// chunk with the sparsity (0.8 x 64 / d features). Density: slots / (tiles x K), as plan_grad_input's.
inline bool gi_sm90_pays(int64_t k, int64_t num_rows, int64_t num_tiles) {
  return num_tiles > 0 && k > 0 && 5 * num_rows >= num_tiles * k;
}

inline GradInputPlan plan_grad_input_sm90(int64_t k, int64_t num_tiles, const DeviceCaps& caps) {
  GradInputPlan p{};
  p.kernel = GradInputKernel::kSm90;
  // as few chunks of at most 240 as K needs, of even widths (a narrow last chunk would cost a whole walk of gy)
  const int64_t chunks = std::max<int64_t>(1, bwd_ceil_div(k, sm90_gi::kMaxChunk));
  const int kc = static_cast<int>(std::max<int64_t>(8, bwd_ceil_div(bwd_ceil_div(k, chunks), 8) * 8));
  if (gi_sm90_smem_bytes(kc) > caps.smem_optin) return p;
  p.kc = kc;
  p.smem = gi_sm90_smem_bytes(kc);
  p.nkc = static_cast<int>(bwd_ceil_div(k, p.kc));
  p.bounds_count = num_tiles * (p.nkc + 1);
  return p;
}

// sm90's parameters: gy's tensor map of this call (box {64 outputs, 128 rows}, 128B swizzle) and the
// layout's per-tile maps of V (the forward's: sm90_encode_tile_maps).
template <typename T>
GiSm90Params<T> gi_sm90_params(const T* gy, int64_t ldg, const CUtensorMap* tile_maps, const DevLayout& layout,
                               int64_t m, int64_t n, int64_t k, int64_t nv, T* gx, int64_t ldx) {
  GiSm90Params<T> p{};
  if (!sm90::encode_tensor_map_2d(&p.gy_map, gy, static_cast<uint64_t>(n), static_cast<uint64_t>(m),
                                  static_cast<uint64_t>(ldg) * 2, sm90_gi::kHalfOutputs, sm90_gi::kBM,
                                  sm90::Swizzle::k128B))
    throw std::runtime_error("tilesparse: cuTensorMapEncodeTiled refused gy's tensor map of grad_input (sm90)");
  p.tile_maps = tile_maps;
  p.layout = layout;
  p.m = m;
  p.n = n;
  p.k = k;
  p.nv = nv;
  p.gx = gx;
  p.ldx = ldx;
  p.gx_vec = reinterpret_cast<uintptr_t>(gx) % 16 == 0 && ldx % 8 == 0;
  return p;
}

// sm90: the chunk bounds, then the grid (chunks x 128-row blocks) in pieces of 65535 blocks along y.
template <typename T, typename Launch>
void run_grad_input_sm90(const GradInputPlan& plan, GiSm90Params<T> p, int32_t* bounds, Launch&& launch) {
  launch_chunk_bounds(launch, p.layout, p.k, plan.kc, plan.nkc, bounds);
  p.bounds = bounds;
  p.kc = plan.kc;
  p.nkc = plan.nkc;
  const int64_t mblocks = bwd_ceil_div(p.m, sm90_gi::kBM);
  for (int64_t mb = 0; mb < mblocks; mb += kMaxGridY) {
    p.mblock_offset = mb;
    // a cluster launch of one CTA, as the other sm90 kernels (the emulation then runs it under its seeded
    // schedules, late TMA delivery included)
    launch.cluster(tw_gi_sm90_kernel<T>,
                   dim3(static_cast<unsigned>(p.nkc), static_cast<unsigned>(std::min(mblocks - mb, kMaxGridY))),
                   dim3(sm90_gi::kThreads), 1, plan.smem, p);
  }
}

template <typename T, typename Acc, typename Launch>
void run_grad_input(const GradInputPlan& plan, GradInputParams<T, Acc> p, int32_t* bounds, Launch&& launch) {
  launch_chunk_bounds(launch, p.layout, p.k, plan.kc, plan.nkc, bounds);
  p.bounds = bounds;
  p.kc = plan.kc;
  p.nkc = plan.nkc;
  auto go = [&](auto kernel, int bm, int threads, int smem) {
    const int64_t mblocks = bwd_ceil_div(p.m, bm);
    for (int64_t mb = 0; mb < mblocks; mb += kMaxGridY) {
      p.mblock_offset = mb;
      launch(kernel, dim3(static_cast<unsigned>(p.nkc), static_cast<unsigned>(std::min(mblocks - mb, kMaxGridY))),
             dim3(threads), smem, p);
    }
  };
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    go(tw_grad_input_simt_kernel<T>, kGiSimtBM, 256, gi_simt_smem_bytes<T>());
  } else {
    go(tw_grad_input_mma_kernel<T, kGiBM, kGiNB, kGiBK, kGiWarpsM, kGiWarpsN, kGiStages>, kGiBM,
       kGiWarpsM * kGiWarpsN * 32, plan.smem);
  }
}

// ---------------------------------------------------------------------------
// grad_values: gV_t = gy[:, cols_t]^T @ x[:, rows_t], a reduction over M
// ---------------------------------------------------------------------------
constexpr int kGvBK = 32, kGvBNK = 128, kGvStages = 3;

enum class GradValuesKernel : int {
  kSimt = 0,
  kMma64 = 1,
  kMma128 = 2,
  kV2 = 3,
  kSm90U = 4,  // sm_90a, unit-16 layouts: TMA boxes of gy and the kept runs, wgmma SS with both operands MN-major
};
inline const char* grad_values_kernel_name(GradValuesKernel k) {
  switch (k) {
    case GradValuesKernel::kSimt: return "simt";
    case GradValuesKernel::kMma64: return "mma_bmj64";
    case GradValuesKernel::kMma128: return "mma_bmj128";
    case GradValuesKernel::kV2: return "v2";
    case GradValuesKernel::kSm90U: return "sm90u";
  }
  return "?";
}

// The problem, as the plan sees it.
struct GradValuesShape {
  int64_t m, k;
  int64_t tile, num_tiles;
  int64_t num_rows;  // slots of the layout
  int64_t max_rows;  // the largest tile's slot count (known once the layout was checked; else k)
  int64_t nv;
  bool half;         // fp16/bf16 (tensor cores), else fp32/fp64 (SIMT)
  bool x_vec;        // x 16-byte aligned with rows of whole 16-byte units
  // sm_90a (set by the operator from the layout's host cache; sm90_layout.cuh)
  bool gy_vec = false;       // grad_out 16-byte aligned with rows of whole 16-byte units
  bool sm90_layout = false;  // unit-16 runs, slots % 8 == 0, every slice's columns one run, tile % 128 == 0
  int sm90_cluster = 1;      // sm90_gv_cluster
  int64_t sm90_entries = 0;  // entries of sm90_gv_item_table for that cluster
};

struct GradValuesPlan {
  GradValuesKernel kernel;
  int bj = 0, bk = 0, row_step = 0;  // v1 block shape: outputs x kept features; rows per M step
  int jchunks = 1, kchunks = 1;      // v1
  int kc = 0, nchunks = 0;           // v2: x chunk width, chunks
  int smem = 0;                      // dynamic shared memory per block
  int64_t groups = 0;                // v2: blocks of 4 slices
  int64_t bounds_count = 0;          // v2: int32 workspace, chunk bounds
  int64_t splits = 1;                // M-splits (grid.y)
  int64_t split_rows = 0;
  int64_t ws_count = 0;              // Acc workspace [splits, nv] when splits > 1
  // sm90u
  int cluster = 1;
  int64_t split_tokens = 0;          // tokens per M-range (a multiple of 64)
  int64_t items = 0;                 // entries x splits
  int64_t grid = 0;                  // CTAs (a multiple of cluster)
};

// sm90u: the M-ranges. A cluster's item is one entry over one range; the
// persistent grid runs ceil(items / clusters) rounds. More ranges fill the
// last round but add their fp32 partials (written and read once more) and a
// second launch: pick the count with the least of rounds x the item's tensor
// time + the partials' traffic, under priors (a CTA's wgmma rate ~5 TFLOP/s,
// HBM ~3 TB/s; H100 SXM), up to 16 ranges of at least 512 tokens.
// The most M-ranges the sm90u plan cuts: each at least 512 tokens (the partials' write and read must stay
// small beside a range's work), at most 16.
inline int64_t gv_sm90u_max_splits(int64_t m) { return std::max<int64_t>(1, std::min<int64_t>(16, m / 512)); }

inline void plan_grad_values_sm90u(GradValuesPlan& p, const GradValuesShape& s, const DeviceCaps& caps) {
  p.cluster = s.sm90_cluster;
  const int resident = caps.sm90_clusters[p.cluster == 4 ? 2 : p.cluster == 2 ? 1 : 0];
  const int64_t clusters = std::max<int64_t>(1, resident > 0 ? resident : caps.num_sms / p.cluster);
  const double item_flop = 2.0 * static_cast<double>(s.m) * sm90u_gv::kOutputs * sm90u_gv::kCtaPositions;
  double best = 0;
  int64_t best_splits = 1;
  for (int64_t splits = 1; splits <= gv_sm90u_max_splits(s.m); ++splits) {
    const double rounds = static_cast<double>(bwd_ceil_div(s.sm90_entries * splits, clusters));
    const double t = rounds * item_flop / splits / 5e12 + (splits > 1 ? 8.0 * splits * s.nv / 3e12 + 4e-6 : 0.0);
    if (splits == 1 || t < best) {
      best = t;
      best_splits = splits;
    }
  }
  p.split_tokens = bwd_ceil_div(bwd_ceil_div(s.m, best_splits), sm90u_gv::kStageTokens) * sm90u_gv::kStageTokens;
  p.splits = bwd_ceil_div(s.m, p.split_tokens);
  p.split_rows = p.split_tokens;
  p.items = s.sm90_entries * p.splits;
  p.grid = std::min<int64_t>(p.items, clusters) * p.cluster;
  p.smem = gv_sm90u_smem_bytes();
  p.ws_count = p.splits > 1 ? p.splits * s.nv : 0;
}

// v2's chunk width: about 112 kept positions of a slice per chunk (1.75 of
// its 64-position items; 8 warps take 8 items per pass, so one pass is the
// rule even where a chunk keeps more than average), in [128, 512], within
// shared memory, no wider than K needs.
inline int gv_v2_chunk_width(int64_t k, double density, int smem_optin) {
  int64_t kc = density > 0 ? static_cast<int64_t>(112.0 / density) / 128 * 128 : kGv2KcMax;
  kc = std::max<int64_t>(128, std::min<int64_t>(kc, kGv2KcMax));
  kc = std::min<int64_t>(kc, std::max<int64_t>(128, bwd_ceil_div(k, 128) * 128));
  while (kc > 128 && gv_v2_smem_bytes(static_cast<int>(kc)) > smem_optin) kc -= 128;
  return gv_v2_smem_bytes(static_cast<int>(kc)) <= smem_optin ? static_cast<int>(kc) : 0;
}

// `force` (tests): run that kernel where it applies instead of the choice below.
inline GradValuesPlan plan_grad_values(const GradValuesShape& s, const DeviceCaps& caps,
                                       const GradValuesKernel* force = nullptr) {
  GradValuesPlan p{};
  // sm_90a: unit-16 layouts whose slices are column runs, M >= 256, and enough CTAs to fill the GPU at the
  // plan's most M-ranges (entries x cluster x min(16, M / 512) >= SMs): with fewer (a 768 x 768 layer at 75%
  // on an H100: 6 entries of 1 CTA) the kernel runs on a fraction of the SMs and v2 wins (perf_model.py
  // gv_plan: 0.91x vs v2's 1.08x at M = 16384). Forcing sm90 (gpu_check's timing) skips only that preference.
  const bool sm90u_applies = s.half && caps.cc_major == 9 && s.sm90_layout && s.x_vec && s.gy_vec && s.m >= 256 &&
                             s.sm90_entries > 0 && s.sm90_cluster > 0 && gv_sm90u_smem_bytes() <= caps.smem_optin;
  const bool sm90u_fills = s.sm90_entries * s.sm90_cluster * gv_sm90u_max_splits(s.m) >= caps.num_sms;
  const bool sm90u_forced = force != nullptr && *force == GradValuesKernel::kSm90U;
  if (sm90u_applies && (force == nullptr ? sm90u_fills : sm90u_forced)) {
    p.kernel = GradValuesKernel::kSm90U;
    plan_grad_values_sm90u(p, s, caps);
    return p;
  }
  const double density = s.num_tiles > 0 && s.k > 0 ? static_cast<double>(s.num_rows) / (s.num_tiles * s.k) : 1.0;
  const int kc = s.half && s.x_vec && s.tile % kGv2Slice == 0 && s.k > 0 ? gv_v2_chunk_width(s.k, density, caps.smem_optin)
                                                                         : 0;
  const GradValuesKernel v1 = s.tile <= 64 ? GradValuesKernel::kMma64 : GradValuesKernel::kMma128;
  if (!s.half) {
    p.kernel = GradValuesKernel::kSimt;
  } else {
    p.kernel = kc > 0 ? GradValuesKernel::kV2 : v1;
    if (force != nullptr && *force != GradValuesKernel::kSimt && *force != GradValuesKernel::kSm90U &&
        (*force != GradValuesKernel::kV2 || kc > 0))
      p.kernel = *force == GradValuesKernel::kV2 ? GradValuesKernel::kV2 : v1;
  }
  int64_t active = 1;  // blocks of one split
  if (p.kernel == GradValuesKernel::kV2) {
    p.kc = kc;
    p.nchunks = static_cast<int>(bwd_ceil_div(s.k, kc));
    p.smem = gv_v2_smem_bytes(kc);
    p.groups = bwd_ceil_div(s.num_tiles * (s.tile / kGv2Slice), kGv2Slices);
    p.bounds_count = s.num_tiles * (p.nchunks + 1);
    p.row_step = kGv2BK;
    active = p.groups * p.nchunks;
  } else {
    if (p.kernel == GradValuesKernel::kSimt) {
      p.bj = kGvSimtBJ;
      p.bk = kGvSimtBK;
      p.row_step = kGvSimtBM;
    } else {
      p.bj = p.kernel == GradValuesKernel::kMma64 ? 64 : 128;
      p.bk = kGvBNK;
      p.row_step = kGvBK;
      p.smem = p.bj == 64 ? gv_mma_smem_bytes<64, kGvBNK, kGvBK, kGvStages>()
                          : gv_mma_smem_bytes<128, kGvBNK, kGvBK, kGvStages>();
    }
    p.jchunks = static_cast<int>(bwd_ceil_div(s.tile, p.bj));
    p.kchunks = static_cast<int>(std::max<int64_t>(1, bwd_ceil_div(s.max_rows, p.bk)));
    const int64_t avg_k = s.num_tiles > 0 ? s.num_rows / s.num_tiles : 0;
    active = s.num_tiles * p.jchunks * std::max<int64_t>(1, bwd_ceil_div(avg_k, p.bk));
  }
  // Splits of M so that about two blocks per SM are busy; at least 512 rows each.
  const int64_t want = bwd_ceil_div(2 * caps.num_sms, std::max<int64_t>(1, active));
  const int64_t splits = std::max<int64_t>(1, std::min({want, bwd_ceil_div(s.m, 512), kMaxGridY}));
  p.split_rows = std::max<int64_t>(p.row_step, bwd_ceil_div(bwd_ceil_div(s.m, splits), p.row_step) * p.row_step);
  p.splits = std::max<int64_t>(1, bwd_ceil_div(s.m, p.split_rows));
  p.ws_count = p.splits > 1 ? p.splits * s.nv : 0;
  return p;
}

template <typename T>
struct ToHalf16 {
  __device__ uint16_t operator()(float v) const { return Half16<T>::from_float(v); }
};
struct SameValue {
  template <typename A>
  __device__ A operator()(A v) const {
    return v;
  }
};

// bounds: int32 workspace of plan.bounds_count (v2), ws: Acc workspace of plan.ws_count.
// sm90u: the tensor maps of this call (gy box {64, 32}, 128B swizzle; x box
// {16, 64}, 32B swizzle) and one persistent cluster launch.
template <typename T, typename Launch>
void run_grad_values_sm90u(const GradValuesPlan& plan, const GradValuesParams<T, float>& a, float* ws, Launch&& launch) {
  GvSm90uParams<T> p{};
  if (!sm90::encode_tensor_map_2d(&p.gy_map, a.gy, static_cast<uint64_t>(a.n), static_cast<uint64_t>(a.m),
                                  static_cast<uint64_t>(a.ldg) * 2, 64, sm90u_gv::kGyBoxTokens, sm90::Swizzle::k128B) ||
      !sm90::encode_tensor_map_2d(&p.x_map, a.x, static_cast<uint64_t>(a.k), static_cast<uint64_t>(a.m),
                                  static_cast<uint64_t>(a.ldx) * 2, 16, sm90u_gv::kStageTokens, sm90::Swizzle::k32B))
    throw std::runtime_error("tilesparse: cuTensorMapEncodeTiled refused a tensor map of grad_values (sm90u)");
  p.layout = a.layout;
  p.slices = a.sm90_slices;
  p.num_slices = a.sm90_num_slices;
  p.entries = a.sm90_entries;
  p.num_entries = a.sm90_num_entries;
  p.m = a.m;
  p.k = a.k;
  p.n = a.n;
  p.nv = a.nv;
  p.splits = static_cast<int32_t>(plan.splits);
  p.split_tokens = plan.split_tokens;
  p.items = plan.items;
  p.out = a.out;
  p.ws = plan.splits > 1 ? ws : nullptr;
  const dim3 grid(static_cast<unsigned>(plan.grid)), block(sm90u_gv::kThreads);
  switch (plan.cluster) {
    case 4: launch.cluster(tw_gv_sm90u_kernel<T, 4>, grid, block, 4, plan.smem, p); break;
    case 2: launch.cluster(tw_gv_sm90u_kernel<T, 2>, grid, block, 2, plan.smem, p); break;
    default: launch.cluster(tw_gv_sm90u_kernel<T, 1>, grid, block, 1, plan.smem, p); break;
  }
}

template <typename T, typename Acc, typename Launch>
void run_grad_values(const GradValuesPlan& plan, GradValuesParams<T, Acc> p, int32_t* bounds, Acc* ws,
                     Launch&& launch) {
  if (p.nv == 0 || p.layout.num_tiles == 0) return;
  p.split_rows = plan.split_rows;
  p.ws = plan.splits > 1 ? ws : nullptr;
  constexpr bool simt = std::is_same_v<T, float> || std::is_same_v<T, double>;
  if constexpr (simt) {
    p.jchunks = plan.jchunks;
    p.kchunks = plan.kchunks;
    launch(tw_grad_values_simt_kernel<T>,
           dim3(static_cast<unsigned>(p.layout.num_tiles * plan.jchunks * plan.kchunks),
                static_cast<unsigned>(plan.splits)),
           dim3(256), 0, p);
  } else if (plan.kernel == GradValuesKernel::kSm90U) {
    run_grad_values_sm90u<T>(plan, p, p.ws, launch);
  } else if (plan.kernel == GradValuesKernel::kV2) {
    launch_chunk_bounds(launch, p.layout, p.k, plan.kc, plan.nchunks, bounds);
    p.bounds = bounds;
    p.kc = plan.kc;
    p.nchunks = plan.nchunks;
    p.num_slices = p.layout.num_tiles * (p.layout.tile / kGv2Slice);
    launch(tw_grad_values_v2_kernel<T>,
           dim3(static_cast<unsigned>(plan.groups * plan.nchunks), static_cast<unsigned>(plan.splits)),
           dim3(kGv2Warps * 32), plan.smem, p);
  } else {
    p.jchunks = plan.jchunks;
    p.kchunks = plan.kchunks;
    const dim3 grid(static_cast<unsigned>(p.layout.num_tiles * plan.jchunks * plan.kchunks),
                    static_cast<unsigned>(plan.splits));
    if (plan.kernel == GradValuesKernel::kMma64) {
      launch(tw_grad_values_mma_kernel<T, 64, kGvBNK, kGvBK, 2, 4, kGvStages>, grid, dim3(256), plan.smem, p);
    } else {
      launch(tw_grad_values_mma_kernel<T, 128, kGvBNK, kGvBK, 2, 4, kGvStages>, grid, dim3(256), plan.smem, p);
    }
  }
  if (plan.splits > 1) {
    // half types are written as raw uint16_t, fp32/fp64 as themselves
    using Out = std::conditional_t<simt, T, uint16_t>;
    const int64_t blocks = std::min<int64_t>(bwd_ceil_div(p.nv, 256), 4096);
    if constexpr (simt) {
      launch(reduce_splits_kernel<T, Acc, SameValue>, dim3(static_cast<unsigned>(blocks)), dim3(256), 0,
             const_cast<const Acc*>(p.ws), plan.splits, p.nv, reinterpret_cast<Out*>(p.out), SameValue());
    } else {
      launch(reduce_splits_kernel<Out, Acc, ToHalf16<T>>, dim3(static_cast<unsigned>(blocks)), dim3(256), 0,
             const_cast<const Acc*>(p.ws), plan.splits, p.nv, reinterpret_cast<Out*>(p.out), ToHalf16<T>());
    }
  }
}

}  // namespace tilesparse::cuda
