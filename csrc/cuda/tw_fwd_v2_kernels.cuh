// Forward of tw_linear, v2: x is read once per M-block, not once per tile.
//
//   y[m, cols_t[j]] = sum_kk x[m, rows_t[kk]] * V_t[j, kk] + bias[cols_t[j]]
//
// Block = (slice group, M-block, K-split). A slice is 64 consecutive output
// features of one tile (tiles are multiples of 64 wide); a block owns
// WARPS_N slices, one per warp column, so it computes BM x (64 * WARPS_N)
// outputs that may belong to several tiles. Mainloop, per K-chunk c of KC
// input features:
//   1. x[m0 : m0+BM, c*KC : (c+1)*KC] lands in shared memory once, dense,
//      with 16-byte cp.async (a ring of 3 chunk buffers: chunks c and c+1
//      are resident while c+2 is in flight);
//   2. every warp runs the k16-steps of its own tile that start in chunk c.
//      A step covers 16 consecutive kept features of the tile; its A
//      fragments are gathered element by element from the resident chunks
//      (a step that runs past chunk c+1, possible only below 1/16 density,
//      reads those elements from global memory); its B fragments are
//      8-byte loads of V_t straight from global memory (L2), prefetched one
//      step ahead. The k order inside a step is permuted so that a lane's
//      four B elements are contiguous: logical k {2t, 2t+1, 2t+8, 2t+9} of
//      lane t = lane & 3 is kept position 4t .. 4t+3 (A uses the same map).
// Epilogue: + bias, scattered to cols_t straight from the fragments (one
// K-split), or fp32 partials to a workspace that reduce_fwd_splits_kernel
// adds in split order (small M, where one split would leave SMs idle).
// Deterministic, no atomics. Padding slots (kk >= kr) are masked in A.
//
// Traffic per block and chunk (bf16): x 2*BM*KC bytes from L2, V 2*64*16 bytes
// per warp-step (read by each of the WARPS_M warps sharing a slice; the
// second hits L1), y 2*BM*64 per warp once. See docs/performance.md.
#pragma once

#include "tw_device.cuh"

namespace tilesparse::cuda {

constexpr int kV2Slice = 64;  // output features per warp (one tile's slice)
constexpr int kV2KC = 128;    // input features per x chunk
constexpr int kV2Bufs = 3;    // chunk buffers: c, c+1 resident, c+2 in flight
constexpr int kV2Ldx = kV2KC + 8;  // chunk row stride (elements): 16-byte aligned, shifts banks by 4 words

template <typename T>
struct FwdV2Params {
  const T* x;
  int64_t ldx;
  int64_t m;
  int64_t k;
  const T* values;
  int64_t nv;
  const T* bias;  // nullable
  T* y;
  int64_t ldy;
  int64_t n;
  DevLayout layout;
  const int32_t* bounds;  // [num_tiles, nchunks + 1]: kept positions of rows_t before chunk c
  int32_t nchunks;        // ceil(k / KC)
  int32_t chunks_per_split;
  int64_t num_slices;     // num_tiles * tile / 64
  float* ws;              // [splits, m, num_slices * 64] partials, or null (one split)
  int64_t mblock_offset;
  bool v8;                // values 8-byte aligned: 8-byte B loads where a tile's slots allow
};

template <int BM>
constexpr int fwd_v2_smem_bytes() {
  return kV2Bufs * BM * kV2Ldx * 2;
}

// The chunk's x block, [BM][KC] at stride kV2Ldx, zero past m and k.
template <int BM, int THREADS>
__device__ __forceinline__ void fwd_v2_load_chunk(uint16_t* buf, const uint16_t* x, int64_t ldx, int64_t m0,
                                                  int rows_valid, int64_t k, int c, int tid) {
  constexpr int CPR = kV2KC / 8;  // 16-byte copies per row
  static_assert((BM * CPR) % THREADS == 0, "fwd_v2_load_chunk: copies must divide evenly");
#pragma unroll
  for (int v = 0; v < BM * CPR / THREADS; ++v) {
    const int ci = tid + v * THREADS;
    const int r = ci / CPR, cc = (ci % CPR) * 8;
    const int64_t f0 = static_cast<int64_t>(c) * kV2KC + cc;
    const int64_t left = k - f0;
    const int bytes = r < rows_valid && left > 0 ? (left >= 8 ? 16 : static_cast<int>(left) * 2) : 0;
    cp_async16(buf + r * kV2Ldx + cc, bytes > 0 ? x + (m0 + r) * ldx + f0 : x, bytes);
  }
}

template <typename T, int BM, int WARPS_M, int WARPS_N>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32, 1) tw_fwd_v2_kernel(const FwdV2Params<T> p) {
  constexpr int THREADS = WARPS_M * WARPS_N * 32;
  constexpr int WM = BM / WARPS_M, MT = WM / 16, NT = kV2Slice / 8;
  static_assert(WM % 16 == 0, "bad warp tile");
  using H = Half16<T>;

  uint16_t* xs = reinterpret_cast<uint16_t*>(dynamic_smem());  // [kV2Bufs][BM][kV2Ldx]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const int g8 = lane >> 2, t4 = lane & 3;
  const int64_t m0 = (static_cast<int64_t>(blockIdx.y) + p.mblock_offset) * BM;
  if (m0 >= p.m) return;  // uniform
  const int rows_valid = p.m - m0 < BM ? static_cast<int>(p.m - m0) : BM;
  const uint16_t* xg = reinterpret_cast<const uint16_t*>(p.x);

  // ---- this warp's slice: tile t, outputs j0 .. j0 + gv of it
  const int64_t spt = p.layout.tile / kV2Slice;
  const int64_t slice = static_cast<int64_t>(blockIdx.x) * WARPS_N + wn;
  const int64_t t = slice / spt;
  const int j0 = static_cast<int>(slice % spt) * kV2Slice;
  TileInfo ti{0, 0, 0, 0, 0, false};
  if (slice < p.num_slices) ti = tile_info(p.layout, t, p.nv, p.k);
  // outputs of the slice (written even when the tile keeps nothing: bias only)
  const int gv = j0 < ti.g ? (ti.g - j0 < kV2Slice ? ti.g - j0 : kV2Slice) : 0;
  const int kr = gv > 0 && ti.ok ? ti.kr : 0;
  const int32_t* rows_t = p.layout.rows + ti.lo;
  const uint16_t* vt = reinterpret_cast<const uint16_t*>(p.values) + ti.voff;
  const bool b8 = p.v8 && (ti.voff % 4) == 0 && (ti.kt % 4) == 0;
  const int32_t* bounds_t = p.bounds + (gv > 0 ? t : 0) * (p.nchunks + 1);
  // first step owned by chunk c: ceil(kept features before chunk c / 16)
  auto first_step = [&](int c) {
    if (kr == 0) return 0;
    const int64_t b = clamp64(bounds_t[c < p.nchunks ? c : p.nchunks], 0, kr);
    return static_cast<int>((b + 15) / 16);
  };

  // B fragments of step s for the warp's 8 n-tiles: lane (g8, t4) holds V_t[j0 + 8*nt + g8, 16s + 4t4 .. +4).
  auto load_b = [&](uint32_t (&b)[NT][2], int s) {
    const int kk = 16 * s + 4 * t4;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int j = 8 * nt + g8;
      b[nt][0] = b[nt][1] = 0u;
      if (j >= gv) continue;
      const uint16_t* src = vt + static_cast<int64_t>(j0 + j) * ti.kt + kk;
      if (b8) {
        if (kk < ti.kt) {
          const uint2 v = *reinterpret_cast<const uint2*>(src);
          b[nt][0] = v.x;
          b[nt][1] = v.y;
        }
      } else {
        uint16_t e[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) e[i] = kk + i < ti.kt ? src[i] : uint16_t(0);
        b[nt][0] = e[0] | (static_cast<uint32_t>(e[1]) << 16);
        b[nt][1] = e[2] | (static_cast<uint32_t>(e[3]) << 16);
      }
      // padding slots are not weights: zero them here too (A is masked as
      // well, but 0 * NaN would still poison the sum)
      if (kk + 4 > kr) {
        const uint32_t keep0 = (kk < kr ? 0xffffu : 0u) | (kk + 1 < kr ? 0xffff0000u : 0u);
        const uint32_t keep1 = (kk + 2 < kr ? 0xffffu : 0u) | (kk + 3 < kr ? 0xffff0000u : 0u);
        b[nt][0] &= keep0;
        b[nt][1] &= keep1;
      }
    }
  };

  float acc[MT][NT][4];
  zero_accumulators(acc);

  // ---- mainloop over this split's chunks
  const int c_begin = static_cast<int>(blockIdx.z) * p.chunks_per_split;
  const int c_end = c_begin + p.chunks_per_split < p.nchunks ? c_begin + p.chunks_per_split : p.nchunks;
  // chunks loaded: [c_begin, c_load_end); a step owned by c_end - 1 may read chunk c_end
  const int c_load_end = c_end < p.nchunks ? c_end + 1 : c_end;
#pragma unroll
  for (int i = 0; i < kV2Bufs - 1; ++i) {
    const int c = c_begin + i;
    if (c < c_load_end) fwd_v2_load_chunk<BM, THREADS>(xs + (c % kV2Bufs) * BM * kV2Ldx, xg, p.ldx, m0, rows_valid, p.k, c, tid);
    cp_async_commit();
  }
  for (int c = c_begin; c < c_end; ++c) {
    cp_async_wait<0>();
    __syncthreads();  // chunks c, c+1 landed; the buffer of c - 1 is free (every warp is past it)
    if (c + 2 < c_load_end)
      fwd_v2_load_chunk<BM, THREADS>(xs + ((c + 2) % kV2Bufs) * BM * kV2Ldx, xg, p.ldx, m0, rows_valid, p.k, c + 2, tid);
    cp_async_commit();

    const int s_lo = first_step(c), s_hi = first_step(c + 1);
    const int64_t win_lo = static_cast<int64_t>(c) * kV2KC;
    const int64_t win_hi = static_cast<int64_t>(c + 2 < c_load_end ? c + 2 : c_load_end) * kV2KC;
    uint32_t bnext[NT][2];
    if (s_lo < s_hi) load_b(bnext, s_lo);
    for (int s = s_lo; s < s_hi; ++s) {
      uint32_t bf[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        bf[nt][0] = bnext[nt][0];
        bf[nt][1] = bnext[nt][1];
      }
      if (s + 1 < s_hi) load_b(bnext, s + 1);
      // The lane's four kept positions and where their x columns are:
      // off >= 0: resident (shared-memory offset), -1: masked (padding or
      // past kr), -2 - f: global column f (outside the window).
      int off[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int kk = 16 * s + 4 * t4 + i;
        off[i] = -1;
        if (kk < kr) {
          const int64_t f = clamp_index(rows_t[kk], p.k);
          if (f >= win_lo && f < win_hi) {
            const int64_t cf = f / kV2KC;
            off[i] = static_cast<int>((cf % kV2Bufs) * BM * kV2Ldx + (f - cf * kV2KC));
          } else {
            off[i] = static_cast<int>(-2 - f);
          }
        }
      }
      auto xval = [&](int r, int o) -> uint32_t {
        if (o == -1 || r >= rows_valid) return 0u;
        if (o >= 0) return xs[o + r * kV2Ldx];
        return __ldg(xg + (m0 + r) * p.ldx + (-2 - o));
      };
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int r0 = wm * WM + mt * 16 + g8, r1 = r0 + 8;
        uint32_t a[4];
        a[0] = xval(r0, off[0]) | (xval(r0, off[1]) << 16);
        a[1] = xval(r1, off[0]) | (xval(r1, off[1]) << 16);
        a[2] = xval(r0, off[2]) | (xval(r0, off[3]) << 16);
        a[3] = xval(r1, off[2]) | (xval(r1, off[3]) << 16);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) H::mma(acc[mt][nt], a, bf[nt]);
      }
    }
  }
  cp_async_wait<0>();

  // ---- epilogue: d0..d3 of (mt, nt) are rows g8, g8 + 8 and outputs 2t4, 2t4 + 1
  if (gv == 0) return;
  const int32_t* cols_t = p.layout.cols + t * p.layout.tile + j0;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int j = 8 * nt + 2 * t4;
    if (j >= gv) continue;
    const bool pair = j + 1 < gv;
    const int64_t c0 = clamp_index(cols_t[j], p.n);
    const int64_t c1 = pair ? clamp_index(cols_t[j + 1], p.n) : c0;
    float b0 = 0.f, b1 = 0.f;
    if (p.ws == nullptr && p.bias != nullptr) {
      const uint16_t* bias = reinterpret_cast<const uint16_t*>(p.bias);
      b0 = H::to_float(bias[c0]);
      b1 = H::to_float(bias[c1]);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * WM + mt * 16 + g8 + 8 * h;
        if (r >= rows_valid) continue;
        const float v0 = acc[mt][nt][2 * h], v1 = acc[mt][nt][2 * h + 1];
        if (p.ws != nullptr) {
          const int64_t wcols = p.num_slices * kV2Slice;
          float* w = p.ws + (static_cast<int64_t>(blockIdx.z) * p.m + m0 + r) * wcols + slice * kV2Slice + j;
          w[0] = v0;
          if (pair) w[1] = v1;
          continue;
        }
        uint16_t* yrow = reinterpret_cast<uint16_t*>(p.y) + (m0 + r) * p.ldy;
        const uint16_t lo = H::from_float(v0 + b0), hi = H::from_float(v1 + b1);
        if (pair && c1 == c0 + 1 && (c0 % 2) == 0 && (p.ldy % 2) == 0 &&
            (reinterpret_cast<uintptr_t>(p.y) % 4) == 0) {
          *reinterpret_cast<uint32_t*>(yrow + c0) = lo | (static_cast<uint32_t>(hi) << 16);
        } else {
          yrow[c0] = lo;
          if (pair) yrow[c1] = hi;
        }
      }
  }
}

// y[m, cols] = sum_s ws[s, m, slice col] + bias, in split order (deterministic).
template <typename T>
__global__ void reduce_fwd_splits_kernel(const FwdV2Params<T> p, int32_t splits) {
  using H = Half16<T>;
  const int64_t wcols = p.num_slices * kV2Slice;
  const int64_t total = p.m * wcols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / wcols, q = i % wcols;
    const int64_t slice = q / kV2Slice, jj = q % kV2Slice;
    const int64_t spt = p.layout.tile / kV2Slice;
    const int64_t t = slice / spt;
    const int64_t j = (slice % spt) * kV2Slice + jj;  // output feature of tile t
    const TileInfo ti = tile_info(p.layout, t, p.nv, p.k);
    if (t >= p.layout.num_tiles || j >= ti.g) continue;
    float s = 0.f;
    for (int32_t z = 0; z < splits; ++z) s += p.ws[(static_cast<int64_t>(z) * p.m + r) * wcols + q];
    const int64_t col = clamp_index(p.layout.cols[t * p.layout.tile + j], p.n);
    if (p.bias != nullptr) s += H::to_float(reinterpret_cast<const uint16_t*>(p.bias)[col]);
    reinterpret_cast<uint16_t*>(p.y)[r * p.ldy + col] = H::from_float(s);
  }
}

}  // namespace tilesparse::cuda
