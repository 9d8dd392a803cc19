// Forward kernels of tw_linear, torch-free (raw pointers).
//
//   y[m, cols_t[j]] = sum_kk x[m, rows_t[kk]] * V_t[j, kk] + bias[cols_t[j]]
//
// All tiles run in one launch: block (tile t, column chunk jc, M-block mb)
// computes a [BM x BN] block of tile t's output. The kept input features of
// the tile are gathered inside the global->shared load (TileLoader): never a
// gathered copy of x. fp16/bf16 run on tensor cores (mma.sync m16n8k16,
// fp32 accumulation) behind a STAGES-deep shared-memory ring; fp32/fp64 run
// a plain SIMT kernel with the same block decomposition.
#pragma once

#include "tw_device.cuh"

namespace tilesparse::cuda {

template <typename T>
struct FwdParams {
  const T* x;
  int64_t ldx;
  int64_t m;
  int64_t k;
  const T* values;
  int64_t nv;  // values.numel()
  const T* bias;  // nullable
  T* y;
  int64_t ldy;
  int64_t n;
  DevLayout layout;
  int32_t jchunks;        // column chunks per tile: ceil(tile / BN)
  int64_t mblock_offset;  // first M-block of this launch (grid.y is limited to 65535)
  bool x_vec, v_vec, y_vec;  // base 16-byte aligned and leading dimension % 8 == 0
};

// ---------------------------------------------------------------------------
// Tensor-core kernel (T = __half or __nv_bfloat16).
// ---------------------------------------------------------------------------
template <int BM, int BN, int BK, int STAGES>
constexpr int fwd_mma_smem_bytes() {
  return (STAGES * (BM + BN) * (BK + 8) * 2) > (BM * (BN + 8) * 2) ? (STAGES * (BM + BN) * (BK + 8) * 2)
                                                                    : (BM * (BN + 8) * 2);
}

template <typename T, int BM, int BN, int BK, int WARPS_M, int WARPS_N, int STAGES>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32, 1) tw_fwd_mma_kernel(const FwdParams<T> p) {
  constexpr int THREADS = WARPS_M * WARPS_N * 32;
  constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  constexpr int MT = WM / 16, NT = WN / 8;
  constexpr int LDA = BK + 8, LDB = BK + 8, LDC = BN + 8;
  static_assert(WM % 16 == 0 && WN % 16 == 0 && BK % 16 == 0, "bad warp tile");
  using H = Half16<T>;

  unsigned char* smem_raw = dynamic_smem();
  uint16_t* As = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* Bs = As + STAGES * BM * LDA;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const int64_t t = blockIdx.x / p.jchunks;
  const int j0 = static_cast<int>(blockIdx.x % p.jchunks) * BN;
  const int64_t m0 = (static_cast<int64_t>(blockIdx.y) + p.mblock_offset) * BM;
  if (m0 >= p.m) return;

  const TileInfo ti = tile_info(p.layout, t, p.nv, p.k);
  if (j0 >= ti.g) return;  // no columns here (also: tiles past the layout)
  const int gv = ti.g - j0 < BN ? ti.g - j0 : BN;
  // the reduction runs over the kr kept features; kt (slots) is V_t's row length
  const int kr = ti.ok ? ti.kr : 0, kt = ti.kt;
  const int num_k = (kr + BK - 1) / BK;
  const int rows_valid = p.m - m0 < BM ? static_cast<int>(p.m - m0) : BM;
  const int32_t* cols_t = p.layout.cols + t * p.layout.tile + j0;
  const int32_t* rows_t = p.layout.rows + ti.lo;
  const uint16_t* xs = reinterpret_cast<const uint16_t*>(p.x);
  const uint16_t* vt = reinterpret_cast<const uint16_t*>(p.values) + ti.voff;
  const bool v_vec = p.v_vec && (ti.voff % 8) == 0 && (kt % 8) == 0;

  TileLoader<BM, BK, THREADS, LDA> la;
  TileLoader<BN, BK, THREADS, LDB> lb;
  auto issue = [&](int s) {
    const int kk0 = s * BK;
    la.issue(As + (s % STAGES) * BM * LDA, xs, p.ldx, m0, rows_valid, rows_t + kk0, 0, kr - kk0, p.k, p.x_vec, tid);
    lb.issue(Bs + (s % STAGES) * BN * LDB, vt, kt, j0, gv, nullptr, kk0, kr - kk0, kt, v_vec, tid);
  };
  auto store = [&](int s) {
    la.store(As + (s % STAGES) * BM * LDA, tid);
    lb.store(Bs + (s % STAGES) * BN * LDB, tid);
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
    __syncthreads();  // stage `it` is in shared memory; slot (it - 1) % STAGES is free
    const int nk = it + STAGES - 1;
    if (nk < num_k) issue(nk);
    cp_async_commit();

    const uint16_t* as = As + (it % STAGES) * BM * LDA;
    const uint16_t* bs = Bs + (it % STAGES) * BN * LDB;
    warp_mma_slice<H, BK>(
        acc, [&](uint32_t(&a)[4], int m, int ks) { load_a_kmajor(a, as, LDA, wm * WM + m, ks, lane); },
        [&](uint32_t(&b)[4], int n, int ks) { load_b_kmajor(b, bs, LDB, wn * WN + n, ks, lane); });
    if (nk < num_k) store(nk);
  }

  // ---- epilogue: (acc + bias) -> T, staged in shared memory, then written
  // row by row (16-byte stores when the tile's columns are one aligned run).
  cp_async_wait<0>();
  __syncthreads();
  uint16_t* Cs = As;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int c = wn * WN + j * 8 + 2 * (lane & 3);
    float b0 = 0.f, b1 = 0.f;
    if (p.bias != nullptr) {
      const uint16_t* bias = reinterpret_cast<const uint16_t*>(p.bias);
      if (c < gv) b0 = H::to_float(bias[clamp_index(cols_t[c], p.n)]);
      if (c + 1 < gv) b1 = H::to_float(bias[clamp_index(cols_t[c + 1], p.n)]);
    }
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * WM + i * 16 + (lane >> 2) + 8 * h;
        const uint32_t lo = H::from_float(acc[i][j][2 * h] + b0);
        const uint32_t hi = H::from_float(acc[i][j][2 * h + 1] + b1);
        *reinterpret_cast<uint32_t*>(Cs + r * LDC + c) = lo | (hi << 16);
      }
  }
  __syncthreads();

  const int64_t c_first = clamp_index(cols_t[0], p.n);
  const bool contiguous = clamp_index(cols_t[gv - 1], p.n) - c_first == gv - 1;
  const bool vec = p.y_vec && contiguous && (c_first % 8) == 0;
  uint16_t* ys = reinterpret_cast<uint16_t*>(p.y);
  constexpr int CPR = BN / 8;
  for (int ci = tid; ci < BM * CPR; ci += THREADS) {
    const int r = ci / CPR, cc = (ci % CPR) * 8;
    if (r >= rows_valid || cc >= gv) continue;
    uint16_t* yrow = ys + (m0 + r) * p.ldy;
    const uint16_t* crow = Cs + r * LDC + cc;
    if (vec && cc + 8 <= gv) {
      *reinterpret_cast<uint4*>(yrow + c_first + cc) = *reinterpret_cast<const uint4*>(crow);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int c = cc + e;
        if (c < gv) yrow[contiguous ? c_first + c : clamp_index(cols_t[c], p.n)] = crow[e];
      }
    }
  }
}

// ---------------------------------------------------------------------------
// SIMT kernel (T = float or double; accumulates in T). Block: 64 x 64
// outputs of one tile, 256 threads with 4 x 4 outputs each.
// ---------------------------------------------------------------------------
constexpr int kSimtBM = 64, kSimtBN = 64, kSimtBK = 16;

template <typename T>
__global__ void __launch_bounds__(256) tw_fwd_simt_kernel(const FwdParams<T> p) {
  constexpr int BM = kSimtBM, BN = kSimtBN, BK = kSimtBK;
  __shared__ T Xs[BK][BM + 1];
  __shared__ T Vs[BK][BN + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t t = blockIdx.x / p.jchunks;
  const int j0 = static_cast<int>(blockIdx.x % p.jchunks) * BN;
  const int64_t m0 = (static_cast<int64_t>(blockIdx.y) + p.mblock_offset) * BM;
  if (m0 >= p.m) return;
  const TileInfo ti = tile_info(p.layout, t, p.nv, p.k);
  if (j0 >= ti.g) return;
  const int gv = ti.g - j0 < BN ? ti.g - j0 : BN;
  const int kr = ti.ok ? ti.kr : 0, kt = ti.kt;  // kept features; slots (V_t's row length)
  const int32_t* cols_t = p.layout.cols + t * p.layout.tile + j0;
  const int32_t* rows_t = p.layout.rows + ti.lo;
  const T* vt = p.values + ti.voff;

  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

  for (int k0 = 0; k0 < kr; k0 += BK) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = tid + 256 * i, kk = e % BK, r = e / BK;
      T xv = T(0), vv = T(0);
      if (k0 + kk < kr) {
        if (m0 + r < p.m) xv = p.x[(m0 + r) * p.ldx + clamp_index(rows_t[k0 + kk], p.k)];
        if (r < gv) vv = vt[static_cast<int64_t>(j0 + r) * kt + k0 + kk];
      }
      Xs[kk][r] = xv;
      Vs[kk][r] = vv;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = Xs[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Vs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int c = tx + 16 * j;
    if (c >= gv) continue;
    const int64_t col = clamp_index(cols_t[c], p.n);
    const T b = p.bias != nullptr ? p.bias[col] : T(0);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + ty + 16 * i;
      if (m < p.m) p.y[m * p.ldy + col] = acc[i][j] + b;
    }
  }
}

// ---------------------------------------------------------------------------
// Output features that no tile computes get bias (or zero): covered[n] marks
// the features of cols owned by a tile.
// ---------------------------------------------------------------------------
static __global__ void mark_covered_kernel(const int32_t* cols, int64_t count, int64_t n, uint8_t* covered) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) covered[clamp_index(cols[i], n)] = 1;
}

template <typename T>
__global__ void fill_uncovered_kernel(T* y, int64_t m, int64_t n, int64_t ldy, const uint8_t* covered,
                                      const T* bias) {
  const int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (col >= n || covered[col]) return;
  const T v = bias != nullptr ? bias[col] : T(0);
  for (int64_t r = blockIdx.y; r < m; r += gridDim.y) y[r * ldy + col] = v;
}

}  // namespace tilesparse::cuda
