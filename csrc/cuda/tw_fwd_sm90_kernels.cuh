// Forward of tw_linear on sm_90a (Hopper): warp-specialized, TMA + wgmma.
//
//   y[m, cols_t[j]] = sum_kk x[m, rows_t[kk]] * V_t[j, kk] + bias[cols_t[j]]
//
// The design is docs/performance.md's ("sm_90a forward", design A); in short:
//
// CTA = 384 threads = 3 warpgroups. WG0 is the producer (setmaxnreg.dec 40):
//   warp 0 streams the dense x chunks x[BM rows, 64 features] (TMA, 128B
//   swizzle, multicast over the cluster), warps 1 and 2 the B stages (TMA of
//   V_t, [128 outputs x 64 positions], 128B swizzle) of consumer WG1 / WG2,
//   one warp per ring so that no producer loop can block another.
//   WG1, WG2 are consumers (setmaxnreg.inc 232): each owns one *slice* (128
//   outputs of one tile) and all BM rows (BM / 64 m64 accumulators of
//   64 fp32 per thread).
// Cluster of C CTAs along x: one work item = (slice group of 2C slices,
//   M-block, K-split); rank r computes table slices 2(gC + r) + {0, 1}. Every
//   rank loads BM / C rows of each x chunk and multicasts them to all C CTAs:
//   each x byte leaves L2 once per cluster. Persistent: cluster c takes items
//   c, c + clusters, ...
// Mainloop of a consumer, per k16 step of its slice (16 kept positions):
//   A (the gathered x[:, rows_t]) is loaded straight into wgmma's register-A
//   fragment from the swizzled x chunk in shared memory (one ldmatrix.x4 per
//   m64 half when the step is two aligned runs of 8 features, else 2-byte
//   loads), walking the x ring one chunk at a time; B is the stage's
//   descriptor; wgmma m64n128k16 RS, fp32 accumulation; wait_group<1> keeps
//   one step in flight (A double-buffered by step parity).
// Epilogue: + bias, scattered to cols_t (one K-split); or (small M, K-split)
//   fp32 partials, the last CTA of a slice group to finish (arrival counter)
//   adds them in split order, writes y and resets the counter: one launch,
//   deterministic.
//
// Synchronisation (every arrow is an mbarrier; slot s of a ring of 4):
//   x_full[s]  (count 1, tx BM*128 B): own producer's expect_tx + C multicast boxes
//   x_empty[s] (count 8C): every consumer warp of every CTA of the cluster
//              (each CTA's producer writes into every CTA's slot s)
//   b_full[w][s]  (count 1, tx 16 KB), b_empty[w][s] (count 4: the warps of WG w,
//              after the wgmma that read the stage completed)
//
// Traffic per work item (bf16): x 2*BM*K / C bytes from L2 per CTA (multicast),
// V 2*128*kr_t bytes per slice (TMA, once), y 2*BM*128 per slice once; no
// shared-memory stores by threads (A never goes through shared memory: it
// saves a write and a wgmma read per A byte and needs no proxy fence).
#pragma once

#include <type_traits>

#include "tw_device.cuh"

#ifndef TILESPARSE_PTX_EMULATION
#include <cuda.h>

#include "sm90_ptx.cuh"
#endif

// The kernel's body exists for sm_90a and in the host emulation; the sm_80
// pass of a "8.0;9.0a" build compiles a trap (the plan launches it on
// compute capability 9.x only).
#if defined(TILESPARSE_PTX_EMULATION) || (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#define TS_FWD_SM90_BODY 1
#else
#define TS_FWD_SM90_BODY 0
#endif

namespace tilesparse::cuda {

namespace sm90_fwd {
constexpr int kThreads = 384;    // producer WG + 2 consumer WGs
constexpr int kConsumers = 2;    // consumer warpgroups (slices per CTA)
constexpr int kChunkK = 64;      // features per x chunk: one 128-byte swizzle row
constexpr int kSliceN = 128;     // outputs per slice (wgmma N)
constexpr int kStepK = 16;       // positions per wgmma (K)
constexpr int kStageK = 64;      // positions per B stage: one 128-byte swizzle row
constexpr int kStepsPerStage = kStageK / kStepK;
constexpr int kStagesX = 4;      // x ring
constexpr int kStagesB = 4;      // B ring per consumer
constexpr uint32_t kBStageBytes = kSliceN * kStageK * 2;  // 16 KB
constexpr int kBoxRowsB = 32;    // rows of a values TMA box: a B stage is 4 boxes (design U multicasts them)
constexpr uint32_t kSwizzleAtom = 1024;                   // 8 rows x 128 B: TMA / wgmma alignment
constexpr int kRegsProducer = 40, kRegsConsumer = 232;    // 128 * (40 + 2 * 232) <= 64K registers

template <int BM>
constexpr uint32_t x_chunk_bytes() {
  return BM * kChunkK * 2;
}

// Shared memory of one CTA (byte offsets from a 1024-aligned base).
template <int BM>
struct SharedLayout {
  static constexpr uint32_t kX = 0;                                        // [kStagesX][BM][64] x, swizzled
  static constexpr uint32_t kB = kX + kStagesX * x_chunk_bytes<BM>();      // [2][kStagesB][128][64] V, swizzled
  static constexpr uint32_t kBars = kB + kConsumers * kStagesB * kBStageBytes;
  static constexpr uint32_t kXFull = kBars;                                // uint64_t[kStagesX]
  static constexpr uint32_t kXEmpty = kXFull + 8 * kStagesX;               // uint64_t[kStagesX]
  static constexpr uint32_t kBFull = kXEmpty + 8 * kStagesX;               // uint64_t[2][kStagesB]
  static constexpr uint32_t kBEmpty = kBFull + 8 * kConsumers * kStagesB;  // uint64_t[2][kStagesB]
  static constexpr uint32_t kFlag = kBEmpty + 8 * kConsumers * kStagesB;   // uint32_t: "this CTA reduces"
  static constexpr uint32_t kBytes = kFlag + 16;
};
}  // namespace sm90_fwd

// The block's dynamic shared memory from its first swizzle-atom (1024-byte) boundary: TMA's and wgmma's
// 128B-swizzle patterns follow the address bits. The kernels reserve kSwizzleAtom bytes of slack for it.
__device__ __forceinline__ unsigned char* swizzle_aligned_smem() {
  unsigned char* raw = dynamic_smem();
  const uint32_t a = smem_addr(raw);
  return raw + ((sm90_fwd::kSwizzleAtom - a % sm90_fwd::kSwizzleAtom) % sm90_fwd::kSwizzleAtom);
}

// Keeps the compiler from moving reads or writes of wgmma's registers across
// the wgmma fence / wait around them (CUTLASS's warpgroup_fence_operand): the
// asm statements order the instructions, not the register values.
__device__ __forceinline__ void fence_operand(float& r) {
#ifndef TILESPARSE_PTX_EMULATION
  asm volatile("" : "+f"(r)::"memory");
#else
  (void)r;
#endif
}

// Dynamic shared memory of the kernel: the layout plus slack to align its base.
template <int BM>
constexpr int fwd_sm90_smem_bytes() {
  return static_cast<int>(sm90_fwd::SharedLayout<BM>::kBytes + sm90_fwd::kSwizzleAtom);
}

template <typename T>
struct FwdSm90Params {
  CUtensorMap x_map;             // x [m, k] (dims {k, m}), box {64, BM / C}, 128B swizzle; encoded per call
  const CUtensorMap* tile_maps;  // [num_tiles]: V_t as dims {kr_t, g_t}, row stride kpad_t, box {64, 32}, 128B
  DevLayout layout;
  const int32_t* slices;  // slice table: slice ids t * (tile / 128) + j, by kept count (descending)
  int64_t num_slices;     // entries of the table
  int64_t m, k, n, nv;
  const T* bias;  // nullable
  T* y;
  int64_t ldy;
  int64_t groups;     // slice groups: ceil(num_slices / 2C)
  int64_t mblocks;    // ceil(m / BM)
  int64_t items;      // groups * mblocks * splits
  int32_t splits;     // K-splits (small M)
  int32_t chunks_per_split;
  int32_t nchunks;        // ceil(k / 64)
  const int32_t* bounds;  // splits > 1: [num_tiles, nchunks + 1] positions of rows_t before chunk c (KC = 64)
  float* ws;              // splits > 1: [splits, m, groups * 2C * 128] fp32 partials
  int32_t* counters;      // splits > 1: [groups] arrivals; zero before and after every launch
};

// One consumer's slice in one work item.
struct Sm90Slice {
  int64_t tslot;  // index in the slice table (also the partials' column block)
  int64_t t;      // tile
  int j0;         // first output of the slice within the tile
  int gv;         // outputs of the slice (0: none)
  int p_lo, p_hi; // kept positions of this K-split: [p_lo, p_hi) of rows_t
  int nsteps;     // k16 steps: ceil((p_hi - p_lo) / 16)
  int lo;         // offset of rows_t in rows
};

// Table entry tslot as a slice, every index clamped: all kept positions
// [0, kr_t) (gv = 0 past the table or for a tile without outputs).
__device__ __forceinline__ Sm90Slice sm90_slice(const DevLayout& l, const int32_t* slices, int64_t num_slices,
                                                int64_t tslot, int64_t nv, int64_t k) {
  Sm90Slice s{tslot, 0, 0, 0, 0, 0, 0, 0};
  if (tslot >= num_slices) return s;
  const int64_t spt = l.tile / sm90_fwd::kSliceN;
  const int64_t sid = clamp64(slices[tslot], 0, l.num_tiles * spt - 1);
  s.t = sid / spt;
  s.j0 = static_cast<int>(sid % spt) * sm90_fwd::kSliceN;
  const TileInfo ti = tile_info(l, s.t, nv, k);
  s.gv = static_cast<int>(clamp64(ti.g - s.j0, 0, sm90_fwd::kSliceN));
  s.lo = ti.lo;
  s.p_hi = s.gv > 0 && ti.ok ? ti.kr : 0;
  s.nsteps = (s.p_hi + sm90_fwd::kStepK - 1) / sm90_fwd::kStepK;
  return s;
}

// The epilogue of one consumer warp: its accumulators (HALVES m64 blocks of
// wgmma's m64n128 fragment: d[4j + e] = row 16wi + g8 + 8 (e / 2), output
// 8j + 2t4 + e % 2, rows from row0 + 64h) + bias, scattered to cols_t of the
// slice; 32-bit stores where two outputs are adjacent columns.
template <typename T, int HALVES>
__device__ __forceinline__ void sm90_store_slice(const float (&acc)[HALVES][64], const Sm90Slice& sl, const DevLayout& l,
                                                 const T* bias_t, T* y, int64_t ldy, int64_t m, int64_t n, int64_t row0,
                                                 int wi, int g8, int t4) {
  using H = Half16<T>;
  const int32_t* cols_t = l.cols + sl.t * l.tile + sl.j0;
  const uint16_t* bias = reinterpret_cast<const uint16_t*>(bias_t);
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const int n0 = 8 * j + 2 * t4;
    if (n0 >= sl.gv) continue;
    const bool pair = n0 + 1 < sl.gv;
    const int64_t c0 = clamp_index(cols_t[n0], n), c1 = pair ? clamp_index(cols_t[n0 + 1], n) : c0;
    const float b0 = bias != nullptr ? H::to_float(bias[c0]) : 0.f;
    const float b1 = bias != nullptr ? H::to_float(bias[c1]) : 0.f;
    const bool vec = pair && c1 == c0 + 1 && c0 % 2 == 0 && ldy % 2 == 0 && reinterpret_cast<uintptr_t>(y) % 4 == 0;
#pragma unroll
    for (int h = 0; h < HALVES; ++h)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int64_t row = row0 + 64 * h + 16 * wi + g8 + 8 * hr;
        if (row >= m) continue;
        uint16_t* yrow = reinterpret_cast<uint16_t*>(y) + row * ldy;
        const uint16_t lo = H::from_float(acc[h][4 * j + 2 * hr] + b0);
        const uint16_t hi = H::from_float(acc[h][4 * j + 2 * hr + 1] + b1);
        if (vec) {
          *reinterpret_cast<uint32_t*>(yrow + c0) = lo | (static_cast<uint32_t>(hi) << 16);
        } else {
          yrow[c0] = lo;
          if (pair) yrow[c1] = hi;
        }
      }
  }
}

// K-split (small M, one M-block): one consumer warp's fp32 partials of its
// slice, rows from row0, at ws[split, row, tslot * 128 + output].
template <int HALVES>
__device__ __forceinline__ void sm90_store_partials(const float (&acc)[HALVES][64], const Sm90Slice& sl, float* ws,
                                                    int64_t m, int64_t wcols, int32_t split, int64_t row0, int wi, int g8,
                                                    int t4) {
  if (sl.gv <= 0) return;
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const int n0 = 8 * j + 2 * t4;
#pragma unroll
    for (int h = 0; h < HALVES; ++h)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int64_t row = row0 + 64 * h + 16 * wi + g8 + 8 * hr;
        if (row >= m) continue;
        float* dst = ws + (static_cast<int64_t>(split) * m + row) * wcols + sl.tslot * sm90_fwd::kSliceN + n0;
        // read by the slice group's last CTA after this thread's fence and the CTA's arrival
        st_global_for_peers(reinterpret_cast<float2*>(dst), make_float2(acc[h][4 * j + 2 * hr], acc[h][4 * j + 2 * hr + 1]));
      }
  }
}

// K-split, after this CTA's partials (called by both consumer warpgroups,
// ctid 0 .. 255): one arrival per CTA on the slice group's counter; the CTA
// that brings it to `expected` adds the group's `slots` slices' partials in
// split order (deterministic), adds the bias, writes y (rows 0 .. m-1) and
// resets the counter for the next launch.
template <typename T>
__device__ __forceinline__ void sm90_reduce_splits_last(const DevLayout& l, const int32_t* slices, int64_t num_slices,
                                                        const T* bias_t, T* y, int64_t ldy, int64_t m, int64_t n,
                                                        const float* ws_partials, int64_t wcols, int32_t splits,
                                                        int32_t* counters, int64_t g, int32_t expected, int slots,
                                                        uint32_t* reduce_flag, int ctid) {
  using H = Half16<T>;
  using sm90_fwd::kSliceN;
  constexpr int kThreadsC = sm90_fwd::kConsumers * 128;
  const uint16_t* bias = reinterpret_cast<const uint16_t*>(bias_t);
  __threadfence();                         // the partials are visible device-wide ...
  sm90::named_barrier_sync(1, kThreadsC);  // ... from both consumer warpgroups of this CTA
  if (ctid == 0) {
    const int32_t arrived = atomicAdd(&counters[g], 1);
    const bool last = arrived == expected - 1;
    if (last) counters[g] = 0;  // every arrival is in: ready for the next launch
    *reduce_flag = last ? 1u : 0u;
  }
  sm90::named_barrier_sync(1, kThreadsC);
  if (*reduce_flag == 0u) return;
  __threadfence();  // the other CTAs' partials, after their arrivals
  const volatile float* ws = ws_partials;  // written by other SMs: not through L1
  for (int slot = 0; slot < slots; ++slot) {
    const int64_t tslot = g * slots + slot;
    if (tslot >= num_slices) break;
    const int64_t spt = l.tile / kSliceN;
    const int64_t sid = clamp64(slices[tslot], 0, l.num_tiles * spt - 1);
    const int64_t t = sid / spt;
    const int j0 = static_cast<int>(sid % spt) * kSliceN;
    const int gv = static_cast<int>(clamp64(clamp64(l.num_cols - t * l.tile, 0, l.tile) - j0, 0, kSliceN));
    const int32_t* cols_s = l.cols + t * l.tile + j0;
    for (int64_t e = ctid; e < m * kSliceN; e += kThreadsC) {
      const int64_t row = e / kSliceN;
      const int c = static_cast<int>(e % kSliceN);
      if (c >= gv) continue;
      float sum = 0.f;
      for (int32_t z = 0; z < splits; ++z) sum += ws[(static_cast<int64_t>(z) * m + row) * wcols + tslot * kSliceN + c];
      const int64_t col = clamp_index(cols_s[c], n);
      if (bias != nullptr) sum += H::to_float(bias[col]);
      reinterpret_cast<uint16_t*>(y)[row * ldy + col] = H::from_float(sum);
    }
  }
}

template <typename T, int BM, int C>
__global__ void __launch_bounds__(sm90_fwd::kThreads, 1) tw_fwd_sm90_kernel(const __grid_constant__ FwdSm90Params<T> p) {
#if TS_FWD_SM90_BODY
  using namespace sm90_fwd;
  using namespace sm90;
  using H = Half16<T>;
  using L = SharedLayout<BM>;
  static_assert(BM == 64 || BM == 128, "tw_fwd_sm90_kernel: BM is 64 or 128");
  static_assert(C == 1 || C == 2 || C == 4, "tw_fwd_sm90_kernel: clusters of 1, 2 or 4 CTAs");
  constexpr int HALVES = BM / 64;       // m64 accumulators per consumer thread
  constexpr int ROWS_PER_RANK = BM / C;  // rows of each x chunk this CTA loads for the cluster
  constexpr uint32_t kXBytes = x_chunk_bytes<BM>();

  // ---- shared memory: 1024-aligned base (TMA swizzle atoms, wgmma descriptors)
  unsigned char* smem = swizzle_aligned_smem();
  unsigned char* xs = smem + L::kX;
  unsigned char* bs = smem + L::kB;
  uint64_t* x_full = reinterpret_cast<uint64_t*>(smem + L::kXFull);
  uint64_t* x_empty = reinterpret_cast<uint64_t*>(smem + L::kXEmpty);
  uint64_t* b_full = reinterpret_cast<uint64_t*>(smem + L::kBFull);    // [w * kStagesB + s]
  uint64_t* b_empty = reinterpret_cast<uint64_t*>(smem + L::kBEmpty);  // [w * kStagesB + s]
  uint32_t* reduce_flag = reinterpret_cast<uint32_t*>(smem + L::kFlag);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = tid / 128;
  const uint32_t rank = cluster_ctarank();
  const int64_t cluster = blockIdx.x / C, clusters = gridDim.x / C;

  if (tid == 0) {
    for (int s = 0; s < kStagesX; ++s) {
      mbarrier_init(&x_full[s], 1);
      mbarrier_init(&x_empty[s], kConsumers * 4 * C);
    }
    for (int s = 0; s < kConsumers * kStagesB; ++s) {
      mbarrier_init(&b_full[s], 1);
      mbarrier_init(&b_empty[s], 4);
    }
    fence_mbarrier_init();
  }
  cluster_sync();  // every CTA's barriers exist before any peer arrives on them or multicasts to them

  // ---- the work item: (slice group, M-block, K-split); the same decode everywhere
  struct Item {
    int64_t g, m0;
    int32_t split;
    int c_begin, c_end;  // x chunks of the item
  };
  auto item_of = [&](int64_t it) {
    Item w;
    w.split = static_cast<int32_t>(it % p.splits);
    const int64_t rest = it / p.splits;
    w.m0 = (rest % p.mblocks) * BM;
    w.g = rest / p.mblocks;
    w.c_begin = w.split * p.chunks_per_split;
    w.c_end = w.c_begin + p.chunks_per_split < p.nchunks ? w.c_begin + p.chunks_per_split : p.nchunks;
    return w;
  };
  // The slice of consumer warpgroup cw of this CTA in work item w, every index clamped.
  auto slice_of = [&](const Item& w, int cw) {
    Sm90Slice s = sm90_slice(p.layout, p.slices, p.num_slices, (w.g * C + rank) * kConsumers + cw, p.nv, p.k);
    if (p.splits > 1 && s.gv > 0) {  // the positions whose features lie in this split's chunks
      const int32_t* b = p.bounds + s.t * (p.nchunks + 1);
      const int kr = s.p_hi;
      s.p_lo = static_cast<int>(clamp64(b[w.c_begin], 0, kr));
      s.p_hi = static_cast<int>(clamp64(b[w.c_end], s.p_lo, kr));
    }
    s.nsteps = (s.p_hi - s.p_lo + kStepK - 1) / kStepK;
    return s;
  };

  if (wg == 0) {
    // ======================= producer warpgroup =======================
    setmaxnreg_dec<kRegsProducer>();
    if (warp == 0 && lane == 0) {
      // x chunks: this rank's BM / C rows of every chunk, to every CTA of the cluster.
      prefetch_tensormap(&p.x_map);
      uint32_t seq = 0;
      for (int64_t it = cluster; it < p.items; it += clusters) {
        const Item w = item_of(it);
        for (int c = w.c_begin; c < w.c_end; ++c, ++seq) {
          const uint32_t s = seq % kStagesX, use = seq / kStagesX;
          if (use > 0) mbarrier_wait_parity(&x_empty[s], (use - 1) & 1);  // every consumer of the cluster let go
          mbarrier_arrive_expect_tx(&x_full[s], kXBytes);                 // C boxes of BM / C rows land here
          unsigned char* dst = xs + s * kXBytes + rank * ROWS_PER_RANK * (kChunkK * 2);
          const int32_t c0 = c * kChunkK, c1 = static_cast<int32_t>(w.m0 + rank * ROWS_PER_RANK);
          if constexpr (C == 1) tma_load_2d(dst, &p.x_map, &x_full[s], c0, c1);
          else tma_load_2d_multicast(dst, &p.x_map, &x_full[s], static_cast<uint16_t>((1u << C) - 1), c0, c1);
        }
      }
    } else if ((warp == 1 || warp == 2) && lane == 0) {
      // B stages of consumer cw: [128 outputs, 64 positions] of its slice, positions from p_lo.
      const int cw = warp - 1;
      uint32_t seq = 0;
      for (int64_t it = cluster; it < p.items; it += clusters) {
        const Sm90Slice sl = slice_of(item_of(it), cw);
        const int stages = (sl.nsteps + kStepsPerStage - 1) / kStepsPerStage;
        for (int st = 0; st < stages; ++st, ++seq) {
          const uint32_t s = seq % kStagesB, use = seq / kStagesB;
          uint64_t* full = &b_full[cw * kStagesB + s];
          if (use > 0) mbarrier_wait_parity(&b_empty[cw * kStagesB + s], (use - 1) & 1);
          mbarrier_arrive_expect_tx(full, kBStageBytes);  // out-of-range rows / positions arrive as zeros
          for (int q = 0; q < kSliceN / kBoxRowsB; ++q)
            tma_load_2d(bs + (cw * kStagesB + s) * kBStageBytes + q * kBoxRowsB * (kStageK * 2), p.tile_maps + sl.t,
                        full, sl.p_lo + st * kStageK, sl.j0 + q * kBoxRowsB);
        }
      }
    }
    __syncwarp();
  } else {
    // ======================= consumer warpgroups =======================
    setmaxnreg_inc<kRegsConsumer>();
    const int cw = wg - 1;
    const int wtid = tid % 128, wi = wtid / 32, g8 = lane / 4, t4 = lane % 4;
    const int32_t* rows = p.layout.rows;
    uint32_t xseq = 0, bseq = 0;  // ring positions of the item's first x chunk and first B stage

    for (int64_t it = cluster; it < p.items; it += clusters) {
      const Item w = item_of(it);
      const Sm90Slice sl = slice_of(w, cw);

      // ---- the x ring as this warpgroup walks it: one chunk held at a time.
      // acquire(c): releases the held chunk and walks (waits, releases) every
      // chunk before c, so that each slot is released once per use, after its
      // full barrier completed. Chunks past the item's last are never waited on.
      int held = -1, next = w.c_begin;
      auto x_slot = [&](int c) { return (xseq + static_cast<uint32_t>(c - w.c_begin)) % kStagesX; };
      auto release = [&](int c) {
        __syncwarp();  // every lane's loads from the slot retired
        if (lane == 0)
          for (uint32_t q = 0; q < static_cast<uint32_t>(C); ++q) mbarrier_arrive_cluster(&x_empty[x_slot(c)], q);
      };
      auto acquire = [&](int c) {
        if (c > w.c_end - 1) c = w.c_end - 1;
        while (next <= c) {
          if (held >= 0) release(held);
          const uint32_t use = (xseq + static_cast<uint32_t>(next - w.c_begin)) / kStagesX;
          mbarrier_wait_parity(&x_full[x_slot(next)], use & 1);
          held = next++;
        }
      };
      auto chunk = [&]() { return xs + x_slot(held < 0 ? w.c_begin : held) * kXBytes; };

      // ---- A of step s: rows 64h + 16wi + g8 (+8), positions p0 + 2t4 + {0,1} (+8)
      const int32_t* rows_t = rows + sl.lo;
      auto feature = [&](int q) { return static_cast<int>(clamp_index(rows_t[q], p.k)); };
      auto gather = [&](uint32_t (&a)[HALVES][4], int s) {
        const int p0 = sl.p_lo + kStepK * s;
        const int pend = p0 + kStepK < sl.p_hi ? p0 + kStepK : sl.p_hi;
#pragma unroll
        for (int h = 0; h < HALVES; ++h)
#pragma unroll
          for (int i = 0; i < 4; ++i) a[h][i] = 0u;
        // Two aligned runs of 8 features (unit >= 8 layouts): ldmatrix. Warp-uniform.
        bool runs = pend - p0 == kStepK;
        int f0 = 0, f1 = 0;
        if (runs) {
          f0 = feature(p0);
          f1 = feature(p0 + 8);
          runs = f0 % 8 == 0 && f1 % 8 == 0 && feature(p0 + 7) == f0 + 7 && feature(p0 + 15) == f1 + 7;
        }
        if (runs) {
          // ldmatrix row address of lane l for run `f`: row (l % 8) + 8 * ((l / 8) % 2) of the m16 block.
          auto run_addr = [&](int h, int l, int f) {
            const int r = 64 * h + 16 * wi + (l % 8) + 8 * ((l / 8) % 2);
            return chunk() + r * (kChunkK * 2) + ((((f % kChunkK) / 8) ^ (r % 8)) * 16);
          };
          if (f0 / kChunkK == f1 / kChunkK) {
            acquire(f0 / kChunkK);
#pragma unroll
            for (int h = 0; h < HALVES; ++h) ldmatrix_x4(a[h], run_addr(h, lane, lane < 16 ? f0 : f1));
          } else {  // the runs straddle two chunks: one ldmatrix.x2 per run
#pragma unroll
            for (int run = 0; run < 2; ++run) {
              acquire((run == 0 ? f0 : f1) / kChunkK);
#pragma unroll
              for (int h = 0; h < HALVES; ++h) {
                uint32_t r2[2];
                ldmatrix_x2(r2, run_addr(h, lane % 16, run == 0 ? f0 : f1));
                a[h][2 * run] = r2[0];
                a[h][2 * run + 1] = r2[1];
              }
            }
          }
          return;
        }
        // 2-byte loads: the lane's positions q_i = p0 + 2t4 + (i % 2) + 8 (i / 2); past pend: 0.
        int f[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int q = p0 + 2 * t4 + (i % 2) + 8 * (i / 2);
          f[i] = q < pend ? feature(q) : -1;
        }
        const int c_first = feature(p0) / kChunkK, c_last = feature(pend - 1) / kChunkK;
        for (int c = c_first; c <= c_last; ++c) {
          acquire(c);
          const unsigned char* base = chunk();
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            if (f[i] < 0 || f[i] / kChunkK != c) continue;
            const int col = ((((f[i] % kChunkK) / 8) ^ g8) * 16) + (f[i] % 8) * 2;  // rows r, r + 8: same r % 8 = g8
            const int shift = 16 * (i % 2);
#pragma unroll
            for (int h = 0; h < HALVES; ++h) {
              const int r0 = 64 * h + 16 * wi + g8;
              const uint32_t e0 = *reinterpret_cast<const uint16_t*>(base + r0 * (kChunkK * 2) + col);
              const uint32_t e1 = *reinterpret_cast<const uint16_t*>(base + (r0 + 8) * (kChunkK * 2) + col);
              a[h][2 * (i / 2)] |= e0 << shift;
              a[h][2 * (i / 2) + 1] |= e1 << shift;
            }
          }
        }
      };

      // ---- mainloop
      float acc[HALVES][64];
      uint32_t a_even[HALVES][4], a_odd[HALVES][4];  // A double-buffered by step parity: a wgmma in flight reads them
      auto b_index = [&](int s) { return cw * kStagesB + (bseq + static_cast<uint32_t>(s / kStepsPerStage)) % kStagesB; };
      auto step = [&](uint32_t (&a)[HALVES][4], int s) {
        gather(a, s);
        if (s % kStepsPerStage == 0) {  // the first step of a B stage: wait for its TMA
          mbarrier_wait_parity(&b_full[b_index(s)], ((bseq + static_cast<uint32_t>(s / kStepsPerStage)) / kStagesB) & 1);
        }
        const uint64_t desc = make_smem_desc(smem_addr(bs + b_index(s) * kBStageBytes) + (s % kStepsPerStage) * (kStepK * 2),
                                             Swizzle::k128B, 16, kSwizzleAtom);
        wgmma_fence();  // A was just written by ordinary loads
#pragma unroll
        for (int h = 0; h < HALVES; ++h) {
          if constexpr (std::is_same_v<T, __half>) wgmma_m64n128k16_rs_f16(acc[h], a[h], desc, s > 0);
          else wgmma_m64n128k16_rs_bf16(acc[h], a[h], desc, s > 0);
        }
        wgmma_commit_group();
        wgmma_wait_group<1>();  // step s - 1 is complete: its A buffer is free, and its B stage if it was the last
        if (s > 0 && (s - 1) % kStepsPerStage == kStepsPerStage - 1 && lane == 0) mbarrier_arrive(&b_empty[b_index(s - 1)]);
      };
      for (int s = 0; s < sl.nsteps; s += 2) {
        step(a_even, s);
        if (s + 1 < sl.nsteps) step(a_odd, s + 1);
      }
      wgmma_wait_group<0>();
#pragma unroll
      for (int h = 0; h < HALVES; ++h)
#pragma unroll
        for (int e = 0; e < 64; ++e) fence_operand(acc[h][e]);  // the epilogue reads them after the wait
      if (sl.nsteps > 0 && lane == 0) mbarrier_arrive(&b_empty[b_index(sl.nsteps - 1)]);
      bseq += static_cast<uint32_t>((sl.nsteps + kStepsPerStage - 1) / kStepsPerStage);
      // The rest of the item's chunks: every CTA walks every chunk, so the multicast ring keeps flowing.
      acquire(w.c_end - 1);
      if (held >= 0) release(held);
      xseq += static_cast<uint32_t>(w.c_end - w.c_begin);
      if (sl.nsteps == 0) {
#pragma unroll
        for (int h = 0; h < HALVES; ++h)
#pragma unroll
          for (int e = 0; e < 64; ++e) acc[h][e] = 0.f;
      }

      // ---- epilogue
      if (p.splits == 1) {
        sm90_store_slice<T, HALVES>(acc, sl, p.layout, p.bias, p.y, p.ldy, p.m, p.n, w.m0, wi, g8, t4);
        continue;
      }

      // ---- K-split: partials, then the last CTA of the slice group reduces
      const int64_t wcols = p.groups * (C * kConsumers) * kSliceN;  // partials' row length
      sm90_store_partials<HALVES>(acc, sl, p.ws, p.m, wcols, w.split, w.m0, wi, g8, t4);
      sm90_reduce_splits_last<T>(p.layout, p.slices, p.num_slices, p.bias, p.y, p.ldy, p.m, p.n, p.ws, wcols, p.splits,
                                 p.counters, w.g, p.splits * C, C * kConsumers, reduce_flag, tid - 128);
    }
  }
  // No CTA exits while a peer may still arrive on its barriers.
  cluster_sync();
#elif defined(__CUDA_ARCH__)
  __trap();  // sm_80 pass of the fat binary: never launched (the plan needs compute capability 9.x)
#endif
}

}  // namespace tilesparse::cuda
