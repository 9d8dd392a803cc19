// grad_values kernels of tw_linear, torch-free.
//
//   gV_t[j, kk] = sum_m grad_out[m, cols_t[j]] * x[m, rows_t[kk]]
//
// A reduction over M. Block (tile t, j-chunk, kk-chunk, split s) owns one
// [BMJ x BNK] block of gV_t and loops over the rows of its M-split, so no two
// blocks write the same element: with one split the block writes gV itself;
// with S > 1 splits (few tiles, long M) each split writes its fp32 (fp64)
// partial to a workspace [S, num_values] and reduce_splits_kernel adds the S
// partials in a fixed order. Deterministic, no atomics.
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
