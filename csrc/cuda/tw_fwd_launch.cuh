// Launch configuration of the tw_linear forward, torch-free: which kernel
// runs (plan_fwd) and the launches that run it (run_fwd), parameterised by a
// `launch(kernel, grid, block, smem_bytes, params...)` callable that also has
// `launch.cluster(kernel, grid, block, cluster_x, smem_bytes, params...)`
// (clusters of cluster_x blocks along x: the sm90 kernels). The CUDA
// operator passes one that launches on the current stream; the host
// emulation (tests/cuda_emulation) one that runs the blocks on CPU threads,
// so both execute this very logic. The host-side helpers of the sm90 path
// (per-tile tensor maps, kept counts, slice table: sm90_layout.cuh)
// are shared, so that the operator's cache and the emulation tests build
// them the same way.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "tw_fwd_kernels.cuh"
#include "tw_fwd_sm90_kernels.cuh"
#include "tw_fwd_sm90u_kernels.cuh"
#include "tw_fwd_v2_kernels.cuh"
#include "sm90_layout.cuh"

namespace tilesparse::cuda {

enum class FwdKernel : int {
  kSimt = 0,     // fp32/fp64
  kMmaV1 = 1,    // tensor cores, x gathered per tile (any tile width, any alignment)
  kV2 = 2,       // tensor cores, x once per 128-row M-block (tile % 64 == 0, x 16-byte rows)
  kV2Small = 3,  // the same for M <= 64 (16/32/64-row blocks), K-split to fill the device
  kSm90 = 4,     // sm_90a: TMA + wgmma, warp-specialized, clusters (compute capability 9.x, tile % 128 == 0)
  kSm90Small = 5,  // the same for M <= 64: 64-row items, K-split reduced by the last CTA (one launch)
  kSm90U = 6,      // sm_90a design U: unit-16 layouts (every kept run 16 consecutive features), A by TMA, wgmma SS,
                   // M > 64. As a `force`: the sm90 family (U where it applies, else design A); kSm90: design A only
  kSm90USmall = 7, // design U for M <= 64: two slices per CTA, K-split over the kept steps, last-CTA reduction
};

// The sm_90a kernels (design A and U, both sizes of M).
inline bool is_sm90_kernel(FwdKernel k) {
  return k == FwdKernel::kSm90 || k == FwdKernel::kSm90Small || k == FwdKernel::kSm90U || k == FwdKernel::kSm90USmall;
}

inline const char* fwd_kernel_name(FwdKernel k) {
  switch (k) {
    case FwdKernel::kSimt: return "simt";
    case FwdKernel::kMmaV1: return "mma_v1";
    case FwdKernel::kV2: return "v2";
    case FwdKernel::kV2Small: return "v2_small_m";
    case FwdKernel::kSm90: return "sm90";
    case FwdKernel::kSm90Small: return "sm90_small_m";
    case FwdKernel::kSm90U: return "sm90u";
    case FwdKernel::kSm90USmall: return "sm90u_small_m";
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
  // sm90 (all false / 0: the sm90 kernels do not apply)
  bool v_vec16 = false;      // values 16-byte aligned
  bool sm90_layout = false;  // the host copy of the layout is known and every tile's slots % 8 == 0
  int64_t num_slices = 0;    // entries of the slice table (128-output slices with outputs)
  bool sm90_unit16 = false;  // every tile's kept features are runs of 16 consecutive ones (sm90_unit16_runs)
  int64_t v_bytes = 0;       // bytes of the values (design U's panel: the V that stays in L2)
  int64_t max_kept = 0;      // the largest kept count of a tile (design U's K-split at small M); 0: unknown (K)
};

struct FwdPlan {
  FwdKernel kernel;
  int bm = 0;                // rows per block
  int splits = 1;            // K-splits (v2: grid.z; sm90: work items)
  int chunks_per_split = 0;  // v2, sm90
  int nchunks = 0;           // v2: ceil(k / kV2KC); sm90: ceil(k / 64)
  int64_t bounds_count = 0;  // int32 workspace: chunk bounds (v2; sm90 with K-split)
  int64_t ws_floats = 0;     // fp32 workspace: split partials
  int64_t covered_bytes = 0; // uint8 workspace: outputs no tile computes
  // sm90
  int cluster = 1;             // CTAs per cluster (x multicast)
  int64_t groups = 0;          // slice groups of 2 * cluster slices
  int64_t items = 0;           // work items: groups * M-blocks * splits
  int64_t grid = 0;            // CTAs (persistent: a multiple of cluster)
  int64_t counters_count = 0;  // int32 workspace: arrival counters (K-split), zero between launches
  // sm90u (cluster, items, grid above)
  int64_t mgroups = 0;  // M-groups of cluster x 256 rows
  int64_t panel = 0;    // slices per panel
  int steps_per_split = 0;  // sm90u small M: kept k16 steps per K-split (whole B stages)
};

inline int64_t fwd_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The sm90 plan: cluster size, work items, persistent grid, K-split.
inline void plan_fwd_sm90(FwdPlan& p, const FwdShape& s, const DeviceCaps& caps, int force_cluster) {
  const int64_t ns = s.num_slices;
  // Clusters of 4 share each x chunk 4 ways; they need two slice groups or
  // more, with at most a quarter of the consumers idle in the last group.
  int c = 1;
  for (int cand : {4, 2}) {
    const int64_t slots = fwd_ceil_div(ns, 2 * cand) * 2 * cand;
    if (ns >= 4 * cand && 4 * (slots - ns) <= slots) {
      c = cand;
      break;
    }
  }
  if (force_cluster == 1 || force_cluster == 2 || force_cluster == 4) c = force_cluster;
  p.cluster = c;
  p.bm = p.kernel == FwdKernel::kSm90 ? 128 : 64;
  p.groups = fwd_ceil_div(ns, 2 * c);
  p.nchunks = static_cast<int>(fwd_ceil_div(s.k, sm90_fwd::kChunkK));
  const int64_t mblocks = fwd_ceil_div(s.m, p.bm);
  // the persistent grid: as many clusters as are resident at once (a second wave would double the tail)
  const int resident = caps.sm90_clusters[c == 4 ? 2 : c == 2 ? 1 : 0];
  const int64_t max_clusters = std::max<int64_t>(1, resident > 0 ? resident : caps.num_sms / c);
  int64_t splits = 1;
  if (p.kernel == FwdKernel::kSm90Small && p.groups < max_clusters) {
    // one cluster per SM group is resident at a time: split K until they are all busy
    splits = std::min<int64_t>(p.nchunks, fwd_ceil_div(max_clusters, p.groups));
    const int64_t wcols = p.groups * 2 * c * sm90_fwd::kSliceN;
    while (splits > 1 && splits * s.m * wcols > (int64_t(1) << 26)) splits /= 2;  // workspace <= 256 MiB
  }
  p.chunks_per_split = static_cast<int>(fwd_ceil_div(p.nchunks, splits));
  p.splits = static_cast<int>(fwd_ceil_div(p.nchunks, p.chunks_per_split));
  p.items = p.groups * mblocks * p.splits;
  p.grid = std::min<int64_t>(p.items, max_clusters) * c;
  if (p.splits > 1) {
    p.bounds_count = s.num_tiles * (p.nchunks + 1);
    p.ws_floats = p.splits * s.m * p.groups * 2 * c * sm90_fwd::kSliceN;
    p.counters_count = p.groups;
  }
}

// Design U's plan: clusters along M (each rank one 256-row M-block of the
// same slice, B multicast), items (slice, M-group) in panels of the slices
// whose V fits 60% of L2, so x is streamed from HBM once per panel.
inline void plan_fwd_sm90u(FwdPlan& p, const FwdShape& s, const DeviceCaps& caps, int force_cluster) {
  const int64_t mblocks = fwd_ceil_div(s.m, sm90u_fwd::kBM);
  int c = 1;
  for (int cand : {4, 2})  // at most a quarter of the cluster's M-blocks past M
    if (mblocks >= cand && 4 * (fwd_ceil_div(mblocks, cand) * cand - mblocks) <= fwd_ceil_div(mblocks, cand) * cand) {
      c = cand;
      break;
    }
  if (force_cluster == 1 || force_cluster == 2 || force_cluster == 4) c = force_cluster;
  p.cluster = c;
  p.bm = sm90u_fwd::kBM;
  p.mgroups = fwd_ceil_div(mblocks, c);
  const int64_t l2 = caps.l2_bytes > 0 ? caps.l2_bytes : (int64_t(50) << 20);
  const int64_t per_slice = std::max<int64_t>(1, s.v_bytes / std::max<int64_t>(1, s.num_slices));
  p.panel = std::clamp<int64_t>((l2 * 3 / 5) / per_slice, 1, std::max<int64_t>(1, s.num_slices));
  p.items = s.num_slices * p.mgroups;
  const int resident = caps.sm90_clusters[c == 4 ? 2 : c == 2 ? 1 : 0];
  const int64_t max_clusters = std::max<int64_t>(1, resident > 0 ? resident : caps.num_sms / c);
  p.grid = std::min<int64_t>(p.items, max_clusters) * c;
}

// Design U at small M: slice pairs, and a K-split over the kept steps (in
// whole B stages). The split count minimises the busiest CTA's work in B
// stages (each 2 x 16 KB of values from HBM) plus the last CTA's reduction
// (splits x m rows x 256 outputs of fp32 from L2, which one SM reads ~4x
// faster than its share of HBM: 128 KB per stage-equivalent); partials <= 256 MiB.
inline void plan_fwd_sm90u_small(FwdPlan& p, const FwdShape& s, const DeviceCaps& caps) {
  p.cluster = 1;
  p.bm = sm90u_fwd::kSmallBM;
  p.groups = fwd_ceil_div(s.num_slices, 2);
  const int64_t kept = s.max_kept > 0 ? s.max_kept : s.k;
  const int64_t stages = std::max<int64_t>(1, fwd_ceil_div(fwd_ceil_div(kept, sm90_fwd::kStepK), sm90_fwd::kStepsPerStage));
  const int resident = caps.sm90_clusters[0];
  const int64_t max_ctas = std::max<int64_t>(1, resident > 0 ? resident : caps.num_sms);
  const int64_t wcols = p.groups * 2 * sm90_fwd::kSliceN;
  int64_t splits = 1;
  double best = -1.0;
  for (int64_t z = 1; z <= std::min<int64_t>(stages, 64); ++z) {
    if (z > 1 && z * s.m * wcols > (int64_t(1) << 26)) break;
    const double cost = static_cast<double>(fwd_ceil_div(p.groups * z, max_ctas) * fwd_ceil_div(stages, z)) +
                        (z > 1 ? static_cast<double>(z * s.m) / 128.0 : 0.0);
    if (best < 0 || cost < best) {
      best = cost;
      splits = z;
    }
  }
  const int64_t per = fwd_ceil_div(stages, splits);  // B stages per split
  p.steps_per_split = static_cast<int>(per * sm90_fwd::kStepsPerStage);
  p.splits = static_cast<int>(fwd_ceil_div(stages, per));
  p.items = p.groups * p.splits;
  p.grid = std::min<int64_t>(p.items, max_ctas);
  if (p.splits > 1) {
    p.ws_floats = p.splits * s.m * wcols;
    p.counters_count = p.groups;
  }
}

// `force` (tests, TILESPARSE_CUDA_FWD_KERNEL): run that kernel where it
// applies instead of the choice below (sm90 -> v2 -> v1 as each applies);
// `force_cluster` (tests): the sm90 cluster size.
inline FwdPlan plan_fwd(const FwdShape& s, const DeviceCaps& caps, const FwdKernel* force = nullptr,
                        int force_cluster = 0) {
  FwdPlan p;
  p.covered_bytes = std::min(s.num_cols, s.num_tiles * s.tile) < s.n ? s.n : 0;
  if (!s.half) {
    p.kernel = FwdKernel::kSimt;
    p.bm = kSimtBM;
    return p;
  }
  const bool v2_ok = s.x_vec && s.tile % kV2Slice == 0 && s.k > 0;
  // sm90: Hopper; TMA needs 16-byte x rows and values, V_t rows of whole 16 bytes (slots % 8), and
  // int32 coordinates; the plan needs the host copy of the layout (slice table, tensor maps).
  const bool sm90_ok = caps.cc_major == 9 && v2_ok && s.v_vec16 && s.sm90_layout && s.tile % sm90_fwd::kSliceN == 0 &&
                       s.num_slices > 0 && s.m < (int64_t(1) << 31) && s.k < (int64_t(1) << 31) &&
                       fwd_sm90_smem_bytes<128>() <= caps.smem_optin;
  FwdKernel kind = sm90_ok ? FwdKernel::kSm90 : (v2_ok ? FwdKernel::kV2 : FwdKernel::kMmaV1);
  if (force != nullptr) {
    const bool forced_sm90 = is_sm90_kernel(*force);
    const bool forced_v2 = *force == FwdKernel::kV2 || *force == FwdKernel::kV2Small;
    if (*force == FwdKernel::kMmaV1) kind = FwdKernel::kMmaV1;
    else if (forced_v2 && v2_ok) kind = FwdKernel::kV2;
    else if (forced_sm90 && !sm90_ok) kind = v2_ok ? FwdKernel::kV2 : FwdKernel::kMmaV1;
  }
  if (kind == FwdKernel::kSm90 || kind == FwdKernel::kV2) {  // the small-M variants
    if (s.m <= 64) kind = kind == FwdKernel::kSm90 ? FwdKernel::kSm90Small : FwdKernel::kV2Small;
    if (force != nullptr && *force == FwdKernel::kV2 && kind == FwdKernel::kV2Small) kind = FwdKernel::kV2;
  }
  // design U where the layout is made of 16-runs (design A stays for the rest, and for M <= 64)
  const bool design_a_only = force != nullptr && *force == FwdKernel::kSm90;
  if (kind == FwdKernel::kSm90 && s.sm90_unit16 && !design_a_only && fwd_sm90u_smem_bytes() <= caps.smem_optin) {
    p.kernel = FwdKernel::kSm90U;
    plan_fwd_sm90u(p, s, caps, force_cluster);
    return p;
  }
  if (kind == FwdKernel::kSm90Small && s.sm90_unit16 && !design_a_only && fwd_sm90u_small_smem_bytes() <= caps.smem_optin) {
    p.kernel = FwdKernel::kSm90USmall;
    plan_fwd_sm90u_small(p, s, caps);
    return p;
  }
  p.kernel = kind;
  if (kind == FwdKernel::kSm90 || kind == FwdKernel::kSm90Small) {
    plan_fwd_sm90(p, s, caps, force_cluster);
    return p;
  }
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
  // sm90 (device memory, from the layout's host copy: sm90_slice_table, sm90_encode_tile_maps)
  const int32_t* sm90_slices = nullptr;         // the slice table
  int64_t sm90_num_slices = 0;                  // its entries (FwdShape::num_slices)
  const CUtensorMap* sm90_tile_maps = nullptr;  // [num_tiles] tensor maps of the values
};

struct FwdWorkspace {
  int32_t* bounds;   // plan.bounds_count
  float* ws;         // plan.ws_floats
  uint8_t* covered;  // plan.covered_bytes
  bool bounds_ready = false;  // bounds already hold this layout's chunk bounds (cached): skip their kernel
  int32_t* counters = nullptr;  // plan.counters_count, zero (sm90 K-split: the kernel leaves them zero)
};

static __global__ void fill_bytes_kernel(uint8_t* p, int64_t count, uint8_t v) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) p[i] = v;
}

// ---------------------------------------------------------------------------
// Host side of the sm90 path (the layout's part, the per-tile tensor maps
// included: sm90_layout.cuh)
// ---------------------------------------------------------------------------
// Design U's launch: the x tensor map of this call (box {16, 256}, 32B
// swizzle), one persistent cluster launch.
template <typename T, typename Launch>
void run_fwd_sm90u(const FwdPlan& plan, const FwdArgs<T>& a, const FwdWorkspace& w, Launch&& launch) {
  FwdSm90uParams<T> p;
  const bool small = plan.kernel == FwdKernel::kSm90USmall;
  if (!sm90::encode_tensor_map_2d(&p.x_map, a.x, static_cast<uint64_t>(a.k), static_cast<uint64_t>(a.m),
                                  static_cast<uint64_t>(a.ldx) * 2, sm90_fwd::kStepK,
                                  small ? sm90u_fwd::kSmallBM : sm90u_fwd::kBM, sm90::Swizzle::k32B))
    throw std::runtime_error("tilesparse: cuTensorMapEncodeTiled refused the tensor map of x (sm90u forward)");
  p.tile_maps = a.sm90_tile_maps;
  p.layout = a.layout;
  p.slices = a.sm90_slices;
  p.num_slices = a.sm90_num_slices;
  p.m = a.m;
  p.k = a.k;
  p.n = a.n;
  p.nv = a.nv;
  p.bias = a.bias;
  p.y = a.y;
  p.ldy = a.ldy;
  p.mgroups = plan.mgroups;
  p.panel = plan.panel;
  p.items = plan.items;
  p.groups = plan.groups;
  p.splits = plan.splits;
  p.steps_per_split = plan.steps_per_split;
  p.ws = plan.splits > 1 ? w.ws : nullptr;
  p.counters = plan.splits > 1 ? w.counters : nullptr;
  const dim3 grid(static_cast<unsigned>(plan.grid)), block(sm90u_fwd::kThreads);
  if (small) {
    launch.cluster(tw_fwd_sm90u_small_kernel<T>, grid, block, 1, fwd_sm90u_small_smem_bytes(), p);
    return;
  }
  const int smem = fwd_sm90u_smem_bytes();
  switch (plan.cluster) {
    case 4: launch.cluster(tw_fwd_sm90u_kernel<T, 4>, grid, block, 4, smem, p); break;
    case 2: launch.cluster(tw_fwd_sm90u_kernel<T, 2>, grid, block, 2, smem, p); break;
    default: launch.cluster(tw_fwd_sm90u_kernel<T, 1>, grid, block, 1, smem, p); break;
  }
}

// The sm90 launch (kSm90 / kSm90Small): the x tensor map of this call, the
// chunk bounds (K-split, unless cached), one persistent cluster launch.
template <typename T, typename Launch>
void run_fwd_sm90(const FwdPlan& plan, const FwdArgs<T>& a, const FwdWorkspace& w, Launch&& launch) {
  const DevLayout& l = a.layout;
  if (plan.splits > 1 && !w.bounds_ready) launch_chunk_bounds(launch, l, a.k, sm90_fwd::kChunkK, plan.nchunks, w.bounds);
  FwdSm90Params<T> p;
  // x as dims {k, m}: each CTA of a cluster loads bm / cluster rows of a chunk (and multicasts them)
  if (!sm90::encode_tensor_map_2d(&p.x_map, a.x, static_cast<uint64_t>(a.k), static_cast<uint64_t>(a.m),
                                  static_cast<uint64_t>(a.ldx) * 2, sm90_fwd::kChunkK,
                                  static_cast<uint32_t>(plan.bm / plan.cluster), sm90::Swizzle::k128B))
    throw std::runtime_error("tilesparse: cuTensorMapEncodeTiled refused the tensor map of x (sm90 forward)");
  p.tile_maps = a.sm90_tile_maps;
  p.layout = l;
  p.slices = a.sm90_slices;
  p.num_slices = a.sm90_num_slices;
  p.m = a.m;
  p.k = a.k;
  p.n = a.n;
  p.nv = a.nv;
  p.bias = a.bias;
  p.y = a.y;
  p.ldy = a.ldy;
  p.groups = plan.groups;
  p.mblocks = fwd_ceil_div(a.m, plan.bm);
  p.items = plan.items;
  p.splits = plan.splits;
  p.chunks_per_split = plan.chunks_per_split;
  p.nchunks = plan.nchunks;
  p.bounds = w.bounds;
  p.ws = plan.splits > 1 ? w.ws : nullptr;
  p.counters = plan.splits > 1 ? w.counters : nullptr;
  const dim3 grid(static_cast<unsigned>(plan.grid)), block(sm90_fwd::kThreads);
  auto go = [&](auto kernel, int smem) { launch.cluster(kernel, grid, block, plan.cluster, smem, p); };
  if (plan.bm == 128) {
    switch (plan.cluster) {
      case 4: go(tw_fwd_sm90_kernel<T, 128, 4>, fwd_sm90_smem_bytes<128>()); break;
      case 2: go(tw_fwd_sm90_kernel<T, 128, 2>, fwd_sm90_smem_bytes<128>()); break;
      default: go(tw_fwd_sm90_kernel<T, 128, 1>, fwd_sm90_smem_bytes<128>()); break;
    }
  } else {
    switch (plan.cluster) {
      case 4: go(tw_fwd_sm90_kernel<T, 64, 4>, fwd_sm90_smem_bytes<64>()); break;
      case 2: go(tw_fwd_sm90_kernel<T, 64, 2>, fwd_sm90_smem_bytes<64>()); break;
      default: go(tw_fwd_sm90_kernel<T, 64, 1>, fwd_sm90_smem_bytes<64>()); break;
    }
  }
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
  } else if (plan.kernel == FwdKernel::kSm90U || plan.kernel == FwdKernel::kSm90USmall) {
    run_fwd_sm90u<T>(plan, a, w, launch);
  } else if (plan.kernel == FwdKernel::kSm90 || plan.kernel == FwdKernel::kSm90Small) {
    run_fwd_sm90<T>(plan, a, w, launch);
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
    if (!w.bounds_ready) launch_chunk_bounds(launch, l, a.k, kV2KC, plan.nchunks, w.bounds);
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
