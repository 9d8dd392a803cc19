// grad_values of tw_linear on sm_90a for unit-16 layouts (design U's
// backward, docs/performance.md "grad_values on wgmma"):
//
//   gV_t[j, kk] = sum_m gy[m, cols_t[j]] * x[m, rows_t[kk]]     (a reduction over M)
//
// as wgmma D[64 outputs x 128 positions] += A[64 outputs x 16 tokens] *
// B[16 tokens x 128 positions], both operands MN-major (transposed) straight
// from TMA boxes of the row-major gy and x, so that no thread touches an
// operand: A = gy[tokens, c0 .. c0 + 63] (one box row = 64 outputs = 128 B,
// 128B swizzle), B = the kept runs x[tokens, f0 .. f0 + 15] (one box per run
// of 16 features, 32 B rows, 32B swizzle; design U's rule: every kept run is
// 16 consecutive features). It applies where each slice's 128 outputs are
// consecutive columns (cols_t is one run: gy's box), which 1-D TW always is.
//
// CTA = 384 threads = 3 warpgroups:
//   WG0, producer (setmaxnreg.dec 40): one thread fills a ring of 4 stages of
//   64 tokens: gy [64 tokens x 128 outputs] = 16 KB (4 boxes of 32 tokens x
//   64 outputs, split over the cluster and multicast) and the CTA's kept runs
//   [64 tokens x 256 positions] = 32 KB (16 boxes of 64 x 16).
//   WG1, WG2, consumers (setmaxnreg.inc 232): positions [128 cw, 128 cw +
//   128) of the CTA's 256, all 128 outputs of the slice: two m64n128
//   accumulators each (outputs 0-63, 64-127), 4 k16 steps per stage.
// Cluster of C CTAs: the ranks take consecutive 256-position blocks of the
//   same slice over the same tokens, so gy's stage is the same for all of
//   them: each rank loads 4 / C of its boxes and multicasts them (gy leaves
//   L2 once per C x 256 positions; x's runs once per slice, the tile-wise
//   floor).
// Work items: entries (slice, position group of C blocks) of a host table
//   (sm90_gv_item_table: longest first), times `splits` ranges of M; a
//   cluster takes items c, c + clusters, ... With one split the consumers
//   write gV (T); with more, fp32 partials [split, nv] that
//   reduce_splits_kernel adds in split order: deterministic.
//
// Synchronisation (slot s of the ring):
//   full[s]  (count 1, tx 16 KB + 2 KB per kept run of the CTA's block): own
//            producer's expect_tx + the gy boxes of the C ranks + its runs
//   empty[s] (count 8C): every consumer warp of every CTA of the cluster
//            (each rank's producer writes gy into every CTA's slot s)
//
// Traffic per stage and CTA (bf16): gy 16 KB / C from L2, x 2 KB per run
// (16 runs per 256 positions), gV once at the end. Shared memory per
// m64n128k16 unit (16 per stage: 4 k16 steps x 2 consumers x 2 halves): gy
// written 1 KB + read 2 KB, x runs written 2 KB + read 4 KB = 72 clocks at
// 128 B/clk, against 64 clocks of tensor time: smem-bound at 89%.
#pragma once

#include "tw_fwd_sm90_kernels.cuh"

namespace tilesparse::cuda {

namespace sm90u_gv {
constexpr int kThreads = 384;
constexpr int kOutputs = 128;                  // a slice: wgmma M = 2 x m64
constexpr int kPositions = 128;                // per consumer: wgmma N
constexpr int kCtaPositions = 2 * kPositions;  // 256
constexpr int kRunsPerCta = kCtaPositions / 16;
constexpr int kStageTokens = 64;
constexpr int kStepsPerStage = kStageTokens / 16;
constexpr int kStages = 4;
constexpr int kGyBoxTokens = 32;  // gy box {64 outputs, 32 tokens}: 4 per stage (split over the C ranks)
constexpr int kGyBoxes = 4;
constexpr uint32_t kGyRowBytes = 64 * 2;                         // 128: one 128B-swizzle row
constexpr uint32_t kGyHalfBytes = kStageTokens * kGyRowBytes;    // 8 KB: 64 outputs x 64 tokens
constexpr uint32_t kGyBytes = 2 * kGyHalfBytes;                  // 16 KB
constexpr uint32_t kRunRowBytes = 16 * 2;                        // 32: one 32B-swizzle row
constexpr uint32_t kRunBytes = kStageTokens * kRunRowBytes;      // 2 KB
constexpr uint32_t kStageBytes = kGyBytes + kRunsPerCta * kRunBytes;  // 48 KB
constexpr int kRegsProducer = 40, kRegsConsumer = 232;

struct SharedLayout {
  static constexpr uint32_t kStage = 0;  // [kStages]: gy [2 halves][64 tokens][64 outputs], runs [16][64 tokens][16]
  static constexpr uint32_t kFull = kStage + kStages * kStageBytes;
  static constexpr uint32_t kEmpty = kFull + 8 * kStages;
  static constexpr uint32_t kBytes = kEmpty + 8 * kStages;
};
}  // namespace sm90u_gv

constexpr int gv_sm90u_smem_bytes() {
  return static_cast<int>(sm90u_gv::SharedLayout::kBytes + sm90_fwd::kSwizzleAtom);
}

template <typename T>
struct GvSm90uParams {
  CUtensorMap gy_map;  // gy [m, n] (dims {n, m}), box {64, 32}, 128B swizzle; encoded per call
  CUtensorMap x_map;   // x [m, k] (dims {k, m}), box {16, 64}, 32B swizzle
  DevLayout layout;
  const int32_t* slices;  // slice table (sm90_slice_table)
  int64_t num_slices;
  const int32_t* entries;  // [num_entries][2]: (slice table slot, position group) (sm90_gv_item_table)
  int64_t num_entries;
  int64_t m, k, n, nv;
  int32_t splits;        // ranges of M
  int64_t split_tokens;  // tokens per range (a multiple of 64)
  int64_t items;         // num_entries * splits
  T* out;                // gV (splits == 1)
  float* ws;             // splits > 1: [splits, nv] fp32 partials
};

template <typename T, int C>
__global__ void __launch_bounds__(sm90u_gv::kThreads, 1) tw_gv_sm90u_kernel(const __grid_constant__ GvSm90uParams<T> p) {
#if TS_FWD_SM90_BODY
  using namespace sm90u_gv;
  using namespace sm90;
  using L = SharedLayout;
  static_assert(C == 1 || C == 2 || C == 4, "tw_gv_sm90u_kernel: clusters of 1, 2 or 4 CTAs");

  unsigned char* smem = swizzle_aligned_smem();
  unsigned char* stages = smem + L::kStage;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kFull);
  uint64_t* empty = reinterpret_cast<uint64_t*>(smem + L::kEmpty);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = tid / 128;
  const uint32_t rank = cluster_ctarank();
  const int64_t cluster = blockIdx.x / C, clusters = gridDim.x / C;

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 8 * C);
    }
    fence_mbarrier_init();
  }
  cluster_sync();  // every CTA's barriers exist before a peer multicasts to them or arrives on them

  // Work item -> this rank's slice, first position, kept runs in its block, tokens.
  struct Work {
    Sm90Slice sl;
    int p0;     // first position (slot of rows_t) of this CTA's 256
    int runs;   // kept runs of the block: min(16, ceil((kr - p0) / 16)), 0 past kr
    int32_t split;
    int64_t t0, t1;  // tokens [t0, t1)
    int stages;
  };
  auto work_of = [&](int64_t it) {
    Work w;
    const int64_t e = clamp64(it / p.splits, 0, p.num_entries - 1);
    w.split = static_cast<int32_t>(it % p.splits);
    w.sl = sm90_slice(p.layout, p.slices, p.num_slices, p.entries[2 * e], p.nv, p.k);
    w.p0 = (static_cast<int>(clamp64(p.entries[2 * e + 1], 0, 1 << 20)) * C + static_cast<int>(rank)) * kCtaPositions;
    const int left = w.sl.p_hi - w.p0;
    w.runs = left <= 0 ? 0 : ((left + 15) / 16 < kRunsPerCta ? (left + 15) / 16 : kRunsPerCta);
    w.t0 = w.split * p.split_tokens;
    w.t1 = w.t0 + p.split_tokens < p.m ? w.t0 + p.split_tokens : p.m;
    w.stages = w.t1 > w.t0 ? static_cast<int>((w.t1 - w.t0 + kStageTokens - 1) / kStageTokens) : 0;
    return w;
  };

  if (wg == 0) {
    // ======================= producer warpgroup =======================
    setmaxnreg_dec<kRegsProducer>();
    if (warp == 0 && lane == 0) {
      prefetch_tensormap(&p.gy_map);
      prefetch_tensormap(&p.x_map);
      uint32_t seq = 0;
      for (int64_t it = cluster; it < p.items; it += clusters) {
        const Work w = work_of(it);
        // the slice's first output column (its 128 columns are consecutive: the plan checked)
        const int32_t c0 = w.sl.gv > 0 ? static_cast<int32_t>(clamp_index(p.layout.cols[w.sl.t * p.layout.tile + w.sl.j0], p.n)) : 0;
        const int32_t* rows_t = p.layout.rows + w.sl.lo;
        for (int st = 0; st < w.stages; ++st, ++seq) {
          const uint32_t s = seq % kStages, use = seq / kStages;
          if (use > 0) mbarrier_wait_parity(&empty[s], (use - 1) & 1);  // every consumer of the cluster let go
          unsigned char* stage = stages + s * kStageBytes;
          mbarrier_arrive_expect_tx(&full[s], kGyBytes + static_cast<uint32_t>(w.runs) * kRunBytes);
          const int32_t tok = static_cast<int32_t>(w.t0 + static_cast<int64_t>(st) * kStageTokens);
          // gy: box q = (output half q / 2, token half q % 2), this rank's share, to every CTA of the cluster
          for (int q = static_cast<int>(rank); q < kGyBoxes; q += C) {
            unsigned char* dst = stage + (q / 2) * kGyHalfBytes + (q % 2) * kGyBoxTokens * kGyRowBytes;
            const int32_t cx = c0 + 64 * (q / 2), ty = tok + kGyBoxTokens * (q % 2);
            if constexpr (C == 1) tma_load_2d(dst, &p.gy_map, &full[s], cx, ty);
            else tma_load_2d_multicast(dst, &p.gy_map, &full[s], static_cast<uint16_t>((1u << C) - 1), cx, ty);
          }
          // x: the kept runs of this CTA's block (rows past m arrive as zeros)
          for (int r = 0; r < w.runs; ++r) {
            const int32_t f0 = static_cast<int32_t>(clamp_index(rows_t[w.p0 + 16 * r], p.k));
            tma_load_2d(stage + kGyBytes + r * kRunBytes, &p.x_map, &full[s], f0, tok);
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
    uint32_t seq = 0;  // ring position of the item's first stage
    for (int64_t it = cluster; it < p.items; it += clusters) {
      const Work w = work_of(it);
      const TileInfo ti = tile_info(p.layout, w.sl.t, p.nv, p.k);
      const int pc = w.p0 + kPositions * cw;                       // this consumer's first slot
      const bool writes = w.sl.gv > 0 && ti.ok && pc < ti.kt;      // owns slots of gV
      auto release = [&](int st) {  // stage st's wgmmas completed: let go of its slot in every CTA
        if (lane != 0) return;
        const uint32_t s = (seq + static_cast<uint32_t>(st)) % kStages;
        for (uint32_t q = 0; q < static_cast<uint32_t>(C); ++q) mbarrier_arrive_cluster(&empty[s], q);
      };
      float acc[2][64];
      // The wgmmas run on every stage, whether or not this consumer's runs were loaded: a branch around
      // them is divergent to ptxas, which then serializes every wgmma (C7518). Columns of D from runs that
      // were not loaded are never stored: they are padding slots [kr, kt), written as zero, or past kt.
      for (int st = 0; st < w.stages; ++st) {
        const uint32_t s = (seq + static_cast<uint32_t>(st)) % kStages;
        mbarrier_wait_parity(&full[s], ((seq + static_cast<uint32_t>(st)) / kStages) & 1);
        const uint32_t stage = smem_addr(stages + s * kStageBytes);
        wgmma_fence();
#pragma unroll
        for (int k4 = 0; k4 < kStepsPerStage; ++k4) {
          // B: this consumer's 8 runs, tokens 16 k4 .. + 15 (runs LBO = 2 KB apart, 8 tokens SBO = 256 B)
          const uint64_t desc_b = make_smem_desc(stage + kGyBytes + cw * 8 * kRunBytes + k4 * 16 * kRunRowBytes,
                                                 Swizzle::k32B, kRunBytes, 8 * kRunRowBytes);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            // A: outputs 64 h .. + 63, the same tokens (8 tokens SBO = 1 KB; one 64-output block: LBO unused)
            const uint64_t desc_a = make_smem_desc(stage + h * kGyHalfBytes + k4 * 16 * kGyRowBytes, Swizzle::k128B,
                                                   kGyHalfBytes, 8 * kGyRowBytes);
            if constexpr (std::is_same_v<T, __half>) wgmma_m64n128k16_ss_mn_f16(acc[h], desc_a, desc_b, st > 0 || k4 > 0);
            else wgmma_m64n128k16_ss_mn_bf16(acc[h], desc_a, desc_b, st > 0 || k4 > 0);
          }
        }
        wgmma_commit_group();
        wgmma_wait_group<1>();  // stage st - 1 is complete: release its slot
        if (st > 0) release(st - 1);
      }
      wgmma_wait_group<0>();
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 64; ++e) fence_operand(acc[h][e]);  // the epilogue reads them after the wait
      if (w.stages > 0) release(w.stages - 1);
      seq += static_cast<uint32_t>(w.stages);
      if (!writes) continue;
      if (w.stages == 0) {  // no token in this range (the plan makes none; kept for an empty M)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int e = 0; e < 64; ++e) acc[h][e] = 0.f;
      }
      // ---- epilogue: gV_t[j, kk] (or the split's fp32 partial); padding slots [kr, kt) get zero
      // (their columns of D come from runs that were not loaded: selected away, never multiplied)
      using H = Half16<T>;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int kk = pc + 8 * j + 2 * t4;  // two adjacent slots kk, kk + 1 (kt % 8 == 0: both or neither)
        if (kk >= ti.kt) continue;
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            const int jl = 64 * h + 16 * wi + g8 + 8 * hr;  // output within the slice
            if (jl >= w.sl.gv) continue;
            const int64_t at = ti.voff + static_cast<int64_t>(w.sl.j0 + jl) * ti.kt + kk;
            const float v0 = kk < ti.kr ? acc[h][4 * j + 2 * hr] : 0.f;
            const float v1 = kk + 1 < ti.kr ? acc[h][4 * j + 2 * hr + 1] : 0.f;
            if (p.splits == 1) {
              *reinterpret_cast<uint32_t*>(reinterpret_cast<uint16_t*>(p.out) + at) =
                  H::from_float(v0) | (static_cast<uint32_t>(H::from_float(v1)) << 16);
            } else {
              *reinterpret_cast<float2*>(p.ws + static_cast<int64_t>(w.split) * p.nv + at) = make_float2(v0, v1);
            }
          }
      }
    }
  }
  cluster_sync();  // no CTA exits while a peer may still multicast to it or arrive on its barriers
#elif defined(__CUDA_ARCH__)
  __trap();  // sm_80 pass of the fat binary: never launched
#endif
}

}  // namespace tilesparse::cuda
