// grad_input of tw_linear on sm_90a (docs/performance.md "grad_input on
// wgmma"):
//
//   gX[m, rows_t[q]] += sum_j gy[m, cols_t[j]] * V_t[j, q]     over all tiles t
//
// Input feature r receives a product from every tile that keeps it, so the
// products are added up in a K-chunk accumulator, as grad_input v1 does:
// CTA (K-chunk of kc <= 240 features, M-block of 128 rows) owns gX[rows,
// chunk] in fp32 shared memory, walks every slice (128 outputs of a tile)
// in ascending order, and for each computes gy[rows, slice] @ V_t[slice,
// the tile's kept positions in the chunk] in items of 64 positions, adding
// each item's product into the accumulator columns rows_t[q] - k0. Every
// CTA writes its chunk once: no atomics, deterministic, any unit.
//
// wgmma m64n64k16 SS: A = gy [64 rows x 16 outputs], K-major (gy is
// row-major: its outputs are contiguous), one TMA box {64 outputs, 128 rows}
// per 64-output half of the slice, 128B swizzle; B = V_t [16 outputs x 64
// positions], MN-major (V_t is [outputs, slots] row-major: its positions are
// contiguous), from the forward's per-tile tensor maps (box {64 positions,
// 32 outputs}, 128B swizzle; positions past the tile's kept count and
// outputs past its width arrive as zeros). No thread touches an operand.
// It applies where each slice's outputs are consecutive columns (gy's box),
// which 1-D TW always is. N = 64, not 128: a tile keeps ~d kc <= 60 features
// of a chunk at 75% (the accumulator's shared memory bounds kc), so a
// 128-position item would be half padding.
//
// CTA = 384 threads = 3 warpgroups:
//   WG0, producer (setmaxnreg.dec 40): one thread fills two rings: gy, one
//   slice per stage ([128 rows x 128 outputs] = 32 KB, 2 stages), and V, one
//   64-output half of an item per stage ([64 outputs x 64 positions] = 8 KB,
//   4 stages: two items).
//   WG1, WG2, consumers (setmaxnreg.inc 232): rows [64 cw, 64 cw + 64) of
//   the block, the same items: one m64n64 accumulator, 8 k16 steps per item
//   (two V stages), then the read-modify-write of the product into their
//   own rows of the accumulator. A warp's 16 rows of the accumulator are its
//   own: zeroed, added to and written out by that warp alone (__syncwarp
//   orders its lanes' accesses); no CTA-wide barrier after the start.
//
// Synchronisation:
//   gy_full[s] (count 1, tx 32 KB), gy_empty[s] (count 8: every consumer warp)
//   v_full[s]  (count 1, tx 8 KB),  v_empty[s]  (count 8)
//
// Traffic per item (bf16) and CTA: V 16 KB from L2 (V leaves L2 once per
// 128-row block), gy 32 KB per slice that has items (gy leaves L2 once per
// chunk). Shared memory per item: TMA writes 16 KB of V (+ 32 KB of gy per
// slice), wgmma reads 2 x 8 x (2 KB A + 2 KB B) = 64 KB, the accumulator's
// read-modify-write 128 rows x kept positions x 8 B: ~2.6 times the tensor
// time, the bound (perf_model.py sm90_gi_time).
#pragma once

#include "tw_fwd_sm90_kernels.cuh"

namespace tilesparse::cuda {

namespace sm90_gi {
constexpr int kThreads = 384;
constexpr int kBM = 128;              // rows per CTA: 2 consumers x m64
constexpr int kItemPositions = 64;    // wgmma N
constexpr int kSliceOutputs = 128;    // outputs per slice: 8 k16 steps
constexpr int kHalfOutputs = 64;      // outputs per V stage (and per gy box)
constexpr int kStepsPerHalf = kHalfOutputs / 16;
constexpr int kGyStages = 2;
constexpr int kVStages = 4;
constexpr int kVBoxOutputs = 32;      // the tile maps' box {64 positions, 32 outputs}
constexpr uint32_t kGyRowBytes = kHalfOutputs * 2;                 // 128: one 128B-swizzle row
constexpr uint32_t kGyHalfBytes = kBM * kGyRowBytes;               // 16 KB: [128 rows][64 outputs]
constexpr uint32_t kGyBytes = 2 * kGyHalfBytes;                    // 32 KB: a slice
constexpr uint32_t kVRowBytes = kItemPositions * 2;                // 128
constexpr uint32_t kVBoxBytes = kVBoxOutputs * kVRowBytes;         // 4 KB
constexpr uint32_t kVBytes = kHalfOutputs * kVRowBytes;            // 8 KB: [64 outputs][64 positions]
constexpr int kMaxChunk = 240;        // accumulator columns: 128 x (240 + 8) x 4 B = 124 KB
constexpr int kAccPad = 8;            // row stride kc + 8 (= 8 mod 32 words): the scatter's 8 rows hit distinct banks
constexpr int kRegsProducer = 40, kRegsConsumer = 232;

struct SharedLayout {
  static constexpr uint32_t kGy = 0;                                // [kGyStages][2 halves][128 rows][64 outputs]
  static constexpr uint32_t kV = kGy + kGyStages * kGyBytes;       // [kVStages][64 outputs][64 positions]
  static constexpr uint32_t kGyFull = kV + kVStages * kVBytes;
  static constexpr uint32_t kGyEmpty = kGyFull + 8 * kGyStages;
  static constexpr uint32_t kVFull = kGyEmpty + 8 * kGyStages;
  static constexpr uint32_t kVEmpty = kVFull + 8 * kVStages;
  static constexpr uint32_t kAcc = kVEmpty + 8 * kVStages;         // [128 rows][kc + 8] fp32
};
}  // namespace sm90_gi

inline int gi_sm90_acc_stride(int kc) { return kc + sm90_gi::kAccPad; }
inline int gi_sm90_smem_bytes(int kc) {
  return static_cast<int>(sm90_gi::SharedLayout::kAcc) + sm90_gi::kBM * gi_sm90_acc_stride(kc) * 4 +
         static_cast<int>(sm90_fwd::kSwizzleAtom);
}

template <typename T>
struct GiSm90Params {
  CUtensorMap gy_map;             // gy [m, n] (dims {n, m}), box {64, 128}, 128B swizzle; encoded per call
  const CUtensorMap* tile_maps;   // [num_tiles]: V_t as dims {kr_t, g_t}, box {64, 32}, 128B swizzle (the forward's)
  DevLayout layout;
  const int32_t* bounds;          // [num_tiles, nkc + 1]: first slot of rows_t >= c * kc (chunk_bounds_kernel)
  int32_t nkc, kc;
  int64_t m, n, k, nv;
  int64_t mblock_offset;          // grid.y is split at 65535 blocks
  T* gx;                          // [m, k], leading dimension ldx
  int64_t ldx;
  bool gx_vec;                    // gx 16-byte aligned with rows of whole 16-byte units
};

template <typename T>
__global__ void __launch_bounds__(sm90_gi::kThreads, 1) tw_gi_sm90_kernel(const __grid_constant__ GiSm90Params<T> p) {
#if TS_FWD_SM90_BODY
  using namespace sm90_gi;
  using namespace sm90;
  using L = SharedLayout;

  unsigned char* smem = swizzle_aligned_smem();
  unsigned char* gys = smem + L::kGy;
  unsigned char* vs = smem + L::kV;
  uint64_t* gy_full = reinterpret_cast<uint64_t*>(smem + L::kGyFull);
  uint64_t* gy_empty = reinterpret_cast<uint64_t*>(smem + L::kGyEmpty);
  uint64_t* v_full = reinterpret_cast<uint64_t*>(smem + L::kVFull);
  uint64_t* v_empty = reinterpret_cast<uint64_t*>(smem + L::kVEmpty);
  float* accs = reinterpret_cast<float*>(smem + L::kAcc);
  const int ldacc = p.kc + kAccPad;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = tid / 128;
  const int chunk = blockIdx.x;
  const int64_t m0 = (static_cast<int64_t>(blockIdx.y) + p.mblock_offset) * kBM;
  const int64_t k0 = static_cast<int64_t>(chunk) * p.kc;
  const int kw = static_cast<int>(clamp64(p.k - k0, 0, p.kc));

  if (tid == 0) {
    for (int s = 0; s < kGyStages; ++s) {
      mbarrier_init(&gy_full[s], 1);
      mbarrier_init(&gy_empty[s], 8);
    }
    for (int s = 0; s < kVStages; ++s) {
      mbarrier_init(&v_full[s], 1);
      mbarrier_init(&v_empty[s], 8);
    }
    fence_mbarrier_init();
  }
  __syncthreads();  // the barriers exist before anyone waits on or arrives at them

  // The tile's kept slots [lo, hi) that fall into this chunk (padding slots excluded): producer and consumers
  // walk the same tiles and slices, and skip those without items alike.
  struct Span {
    TileInfo ti;
    int lo, hi;
  };
  auto span_of = [&](int64_t t) {
    Span s;
    s.ti = tile_info(p.layout, t, p.nv, p.k);
    s.lo = s.hi = 0;
    if (!s.ti.ok || s.ti.g <= 0 || m0 >= p.m) return s;
    const int32_t* b = p.bounds + t * (p.nkc + 1) + chunk;
    s.lo = static_cast<int>(clamp64(b[0], 0, s.ti.kr));
    s.hi = static_cast<int>(clamp64(b[1], s.lo, s.ti.kr));
    return s;
  };

  if (wg == 0) {
    // ======================= producer warpgroup =======================
    setmaxnreg_dec<kRegsProducer>();
    if (warp == 0 && lane == 0) {
      prefetch_tensormap(&p.gy_map);
      uint32_t gseq = 0, vseq = 0;
      for (int64_t t = 0; t < p.layout.num_tiles; ++t) {
        const Span sp = span_of(t);
        if (sp.hi <= sp.lo) continue;
        const CUtensorMap* vmap = p.tile_maps + t;
        prefetch_tensormap(vmap);
        for (int j0 = 0; j0 < sp.ti.g; j0 += kSliceOutputs, ++gseq) {
          const uint32_t gs = gseq % kGyStages, guse = gseq / kGyStages;
          if (guse > 0) mbarrier_wait_parity(&gy_empty[gs], (guse - 1) & 1);  // both consumers let go of the slot
          mbarrier_arrive_expect_tx(&gy_full[gs], kGyBytes);
          // the slice's first output column (its outputs are consecutive: the plan checked); rows past m and
          // columns past n arrive as zeros, columns of the next tile meet V's zero rows past the tile's width
          const int32_t c0 = static_cast<int32_t>(clamp_index(p.layout.cols[t * p.layout.tile + j0], p.n));
          for (int h = 0; h < 2; ++h)
            tma_load_2d(gys + gs * kGyBytes + h * kGyHalfBytes, &p.gy_map, &gy_full[gs], c0 + kHalfOutputs * h,
                        static_cast<int32_t>(m0));
          for (int q0 = sp.lo; q0 < sp.hi; q0 += kItemPositions)
            for (int h = 0; h < 2; ++h, ++vseq) {
              const uint32_t s = vseq % kVStages, use = vseq / kVStages;
              if (use > 0) mbarrier_wait_parity(&v_empty[s], (use - 1) & 1);
              mbarrier_arrive_expect_tx(&v_full[s], kVBytes);
              for (int b = 0; b < kHalfOutputs / kVBoxOutputs; ++b)
                tma_load_2d(vs + s * kVBytes + b * kVBoxBytes, vmap, &v_full[s], q0,
                            j0 + kHalfOutputs * h + kVBoxOutputs * b);
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
    const int r0 = 64 * cw + 16 * wi;  // this warp's 16 rows of the accumulator
    for (int i = lane; i < 16 * ldacc; i += 32) accs[r0 * ldacc + i] = 0.f;
    __syncwarp();
    uint32_t gseq = 0, vseq = 0;
    float acc[32];
    for (int64_t t = 0; t < p.layout.num_tiles; ++t) {
      const Span sp = span_of(t);
      if (sp.hi <= sp.lo) continue;
      const int32_t* rows_t = p.layout.rows + sp.ti.lo;
      for (int j0 = 0; j0 < sp.ti.g; j0 += kSliceOutputs, ++gseq) {
        const uint32_t gs = gseq % kGyStages;
        mbarrier_wait_parity(&gy_full[gs], (gseq / kGyStages) & 1);
        const uint32_t gy_stage = smem_addr(gys + gs * kGyBytes) + static_cast<uint32_t>(64 * cw) * kGyRowBytes;
        for (int q0 = sp.lo; q0 < sp.hi; q0 += kItemPositions) {
          // The wgmmas run for every item whatever its kept count: no branch around them (ptxas serializes
          // wgmmas under a branch it takes for divergent, C7518). Columns past the span are never added.
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t s = (vseq + static_cast<uint32_t>(h)) % kVStages;
            mbarrier_wait_parity(&v_full[s], ((vseq + static_cast<uint32_t>(h)) / kVStages) & 1);
            wgmma_fence();
#pragma unroll
            for (int k4 = 0; k4 < kStepsPerHalf; ++k4) {
              // A: rows 64 cw .. + 63, outputs 64 h + 16 k4 .. + 15 (K-major, 8 rows SBO = 1 KB)
              const uint64_t desc_a = make_smem_desc(gy_stage + h * kGyHalfBytes + k4 * 32, Swizzle::k128B, 16,
                                                     8 * kGyRowBytes);
              // B: outputs 16 k4 .. + 15 of the stage x its 64 positions (MN-major: one 128-byte span of N, LBO
              // unused; 8 K-rows SBO = 1 KB)
              const uint64_t desc_b = make_smem_desc(smem_addr(vs + s * kVBytes) + k4 * 16 * kVRowBytes,
                                                     Swizzle::k128B, kVBytes, 8 * kVRowBytes);
              if constexpr (std::is_same_v<T, __half>) wgmma_m64n64k16_ss_tb_f16(acc, desc_a, desc_b, h > 0 || k4 > 0);
              else wgmma_m64n64k16_ss_tb_bf16(acc, desc_a, desc_b, h > 0 || k4 > 0);
            }
            wgmma_commit_group();
          }
          wgmma_wait_group<1>();  // the first half's wgmmas completed: its V stage is free
          if (lane == 0) mbarrier_arrive(&v_empty[vseq % kVStages]);
          wgmma_wait_group<0>();
#pragma unroll
          for (int e = 0; e < 32; ++e) fence_operand(acc[e]);  // read below, after the wait
          if (lane == 0) mbarrier_arrive(&v_empty[(vseq + 1) % kVStages]);
          vseq += 2;
          // Add the item's product into the accumulator: column q of D is slot q0 + q of the tile, feature
          // rows_t[q0 + q]; within an item no two lanes add to one element (rows_t is strictly increasing over
          // kept slots), and the warp's lanes meet the next item after the __syncwarp.
#pragma unroll
          for (int j = 0; j < kItemPositions / 8; ++j)
#pragma unroll
            for (int e2 = 0; e2 < 2; ++e2) {
              const int q = q0 + 8 * j + 2 * t4 + e2;
              if (q >= sp.hi) continue;
              const int64_t col = static_cast<int64_t>(rows_t[q]) - k0;
              if (col < 0 || col >= kw) continue;
#pragma unroll
              for (int hr = 0; hr < 2; ++hr) accs[(r0 + g8 + 8 * hr) * ldacc + col] += acc[4 * j + 2 * hr + e2];
            }
          __syncwarp();
        }
        if (lane == 0) mbarrier_arrive(&gy_empty[gs]);  // the slice's last wgmma completed above
      }
    }
    // ---- epilogue: this warp's 16 rows of the chunk, fp32 -> T (16-byte stores where aligned)
    uint16_t* gx = reinterpret_cast<uint16_t*>(p.gx);
    const int cpr = (kw + 7) / 8;
    for (int ci = lane; ci < 16 * cpr; ci += 32) {
      const int r = ci / cpr, cc = (ci % cpr) * 8;
      if (m0 + r0 + r >= p.m) break;  // rows in order: the rest are past m too
      store_half8<T>(gx + (m0 + r0 + r) * p.ldx + k0 + cc, accs + (r0 + r) * ldacc + cc, kw - cc, p.gx_vec);
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // sm_80 pass of the fat binary: never launched
#endif
}

}  // namespace tilesparse::cuda
