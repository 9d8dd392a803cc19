// grad_values kernels of tw_linear, torch-free.
//
//   gV_t[j, kk] = sum_m grad_out[m, cols_t[j]] * x[m, rows_t[kk]]
//
// A reduction over M. Every block owns a disjoint set of gV elements and
// loops over the rows of its M-split, so no two blocks write the same
// element: with one split the block writes gV itself; with S > 1 splits
// (few blocks, long M) each split writes its fp32 (fp64) partial to a
// workspace [S, num_values] and reduce_splits_kernel adds the S partials in
// a fixed order. Deterministic, no atomics.
//
// v1 (tw_grad_values_mma_kernel, tw_grad_values_simt_kernel): block = (tile
// t, j-chunk, kk-chunk); x[:, rows_t] is gathered from global memory per
// tile, so every tile re-reads (nearly) every 32-byte sector of x's rows.
// v2 (tw_grad_values_v2_kernel): block = (4 slices of 64 outputs of any
// tiles, x chunk of KC input features); x[rows, chunk] is read once per block,
// dense, with 16-byte cp.async, and each slice gathers its tile's kept
// features of the chunk from shared memory.
#pragma once

#include "tw_device.cuh"

namespace tilesparse::cuda {

template <typename T, typename Acc>
struct GradValuesParams {
  const T* gy;  // grad_out [m, n]
  int64_t ldg;
  const T* x;   // [m, k]
  int64_t ldx;
  int64_t m, n, k;
  DevLayout layout;
  int64_t nv;          // num_values
  T* out;              // gV (splits == 1)
  Acc* ws;             // workspace [splits, nv] (splits > 1), else null
  int64_t split_rows;  // rows of M per split (a multiple of the kernel's BK)
  int32_t jchunks, kchunks;
  bool gy_vec, x_vec;
  // v2 only
  const int32_t* bounds;  // [num_tiles, nchunks + 1]: slots of rows_t below chunk c (chunk_bounds_kernel)
  int32_t kc, nchunks;    // x chunk width (a multiple of 128) and ceil(k / kc)
  int64_t num_slices;     // num_tiles * tile / 64
  // sm90u only (device memory, from the layout's host cache: sm90_layout.cuh)
  const int32_t* sm90_slices = nullptr;   // the slice table
  int64_t sm90_num_slices = 0;
  const int32_t* sm90_entries = nullptr;  // sm90_gv_item_table pairs
  int64_t sm90_num_entries = 0;
};

template <int BMJ, int BNK, int BK, int STAGES>
constexpr int gv_mma_smem_bytes() {
  return STAGES * BK * ((BMJ + 8) + (BNK + 8)) * 2;
}

// Tensor-core kernel (T = __half or __nv_bfloat16, Acc = float).
template <typename T, int BMJ, int BNK, int BK, int WARPS_M, int WARPS_N, int STAGES>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32, 1) tw_grad_values_mma_kernel(
    const GradValuesParams<T, float> p) {
  constexpr int THREADS = WARPS_M * WARPS_N * 32;
  constexpr int WM = BMJ / WARPS_M, WN = BNK / WARPS_N;
  constexpr int MT = WM / 16, NT = WN / 8;
  constexpr int LDA = BMJ + 8, LDB = BNK + 8;
  static_assert(WM % 16 == 0 && WN % 16 == 0 && BK % 16 == 0, "bad warp tile");
  using H = Half16<T>;

  unsigned char* smem_raw = dynamic_smem();
  uint16_t* As = reinterpret_cast<uint16_t*>(smem_raw);  // [STAGES][BK (m)][LDA (j)]
  uint16_t* Bs = As + STAGES * BK * LDA;                 // [STAGES][BK (m)][LDB (kk)]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const int64_t per_tile = static_cast<int64_t>(p.jchunks) * p.kchunks;
  const int64_t t = blockIdx.x / per_tile;
  const int jc = static_cast<int>((blockIdx.x % per_tile) / p.kchunks);
  const int kc = static_cast<int>(blockIdx.x % p.kchunks);
  const int64_t split = blockIdx.y;

  const TileInfo ti = tile_info(p.layout, t, p.nv, p.k);
  const int j0 = jc * BMJ, kk0 = kc * BNK;
  if (!ti.ok || j0 >= ti.g || kk0 >= ti.kt) return;
  const int gv = ti.g - j0 < BMJ ? ti.g - j0 : BMJ;
  // kv slots are written; x is gathered for the kept ones only, so padding gets zero gradient
  const int kv = ti.kt - kk0 < BNK ? ti.kt - kk0 : BNK;
  const int kvr = ti.kr - kk0 < kv ? (ti.kr - kk0 > 0 ? ti.kr - kk0 : 0) : kv;
  const int64_t ms = split * p.split_rows;
  const int64_t me = ms + p.split_rows < p.m ? ms + p.split_rows : p.m;
  const int num_k = ms < me ? static_cast<int>((me - ms + BK - 1) / BK) : 0;
  const int32_t* cols_t = p.layout.cols + t * p.layout.tile + j0;
  const int32_t* rows_t = p.layout.rows + ti.lo + kk0;
  const uint16_t* gys = reinterpret_cast<const uint16_t*>(p.gy);
  const uint16_t* xs = reinterpret_cast<const uint16_t*>(p.x);

  TileLoader<BK, BMJ, THREADS, LDA> la;
  TileLoader<BK, BNK, THREADS, LDB> lb;
  auto issue = [&](int s) {
    const int64_t r0 = ms + static_cast<int64_t>(s) * BK;
    const int rv = me - r0 < BK ? static_cast<int>(me - r0) : BK;
    la.issue(As + (s % STAGES) * BK * LDA, gys, p.ldg, r0, rv, cols_t, 0, gv, p.n, p.gy_vec, tid);
    lb.issue(Bs + (s % STAGES) * BK * LDB, xs, p.ldx, r0, rv, rows_t, 0, kvr, p.k, p.x_vec, tid);
  };
  auto store = [&](int s) {
    la.store(As + (s % STAGES) * BK * LDA, tid);
    lb.store(Bs + (s % STAGES) * BK * LDB, tid);
  };

  float acc[MT][NT][4];
  zero_accumulators(acc);

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_k) issue(s);
    cp_async_commit();
    if (s < num_k) store(s);
  }
  for (int it = 0; it < num_k; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int nk = it + STAGES - 1;
    if (nk < num_k) issue(nk);
    cp_async_commit();
    const uint16_t* as = As + (it % STAGES) * BK * LDA;
    const uint16_t* bs = Bs + (it % STAGES) * BK * LDB;
    warp_mma_slice<H, BK>(
        acc, [&](uint32_t(&a)[4], int m, int ks) { load_a_mmajor(a, as, LDA, wm * WM + m, ks, lane); },
        [&](uint32_t(&b)[4], int n, int ks) { load_b_nmajor(b, bs, LDB, wn * WN + n, ks, lane); });
    if (nk < num_k) store(nk);
  }
  cp_async_wait<0>();

  // Epilogue straight from the fragments: gV_t is [g, kt] row-major.
  uint16_t* out = reinterpret_cast<uint16_t*>(p.out);
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int jj = wm * WM + i * 16 + (lane >> 2) + 8 * (e >> 1);
        const int kk = wn * WN + j * 8 + 2 * (lane & 3) + (e & 1);
        if (jj >= gv || kk >= kv) continue;
        const int64_t idx = ti.voff + static_cast<int64_t>(j0 + jj) * ti.kt + kk0 + kk;
        if (p.ws != nullptr) {
          p.ws[split * p.nv + idx] = acc[i][j][e];
        } else {
          out[idx] = H::from_float(acc[i][j][e]);
        }
      }
}

// SIMT kernel (T = float or double, Acc = T): 64 x 64 block of gV_t, M in steps of 16.
constexpr int kGvSimtBJ = 64, kGvSimtBK = 64, kGvSimtBM = 16;

template <typename T>
__global__ void __launch_bounds__(256) tw_grad_values_simt_kernel(const GradValuesParams<T, T> p) {
  constexpr int BJ = kGvSimtBJ, BKK = kGvSimtBK, BM = kGvSimtBM;
  __shared__ T Gs[BM][BJ + 1];
  __shared__ T Xs[BM][BKK + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t per_tile = static_cast<int64_t>(p.jchunks) * p.kchunks;
  const int64_t t = blockIdx.x / per_tile;
  const int jc = static_cast<int>((blockIdx.x % per_tile) / p.kchunks);
  const int kc = static_cast<int>(blockIdx.x % p.kchunks);
  const int64_t split = blockIdx.y;
  const TileInfo ti = tile_info(p.layout, t, p.nv, p.k);
  const int j0 = jc * BJ, kk0 = kc * BKK;
  if (!ti.ok || j0 >= ti.g || kk0 >= ti.kt) return;
  const int gv = ti.g - j0 < BJ ? ti.g - j0 : BJ;
  const int kv = ti.kt - kk0 < BKK ? ti.kt - kk0 : BKK;  // slots written
  const int kvr = ti.kr - kk0 < kv ? (ti.kr - kk0 > 0 ? ti.kr - kk0 : 0) : kv;  // kept: x gathered
  const int64_t ms = split * p.split_rows;
  const int64_t me = ms + p.split_rows < p.m ? ms + p.split_rows : p.m;
  const int32_t* cols_t = p.layout.cols + t * p.layout.tile + j0;
  const int32_t* rows_t = p.layout.rows + ti.lo + kk0;

  // Each thread loads a fixed column (c) of both tiles: its indices once.
  const int c = tid % 64, rr = tid / 64;
  const int64_t gcol = c < gv ? clamp_index(cols_t[c], p.n) : -1;
  const int64_t xcol = c < kvr ? clamp_index(rows_t[c], p.k) : -1;

  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

  for (int64_t r0 = ms; r0 < me; r0 += BM) {
#pragma unroll
    for (int i = 0; i < BM / 4; ++i) {
      const int r = rr + 4 * i;
      const int64_t m = r0 + r;
      Gs[r][c] = (m < me && gcol >= 0) ? p.gy[m * p.ldg + gcol] : T(0);
      Xs[r][c] = (m < me && xcol >= 0) ? p.x[m * p.ldx + xcol] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < BM; ++r) {
      T a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = Gs[r][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Xs[r][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int jj = ty + 16 * i, kk = tx + 16 * j;
      if (jj >= gv || kk >= kv) continue;
      const int64_t idx = ti.voff + static_cast<int64_t>(j0 + jj) * ti.kt + kk0 + kk;
      if (p.ws != nullptr) {
        p.ws[split * p.nv + idx] = acc[i][j];
      } else {
        p.out[idx] = acc[i][j];
      }
    }
}

// ---------------------------------------------------------------------------
// v2: x once per block.
//
// Block = (group g of 4 consecutive 64-output slices, x chunk c, split s);
// slice i is outputs j0 .. j0+63 of tile t (tile % 64 == 0, so the group's
// gy columns are cols[256 g .. 256 g + 256), consecutive in `cols`). Its
// work: for each slice, the kept positions [b_t[c], b_t[c+1]) of tile t
// whose features fall in chunk c, cut into items of 64 positions; the 8
// warps take one item each per pass (passes = ceil(items / 8); the plan
// sizes KC so that one pass is the rule). Per pass, the mainloop streams
// the split's rows in stages of 32:
//   x[32 rows, chunk]   dense, 16-byte cp.async (zero past k and past M)
//   gy[32 rows, group]  16-byte cp.async per slice whose 64 columns are one
//                       aligned run, else element loads stored at once
// and every warp computes its item: gV_item[64 j, 64 kk] += gy^T x, with
// A = gy^T by ldmatrix.trans and B gathered from the x chunk, each lane's
// feature offset (kept position 8 nt + g8 of the item) fixed for the pass.
// Padding slots (>= kr) are masked (B = 0): written, as zero.
//
// Traffic per block and row (bf16): x 2 KC + gy 512 bytes from L2 for
// 2 * 256 * (kept of the chunk) FLOPs; shared memory per warp and k16 step:
// 4 ldmatrix.x4 + 32 2-byte loads for 32 mma. See docs/performance.md.
// ---------------------------------------------------------------------------
constexpr int kGv2Slice = 64;                      // outputs per slice (one tile's)
constexpr int kGv2Slices = 4;                      // slices per block
constexpr int kGv2Cols = kGv2Slice * kGv2Slices;   // gy columns per block
constexpr int kGv2BK = 32;                         // rows of M per stage
constexpr int kGv2Stages = 3;
constexpr int kGv2Warps = 8;
constexpr int kGv2Item = 64;                       // kept positions per warp item
constexpr int kGv2Ldg = kGv2Cols + 8;              // gy stage row stride (elements)
constexpr int kGv2KcMax = 512;

constexpr int gv_v2_ldx(int kc) { return kc + 8; }  // x stage row stride: 16-byte rows, banks shifted by 4
constexpr int gv_v2_smem_bytes(int kc) { return kGv2Stages * kGv2BK * (gv_v2_ldx(kc) + kGv2Ldg) * 2; }

// One slice's geometry in chunk c: kept positions [lo, hi) of tile t.
struct Gv2Slice {
  TileInfo ti;
  int64_t t;
  int j0, gv, lo, hi;
};

template <typename T>
__device__ __forceinline__ Gv2Slice gv_v2_slice(const GradValuesParams<T, float>& p, int64_t slice, int c) {
  Gv2Slice s{{0, 0, 0, 0, 0, false}, 0, 0, 0, 0, 0};
  if (slice >= p.num_slices) return s;
  const int64_t spt = p.layout.tile / kGv2Slice;
  s.t = slice / spt;
  s.j0 = static_cast<int>(slice % spt) * kGv2Slice;
  s.ti = tile_info(p.layout, s.t, p.nv, p.k);
  if (!s.ti.ok || s.j0 >= s.ti.g) return s;
  s.gv = s.ti.g - s.j0 < kGv2Slice ? s.ti.g - s.j0 : kGv2Slice;
  const int32_t* b = p.bounds + s.t * (p.nchunks + 1);
  s.lo = static_cast<int>(clamp64(b[c], 0, s.ti.kt));
  s.hi = static_cast<int>(clamp64(b[c + 1], s.lo, s.ti.kt));
  return s;
}

template <typename T>
__global__ void __launch_bounds__(kGv2Warps * 32, 1) tw_grad_values_v2_kernel(const GradValuesParams<T, float> p) {
  constexpr int THREADS = kGv2Warps * 32;
  constexpr int MT = kGv2Slice / 16, NT = kGv2Item / 8;
  using H = Half16<T>;
  const int ldx = gv_v2_ldx(p.kc);
  uint16_t* xs = reinterpret_cast<uint16_t*>(dynamic_smem());  // [stages][BK][ldx]
  uint16_t* gs = xs + kGv2Stages * kGv2BK * ldx;               // [stages][BK][kGv2Ldg]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g8 = lane >> 2, t4 = lane & 3;
  const int64_t group = blockIdx.x / p.nchunks;
  const int c = static_cast<int>(blockIdx.x % p.nchunks);
  const int64_t split = blockIdx.y;
  const int64_t ms = split * p.split_rows;
  const int64_t me = ms + p.split_rows < p.m ? ms + p.split_rows : p.m;
  const int num_steps = ms < me ? static_cast<int>((me - ms + kGv2BK - 1) / kGv2BK) : 0;
  const int64_t f_base = static_cast<int64_t>(c) * p.kc;
  const uint16_t* xg = reinterpret_cast<const uint16_t*>(p.x);
  const uint16_t* gyg = reinterpret_cast<const uint16_t*>(p.gy);
  const int32_t* gcols = p.layout.cols + group * kGv2Cols;
  const int cols_valid = static_cast<int>(clamp64(p.layout.num_cols - group * kGv2Cols, 0, kGv2Cols));

  // Items of the 4 slices (block-uniform: every thread reads the same bounds).
  int items[kGv2Slices], total = 0;
#pragma unroll
  for (int i = 0; i < kGv2Slices; ++i) {
    const Gv2Slice s = gv_v2_slice(p, group * kGv2Slices + i, c);
    items[i] = s.gv > 0 ? (s.hi - s.lo + kGv2Item - 1) / kGv2Item : 0;
    total += items[i];
  }
  // gy slice i is one aligned run of 64 columns: 16-byte copies (block-uniform)
  bool gvec[kGv2Slices];
#pragma unroll
  for (int i = 0; i < kGv2Slices; ++i) {
    const int c0 = i * kGv2Slice;
    gvec[i] = p.gy_vec && c0 + kGv2Slice <= cols_valid && gcols[c0 + kGv2Slice - 1] - gcols[c0] == kGv2Slice - 1 &&
              (gcols[c0] & 7) == 0 && gcols[c0] >= 0 && gcols[c0 + kGv2Slice - 1] < p.n;
  }

  // Stage s of the pass: rows ms + 32 s ..
  auto issue = [&](int s) {
    const int64_t r0 = ms + static_cast<int64_t>(s) * kGv2BK;
    const int rv = me - r0 < kGv2BK ? static_cast<int>(me - r0) : kGv2BK;
    uint16_t* xd = xs + (s % kGv2Stages) * kGv2BK * ldx;
    const int cpr = p.kc / 8;  // 16-byte copies per x row
    for (int ci = tid; ci < kGv2BK * cpr; ci += THREADS) {
      const int r = ci / cpr, cc = (ci % cpr) * 8;
      const int64_t left = p.k - (f_base + cc);
      const int bytes = r < rv && left > 0 ? (left >= 8 ? 16 : static_cast<int>(left) * 2) : 0;
      cp_async16(xd + r * ldx + cc, bytes > 0 ? xg + (r0 + r) * p.ldx + f_base + cc : xg, bytes);
    }
    uint16_t* gd = gs + (s % kGv2Stages) * kGv2BK * kGv2Ldg;
#pragma unroll
    for (int i = 0; i < kGv2Slices; ++i) {
      const int c0 = i * kGv2Slice;
      if (gvec[i]) {  // 32 rows x 8 copies: one per thread
        const int r = tid / 8, cc = (tid % 8) * 8;
        cp_async16(gd + r * kGv2Ldg + c0 + cc, r < rv ? gyg + (r0 + r) * p.ldg + gcols[c0] + cc : gyg,
                   r < rv ? 16 : 0);
      } else {  // gathered columns: element loads, stored at once (the slot is free)
        const int jj = tid % kGv2Slice;
        const int64_t col = c0 + jj < cols_valid ? clamp_index(gcols[c0 + jj], p.n) : -1;
#pragma unroll
        for (int u = 0; u < kGv2BK * kGv2Slice / THREADS; ++u) {
          const int r = tid / kGv2Slice + u * (THREADS / kGv2Slice);
          gd[r * kGv2Ldg + c0 + jj] = col >= 0 && r < rv ? __ldg(gyg + (r0 + r) * p.ldg + col) : uint16_t(0);
        }
      }
    }
  };

  const int passes = (total + kGv2Warps - 1) / kGv2Warps;
  for (int pass = 0; pass < passes; ++pass) {
    // ---- this warp's item: slice si, kept positions [kk_lo, kk_hi)
    int q = pass * kGv2Warps + warp, si = -1;
#pragma unroll
    for (int i = 0; i < kGv2Slices; ++i) {
      if (si < 0 && q < items[i]) si = i;
      else if (si < 0) q -= items[i];
    }
    Gv2Slice sl{{0, 0, 0, 0, 0, false}, 0, 0, 0, 0, 0};
    if (si >= 0) sl = gv_v2_slice(p, group * kGv2Slices + si, c);
    const int kk_lo = si >= 0 ? sl.lo + q * kGv2Item : 0;
    const int kk_hi = si >= 0 ? (sl.hi - kk_lo < kGv2Item ? sl.hi : kk_lo + kGv2Item) : 0;
    const int ntu = (kk_hi - kk_lo + 7) / 8;  // n-tiles with slots
    // The lane's x column of n-tile nt: kept position kk_lo + 8 nt + g8; -1: masked
    int off[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int kk = kk_lo + 8 * nt + g8;
      off[nt] = -1;
      if (kk < kk_hi && kk < sl.ti.kr) {
        const int64_t f = clamp_index(p.layout.rows[sl.ti.lo + kk], p.k);
        off[nt] = static_cast<int>(clamp64(f - f_base, 0, p.kc - 1));
      }
    }

    float acc[MT][NT][4];
    zero_accumulators(acc);

#pragma unroll
    for (int s = 0; s < kGv2Stages - 1; ++s) {
      if (s < num_steps) issue(s);
      cp_async_commit();
    }
    for (int it = 0; it < num_steps; ++it) {
      cp_async_wait<kGv2Stages - 2>();
      __syncthreads();  // stage it landed; the slot of it - 1 is free (every warp is past it)
      if (it + kGv2Stages - 1 < num_steps) issue(it + kGv2Stages - 1);
      cp_async_commit();
      if (si < 0) continue;
      const uint16_t* xst = xs + (it % kGv2Stages) * kGv2BK * ldx;
      const uint16_t* gst = gs + (it % kGv2Stages) * kGv2BK * kGv2Ldg;
#pragma unroll
      for (int ks = 0; ks < kGv2BK; ks += 16) {
        uint32_t af[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) load_a_mmajor(af[mt], gst, kGv2Ldg, si * kGv2Slice + 16 * mt, ks, lane);
        const uint16_t* xr = xst + (ks + 2 * t4) * ldx;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          if (nt >= ntu) break;  // warp-uniform
          const int o = off[nt] < 0 ? 0 : off[nt];
          const uint32_t keep = off[nt] < 0 ? 0u : 0xffffffffu;
          uint32_t b[2];
          b[0] = (xr[o] | (static_cast<uint32_t>(xr[ldx + o]) << 16)) & keep;
          b[1] = (xr[8 * ldx + o] | (static_cast<uint32_t>(xr[9 * ldx + o]) << 16)) & keep;
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) H::mma(acc[mt][nt], af[mt], b);
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // the next pass's prologue refills slots warps may still read

    // ---- epilogue: d0..d3 of (mt, nt) are outputs g8, g8 + 8 and positions 2 t4, 2 t4 + 1
    if (si < 0) continue;
    uint16_t* out = reinterpret_cast<uint16_t*>(p.out);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = 16 * mt + g8 + 8 * (e >> 1);
          const int kk = kk_lo + 8 * nt + 2 * t4 + (e & 1);
          if (j >= sl.gv || kk >= kk_hi) continue;
          const int64_t idx = sl.ti.voff + static_cast<int64_t>(sl.j0 + j) * sl.ti.kt + kk;
          if (p.ws != nullptr) {
            p.ws[split * p.nv + idx] = acc[mt][nt][e];
          } else {
            out[idx] = H::from_float(acc[mt][nt][e]);
          }
        }
  }
}

// out[i] = sum_s ws[s, i], in split order (deterministic). Convert(Acc) -> T.
template <typename T, typename Acc, typename Convert>
__global__ void reduce_splits_kernel(const Acc* ws, int64_t splits, int64_t nv, T* out, Convert convert) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nv;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Acc s = ws[i];
    for (int64_t k = 1; k < splits; ++k) s += ws[k * nv + i];
    out[i] = convert(s);
  }
}

}  // namespace tilesparse::cuda
