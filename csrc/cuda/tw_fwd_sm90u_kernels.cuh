// Forward of tw_linear on sm_90a for unit-16 layouts: design U of
// docs/performance.md ("Design U"). It applies when every tile keeps runs of
// 16 consecutive features (`unit=16` masks): a k16 step's A operand is then
// one dense box x[rows, f0 .. f0 + 15], which TMA copies into wgmma's
// canonical K-major layout (32-byte rows, 32B swizzle). No gathers, no dense
// x chunk, both operands from shared memory (wgmma SS).
//
//   y[m, cols_t[j]] = sum_kk x[m, rows_t[kk]] * V_t[j, kk] + bias[cols_t[j]]
//
// CTA = 384 threads = 3 warpgroups:
//   WG0, producer (setmaxnreg.dec 40): warp 0 issues the A boxes (one TMA of
//   [256 rows x 16 features] = 8 KB per step, a ring of 16), warp 1 the B
//   stages ([128 outputs x 64 positions] = 16 KB, 128B swizzle, a ring of 4).
//   WG1, WG2, consumers (setmaxnreg.inc 232): both on the CTA's one slice
//   (128 outputs of a tile), rows [128 cw, 128 cw + 128) of its 256-row
//   M-block: two m64 accumulators each, so one B stage feeds 4 m64 units.
// Cluster of C CTAs along M: the ranks take consecutive M-blocks of the same
//   slice, and each loads 4 / C of a B stage's four 32-row boxes and
//   multicasts them to all C CTAs: every byte of V leaves L2 once per
//   C x 256 rows.
// Work items (slice, M-group of C M-blocks), in a panel raster: the slices
//   of a panel (as many as keep their V in L2) are the fastest index, then
//   the M-group, then the panel, so x is read from HBM once per panel and
//   each slice's V once. Persistent: cluster c takes items c, c + clusters, ...
//
// Synchronisation (slot s of each ring):
//   a_full[s]  (count 1, tx 8 KB): the A producer's expect_tx + its box
//   a_empty[s] (count 8): every consumer warp of this CTA, after the wgmma that read it
//   b_full[s]  (count 1, tx 16 KB): own producer's expect_tx + the 4 boxes from the C ranks
//   b_empty[s] (count 8C): every consumer warp of every CTA of the cluster
//              (each rank's producer writes into every CTA's slot s)
//
// Traffic per work item (bf16), per CTA: A 2 * 256 * kr_t bytes (L2 -> smem
// by TMA, no sharing across tiles), V 2 * 128 * kr_t / C, y 2 * 256 * 128
// once. Shared memory per m64n128k16 unit: A write 2 KB + read 2 KB, B write
// 4 KB / 4 units + read 4 KB: 72 clocks of 128 B (docs/performance.md).
#pragma once

#include "tw_fwd_sm90_kernels.cuh"

namespace tilesparse::cuda {

namespace sm90u_fwd {
using sm90_fwd::kBoxRowsB;
using sm90_fwd::kBStageBytes;
using sm90_fwd::kSliceN;
using sm90_fwd::kStageK;
using sm90_fwd::kStepK;
using sm90_fwd::kStepsPerStage;
constexpr int kThreads = 384;
constexpr int kBM = 256;                       // rows per CTA: 2 consumers x 2 m64 halves
constexpr int kRowsPerConsumer = kBM / 2;
constexpr int kStagesA = 16;                   // A ring: 16 steps = 4 B stages in flight
constexpr int kStagesB = 4;
constexpr uint32_t kABytes = kBM * kStepK * 2;  // 8 KB: 256 rows x 32 bytes
constexpr uint32_t kARowBytes = kStepK * 2;     // 32: one 32B-swizzle row
constexpr uint32_t kAAtom = 8 * kARowBytes;     // 256: the 32B swizzle atom (8 rows)
constexpr int kRegsProducer = 40, kRegsConsumer = 232;

struct SharedLayout {
  static constexpr uint32_t kA = 0;                              // [kStagesA][256][16], 32B swizzle
  static constexpr uint32_t kB = kA + kStagesA * kABytes;         // [kStagesB][128][64], 128B swizzle
  static constexpr uint32_t kAFull = kB + kStagesB * kBStageBytes;
  static constexpr uint32_t kAEmpty = kAFull + 8 * kStagesA;
  static constexpr uint32_t kBFull = kAEmpty + 8 * kStagesA;
  static constexpr uint32_t kBEmpty = kBFull + 8 * kStagesB;
  static constexpr uint32_t kBytes = kBEmpty + 8 * kStagesB;
};

// Small M (M <= 64): one 64-row M-block; the two consumers on two slices
// (one m64 each), each with its own A ring (boxes [64 rows x 16]) and B
// ring; K-split over the kept steps (whole B stages), reduced by the last
// CTA of the slice pair (design A's reduction).
constexpr int kSmallBM = 64;
constexpr uint32_t kASmallBytes = kSmallBM * kStepK * 2;  // 2 KB
struct SmallLayout {
  static constexpr uint32_t kA = 0;                                      // [2][kStagesA][64][16], 32B swizzle
  static constexpr uint32_t kB = kA + 2 * kStagesA * kASmallBytes;        // [2][kStagesB][128][64], 128B swizzle
  static constexpr uint32_t kAFull = kB + 2 * kStagesB * kBStageBytes;   // [2][kStagesA]
  static constexpr uint32_t kAEmpty = kAFull + 8 * 2 * kStagesA;
  static constexpr uint32_t kBFull = kAEmpty + 8 * 2 * kStagesA;         // [2][kStagesB]
  static constexpr uint32_t kBEmpty = kBFull + 8 * 2 * kStagesB;
  static constexpr uint32_t kFlag = kBEmpty + 8 * 2 * kStagesB;          // uint32_t: "this CTA reduces"
  static constexpr uint32_t kBytes = kFlag + 16;
};
}  // namespace sm90u_fwd

constexpr int fwd_sm90u_smem_bytes() {
  return static_cast<int>(sm90u_fwd::SharedLayout::kBytes + sm90_fwd::kSwizzleAtom);
}
constexpr int fwd_sm90u_small_smem_bytes() {
  return static_cast<int>(sm90u_fwd::SmallLayout::kBytes + sm90_fwd::kSwizzleAtom);
}

template <typename T>
struct FwdSm90uParams {
  CUtensorMap x_map;             // x [m, k] (dims {k, m}), box {16, 256}, 32B swizzle; encoded per call
  const CUtensorMap* tile_maps;  // [num_tiles]: V_t, box {64, 32}, 128B swizzle (the same maps as design A)
  DevLayout layout;
  const int32_t* slices;  // slice table (sm90_slice_table)
  int64_t num_slices;
  int64_t m, k, n, nv;
  const T* bias;  // nullable
  T* y;
  int64_t ldy;
  int64_t mgroups;  // ceil(ceil(m / 256) / C)
  int64_t panel;    // slices per panel (>= 1)
  int64_t items;    // num_slices * mgroups (small M: groups * splits)
  // small M
  int64_t groups;          // slice pairs: ceil(num_slices / 2)
  int32_t splits;          // K-splits over the kept steps
  int32_t steps_per_split; // a multiple of 4 (whole B stages)
  float* ws;               // splits > 1: [splits, m, groups * 2 * 128] fp32 partials
  int32_t* counters;       // splits > 1: [groups] arrivals; zero before and after every launch
};

template <typename T, int C>
__global__ void __launch_bounds__(sm90u_fwd::kThreads, 1) tw_fwd_sm90u_kernel(const __grid_constant__ FwdSm90uParams<T> p) {
#if TS_FWD_SM90_BODY
  using namespace sm90u_fwd;
  using namespace sm90;
  using L = SharedLayout;
  static_assert(C == 1 || C == 2 || C == 4, "tw_fwd_sm90u_kernel: clusters of 1, 2 or 4 CTAs");
  constexpr int kBoxes = kSliceN / kBoxRowsB;  // 4 boxes per B stage, 4 / C per rank

  unsigned char* smem = swizzle_aligned_smem();
  unsigned char* as = smem + L::kA;
  unsigned char* bs = smem + L::kB;
  uint64_t* a_full = reinterpret_cast<uint64_t*>(smem + L::kAFull);
  uint64_t* a_empty = reinterpret_cast<uint64_t*>(smem + L::kAEmpty);
  uint64_t* b_full = reinterpret_cast<uint64_t*>(smem + L::kBFull);
  uint64_t* b_empty = reinterpret_cast<uint64_t*>(smem + L::kBEmpty);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = tid / 128;
  const uint32_t rank = cluster_ctarank();
  const int64_t cluster = blockIdx.x / C, clusters = gridDim.x / C;

  if (tid == 0) {
    for (int s = 0; s < kStagesA; ++s) {
      mbarrier_init(&a_full[s], 1);
      mbarrier_init(&a_empty[s], 8);
    }
    for (int s = 0; s < kStagesB; ++s) {
      mbarrier_init(&b_full[s], 1);
      mbarrier_init(&b_empty[s], 8 * C);
    }
    fence_mbarrier_init();
  }
  cluster_sync();  // every CTA's barriers exist before a peer multicasts to them or arrives on them

  // Work item -> (table slot, first row of this rank's M-block): the panel raster.
  struct Item {
    int64_t tslot, m0;
  };
  auto item_of = [&](int64_t it) {
    const int64_t per_panel = p.panel * p.mgroups;
    const int64_t panel = it / per_panel, rest = it % per_panel;
    const int64_t first = panel * p.panel;
    const int64_t width = p.num_slices - first < p.panel ? p.num_slices - first : p.panel;
    Item w;
    w.tslot = first + rest % width;
    w.m0 = ((rest / width) * C + rank) * kBM;
    return w;
  };
  auto slice_of = [&](const Item& w) { return sm90_slice(p.layout, p.slices, p.num_slices, w.tslot, p.nv, p.k); };

  if (wg == 0) {
    // ======================= producer warpgroup =======================
    setmaxnreg_dec<kRegsProducer>();
    if (warp == 0 && lane == 0) {
      // A: one box per step, x[m0 .. m0 + 255, rows_t[16 s] .. + 15] (rows past m arrive as zeros).
      prefetch_tensormap(&p.x_map);
      uint32_t seq = 0;
      for (int64_t it = cluster; it < p.items; it += clusters) {
        const Item w = item_of(it);
        const Sm90Slice sl = slice_of(w);
        const int32_t* rows_t = p.layout.rows + sl.lo;
        for (int st = 0; st < sl.nsteps; ++st, ++seq) {
          const uint32_t s = seq % kStagesA, use = seq / kStagesA;
          if (use > 0) mbarrier_wait_parity(&a_empty[s], (use - 1) & 1);
          mbarrier_arrive_expect_tx(&a_full[s], kABytes);
          const int32_t f0 = static_cast<int32_t>(clamp_index(rows_t[kStepK * st], p.k));
          tma_load_2d(as + s * kABytes, &p.x_map, &a_full[s], f0, static_cast<int32_t>(w.m0));
        }
      }
    } else if (warp == 1 && lane == 0) {
      // B: this rank's boxes q = rank, rank + C, ... of every stage, to every CTA of the cluster.
      uint32_t seq = 0;
      for (int64_t it = cluster; it < p.items; it += clusters) {
        const Sm90Slice sl = slice_of(item_of(it));
        const int stages = (sl.nsteps + kStepsPerStage - 1) / kStepsPerStage;
        for (int st = 0; st < stages; ++st, ++seq) {
          const uint32_t s = seq % kStagesB, use = seq / kStagesB;
          if (use > 0) mbarrier_wait_parity(&b_empty[s], (use - 1) & 1);  // every consumer of the cluster let go
          mbarrier_arrive_expect_tx(&b_full[s], kBStageBytes);             // 4 boxes from the C ranks land here
          for (int q = static_cast<int>(rank); q < kBoxes; q += C) {
            unsigned char* dst = bs + s * kBStageBytes + q * kBoxRowsB * (kStageK * 2);
            const int32_t c0 = st * kStageK, c1 = sl.j0 + q * kBoxRowsB;
            if constexpr (C == 1) tma_load_2d(dst, p.tile_maps + sl.t, &b_full[s], c0, c1);
            else tma_load_2d_multicast(dst, p.tile_maps + sl.t, &b_full[s], static_cast<uint16_t>((1u << C) - 1), c0, c1);
          }
        }
      }
    }
    __syncwarp();
  } else {
    // ======================= consumer warpgroups =======================
    setmaxnreg_inc<kRegsConsumer>();
    const int cw = wg - 1;
    const int wi = (tid % 128) / 32, g8 = lane / 4, t4 = lane % 4;
    uint32_t aseq = 0, bseq = 0;  // ring positions of the item's first step and first B stage

    for (int64_t it = cluster; it < p.items; it += clusters) {
      const Item w = item_of(it);
      const Sm90Slice sl = slice_of(w);
      auto a_slot = [&](int s) { return (aseq + static_cast<uint32_t>(s)) % kStagesA; };
      auto b_slot = [&](int s) { return (bseq + static_cast<uint32_t>(s / kStepsPerStage)) % kStagesB; };
      auto release = [&](int s) {  // step s's wgmma completed: its A slot, and its B stage after the stage's last step
        if (lane != 0) return;
        mbarrier_arrive(&a_empty[a_slot(s)]);
        if (s % kStepsPerStage == kStepsPerStage - 1 || s == sl.nsteps - 1)
          for (uint32_t q = 0; q < static_cast<uint32_t>(C); ++q) mbarrier_arrive_cluster(&b_empty[b_slot(s)], q);
      };

      float acc[2][64];
      for (int s = 0; s < sl.nsteps; ++s) {
        mbarrier_wait_parity(&a_full[a_slot(s)], ((aseq + static_cast<uint32_t>(s)) / kStagesA) & 1);
        if (s % kStepsPerStage == 0)
          mbarrier_wait_parity(&b_full[b_slot(s)], ((bseq + static_cast<uint32_t>(s / kStepsPerStage)) / kStagesB) & 1);
        const uint32_t a_base = smem_addr(as + a_slot(s) * kABytes) + cw * kRowsPerConsumer * kARowBytes;
        const uint64_t desc_b = make_smem_desc(smem_addr(bs + b_slot(s) * kBStageBytes) + (s % kStepsPerStage) * kARowBytes,
                                               Swizzle::k128B, 16, sm90_fwd::kSwizzleAtom);
        wgmma_fence();
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // A of half h: 64 rows x 32 bytes from row 128 cw + 64 h (a whole number of swizzle atoms)
          const uint64_t desc_a = make_smem_desc(a_base + h * 64 * kARowBytes, Swizzle::k32B, 16, kAAtom);
          if constexpr (std::is_same_v<T, __half>) wgmma_m64n128k16_ss_f16(acc[h], desc_a, desc_b, s > 0);
          else wgmma_m64n128k16_ss_bf16(acc[h], desc_a, desc_b, s > 0);
        }
        wgmma_commit_group();
        wgmma_wait_group<1>();  // step s - 1 is complete: release its slots
        if (s > 0) release(s - 1);
      }
      wgmma_wait_group<0>();
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 64; ++e) fence_operand(acc[h][e]);  // the epilogue reads them after the wait
      if (sl.nsteps > 0) release(sl.nsteps - 1);
      aseq += static_cast<uint32_t>(sl.nsteps);
      bseq += static_cast<uint32_t>((sl.nsteps + kStepsPerStage - 1) / kStepsPerStage);
      if (sl.nsteps == 0) {
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int e = 0; e < 64; ++e) acc[h][e] = 0.f;
      }
      // ---- epilogue: + bias, scattered to cols_t
      sm90_store_slice<T, 2>(acc, sl, p.layout, p.bias, p.y, p.ldy, p.m, p.n, w.m0 + cw * kRowsPerConsumer, wi, g8, t4);
    }
  }
  cluster_sync();  // no CTA exits while a peer may still multicast to it or arrive on its barriers
#elif defined(__CUDA_ARCH__)
  __trap();  // sm_80 pass of the fat binary: never launched
#endif
}

// Small M (M <= 64) of design U: see SmallLayout. CTA = 384 threads: producer
// warps 0 / 1 issue the A boxes of consumer 0 / 1 ([64 rows x 16] per step,
// x map box {16, 64}), warps 2 / 3 their B stages (4 boxes of 32 rows, no
// multicast: the two consumers and every CTA are on different slices).
// Work item = (slice pair g, K-split z): consumer cw computes table slot
// 2g + cw over the kept steps [z S, z S + S) of its tile.
template <typename T>
__global__ void __launch_bounds__(sm90u_fwd::kThreads, 1)
    tw_fwd_sm90u_small_kernel(const __grid_constant__ FwdSm90uParams<T> p) {
#if TS_FWD_SM90_BODY
  using namespace sm90u_fwd;
  using namespace sm90;
  using L = SmallLayout;
  constexpr int kBoxes = kSliceN / kBoxRowsB;

  unsigned char* smem = swizzle_aligned_smem();
  unsigned char* as = smem + L::kA;
  unsigned char* bs = smem + L::kB;
  uint64_t* a_full = reinterpret_cast<uint64_t*>(smem + L::kAFull);    // [cw * kStagesA + s]
  uint64_t* a_empty = reinterpret_cast<uint64_t*>(smem + L::kAEmpty);
  uint64_t* b_full = reinterpret_cast<uint64_t*>(smem + L::kBFull);    // [cw * kStagesB + s]
  uint64_t* b_empty = reinterpret_cast<uint64_t*>(smem + L::kBEmpty);
  uint32_t* reduce_flag = reinterpret_cast<uint32_t*>(smem + L::kFlag);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = tid / 128;
  const int64_t cta = blockIdx.x, ctas = gridDim.x;

  if (tid == 0) {
    for (int s = 0; s < 2 * kStagesA; ++s) {
      mbarrier_init(&a_full[s], 1);
      mbarrier_init(&a_empty[s], 4);  // the warps of one consumer
    }
    for (int s = 0; s < 2 * kStagesB; ++s) {
      mbarrier_init(&b_full[s], 1);
      mbarrier_init(&b_empty[s], 4);
    }
    fence_mbarrier_init();
  }
  cluster_sync();  // a cluster of 1: the barriers' initialisation is visible to every thread (and the async proxy)

  // The steps [s_lo, s_hi) of consumer cw in item it (s_hi <= s_lo: none).
  struct Work {
    Sm90Slice sl;
    int s_lo, s_hi;
    int64_t g;
    int32_t split;
  };
  auto work_of = [&](int64_t it, int cw) {
    Work w;
    w.split = static_cast<int32_t>(it % p.splits);
    w.g = it / p.splits;
    w.sl = sm90_slice(p.layout, p.slices, p.num_slices, 2 * w.g + cw, p.nv, p.k);
    w.s_lo = w.split * p.steps_per_split;
    w.s_hi = w.s_lo + p.steps_per_split < w.sl.nsteps ? w.s_lo + p.steps_per_split : w.sl.nsteps;
    return w;
  };

  if (wg == 0) {
    // ======================= producer warpgroup =======================
    setmaxnreg_dec<kRegsProducer>();
    if (warp < 2 && lane == 0) {  // A boxes of consumer `warp`
      const int cw = warp;
      prefetch_tensormap(&p.x_map);
      uint32_t seq = 0;
      for (int64_t it = cta; it < p.items; it += ctas) {
        const Work w = work_of(it, cw);
        const int32_t* rows_t = p.layout.rows + w.sl.lo;
        for (int st = w.s_lo; st < w.s_hi; ++st, ++seq) {
          const uint32_t s = cw * kStagesA + seq % kStagesA, use = seq / kStagesA;
          if (use > 0) mbarrier_wait_parity(&a_empty[s], (use - 1) & 1);
          mbarrier_arrive_expect_tx(&a_full[s], kASmallBytes);
          const int32_t f0 = static_cast<int32_t>(clamp_index(rows_t[kStepK * st], p.k));
          tma_load_2d(as + s * kASmallBytes, &p.x_map, &a_full[s], f0, 0);
        }
      }
    } else if ((warp == 2 || warp == 3) && lane == 0) {  // B stages of consumer warp - 2
      const int cw = warp - 2;
      uint32_t seq = 0;
      for (int64_t it = cta; it < p.items; it += ctas) {
        const Work w = work_of(it, cw);
        for (int st = w.s_lo / kStepsPerStage; st * kStepsPerStage < w.s_hi; ++st, ++seq) {
          const uint32_t s = cw * kStagesB + seq % kStagesB, use = seq / kStagesB;
          if (use > 0) mbarrier_wait_parity(&b_empty[s], (use - 1) & 1);
          mbarrier_arrive_expect_tx(&b_full[s], kBStageBytes);
          for (int q = 0; q < kBoxes; ++q)
            tma_load_2d(bs + s * kBStageBytes + q * kBoxRowsB * (kStageK * 2), p.tile_maps + w.sl.t, &b_full[s],
                        st * kStageK, w.sl.j0 + q * kBoxRowsB);
        }
      }
    }
    __syncwarp();
  } else {
    // ======================= consumer warpgroups =======================
    setmaxnreg_inc<kRegsConsumer>();
    const int cw = wg - 1;
    const int wi = (tid % 128) / 32, g8 = lane / 4, t4 = lane % 4;
    uint32_t aseq = 0, bseq = 0;
    for (int64_t it = cta; it < p.items; it += ctas) {
      const Work w = work_of(it, cw);
      const int n = w.s_hi > w.s_lo ? w.s_hi - w.s_lo : 0;  // steps of this item
      auto a_slot = [&](int i) { return cw * kStagesA + (aseq + static_cast<uint32_t>(i)) % kStagesA; };
      auto b_slot = [&](int i) { return cw * kStagesB + (bseq + static_cast<uint32_t>(i / kStepsPerStage)) % kStagesB; };
      auto release = [&](int i) {  // local step i's wgmma completed
        if (lane != 0) return;
        mbarrier_arrive(&a_empty[a_slot(i)]);
        if (i % kStepsPerStage == kStepsPerStage - 1 || i == n - 1) mbarrier_arrive(&b_empty[b_slot(i)]);
      };
      float acc[1][64];
      for (int i = 0; i < n; ++i) {  // s_lo % 4 == 0: local step i is at position (s_lo + i) % 4 of its B stage
        mbarrier_wait_parity(&a_full[a_slot(i)], ((aseq + static_cast<uint32_t>(i)) / kStagesA) & 1);
        if (i % kStepsPerStage == 0)
          mbarrier_wait_parity(&b_full[b_slot(i)], ((bseq + static_cast<uint32_t>(i / kStepsPerStage)) / kStagesB) & 1);
        const uint64_t desc_a = make_smem_desc(smem_addr(as + a_slot(i) * kASmallBytes), Swizzle::k32B, 16, kAAtom);
        const uint64_t desc_b = make_smem_desc(smem_addr(bs + b_slot(i) * kBStageBytes) + (i % kStepsPerStage) * kARowBytes,
                                               Swizzle::k128B, 16, sm90_fwd::kSwizzleAtom);
        wgmma_fence();
        if constexpr (std::is_same_v<T, __half>) wgmma_m64n128k16_ss_f16(acc[0], desc_a, desc_b, i > 0);
        else wgmma_m64n128k16_ss_bf16(acc[0], desc_a, desc_b, i > 0);
        wgmma_commit_group();
        wgmma_wait_group<1>();
        if (i > 0) release(i - 1);
      }
      wgmma_wait_group<0>();
#pragma unroll
      for (int e = 0; e < 64; ++e) fence_operand(acc[0][e]);
      if (n > 0) release(n - 1);
      aseq += static_cast<uint32_t>(n);
      bseq += static_cast<uint32_t>((n + kStepsPerStage - 1) / kStepsPerStage);
      if (n == 0) {
#pragma unroll
        for (int e = 0; e < 64; ++e) acc[0][e] = 0.f;
      }
      if (p.splits == 1) {
        sm90_store_slice<T, 1>(acc, w.sl, p.layout, p.bias, p.y, p.ldy, p.m, p.n, 0, wi, g8, t4);
        continue;
      }
      const int64_t wcols = p.groups * 2 * kSliceN;
      sm90_store_partials<1>(acc, w.sl, p.ws, p.m, wcols, w.split, 0, wi, g8, t4);
      sm90_reduce_splits_last<T>(p.layout, p.slices, p.num_slices, p.bias, p.y, p.ldy, p.m, p.n, p.ws, wcols, p.splits,
                                 p.counters, w.g, p.splits, 2, reduce_flag, tid - 128);
    }
  }
  // No closing cluster barrier: a cluster of one CTA has no peer that could still arrive on its barriers.
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

}  // namespace tilesparse::cuda
