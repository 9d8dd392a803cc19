// grad_input kernels of tw_linear, torch-free.
//
//   gX[m, rows_t[q]] += sum_j grad_out[m, cols_t[j]] * V_t[j, q]   over all tiles t
//
// Input feature r receives a contribution from every tile that keeps it, so
// the tiles' products must be added up. Block (K-chunk kc, M-block mb) owns
// gX[mb rows, kc*KC : (kc+1)*KC] and accumulates it in fp32 (fp64) shared
// memory: for each tile t it takes the tile's kept features that fall into
// the chunk (positions [plo, phi) of rows_t, precomputed per (tile, chunk) by
// chunk_bounds_kernel), computes grad_out[mb, cols_t] @ V_t[:, plo:phi] in
// column groups of NB ("items"), and adds each product column to the
// accumulator column rows_t[q] - k0. Every block writes its whole chunk once:
// no atomics, no zero-fill of gX, deterministic (tiles in ascending order).
// Work per block follows the kept features (the chunk's KC is chosen so a
// tile keeps about NB of them), not the dense K.
#pragma once

#include "tw_device.cuh"

namespace tilesparse::cuda {

template <typename T, typename Acc>
struct GradInputParams {
  const T* gy;  // grad_out [m, n]
  int64_t ldg;
  const T* values;
  int64_t nv;
  int64_t m, n, k;
  DevLayout layout;
  const int32_t* bounds;  // [num_tiles, nkc + 1]: first position of rows_t >= c * kc
  int32_t nkc;            // number of K-chunks
  int32_t kc;             // chunk width (multiple of 8)
  T* gx;                  // [m, k], leading dimension ldx
  int64_t ldx;
  int64_t mblock_offset;
  bool gy_vec, v_vec, gx_vec;
};

// ---------------------------------------------------------------------------
// Tensor-core kernel (T = __half or __nv_bfloat16).
// ---------------------------------------------------------------------------
struct ItemStage {  // what the compute side needs to know about a pipeline stage
  int32_t valid;
  int32_t last;  // last stage (j-chunk) of its item: scatter afterwards
  int32_t lo;    // tile's first index in rows
  int32_t q0;    // first position of the item in rows_t
  int32_t qn;    // columns of the item (<= NB)
  int32_t pad[3];
};

template <int BM, int NB, int BK, int STAGES>
constexpr int gi_mma_pipe_bytes() {
  return STAGES * (BM * (BK + 8) + BK * (NB + 8)) * 2 + STAGES * static_cast<int>(sizeof(ItemStage));
}
template <int BM, int NB, int BK, int STAGES>
constexpr int gi_mma_smem_bytes(int kc) {
  return gi_mma_pipe_bytes<BM, NB, BK, STAGES>() + BM * (kc + 4) * 4;
}

template <typename T, int BM, int NB, int BK, int WARPS_M, int WARPS_N, int STAGES>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32, 1) tw_grad_input_mma_kernel(
    const GradInputParams<T, float> p) {
  constexpr int THREADS = WARPS_M * WARPS_N * 32;
  constexpr int WM = BM / WARPS_M, WN = NB / WARPS_N;
  constexpr int MT = WM / 16, NT = WN / 8;
  constexpr int LDA = BK + 8, LDB = NB + 8;
  static_assert(WM % 16 == 0 && WN % 16 == 0 && BK % 16 == 0, "bad warp tile");
  using H = Half16<T>;

  unsigned char* smem_raw = dynamic_smem();
  uint16_t* As = reinterpret_cast<uint16_t*>(smem_raw);  // [STAGES][BM (m)][LDA (j)]
  uint16_t* Bs = As + STAGES * BM * LDA;                 // [STAGES][BK (j)][LDB (q)]
  ItemStage* info = reinterpret_cast<ItemStage*>(Bs + STAGES * BK * LDB);
  float* accs = reinterpret_cast<float*>(info + STAGES);  // [BM][kc + 4]
  const int ldacc = p.kc + 4;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const int chunk = blockIdx.x;
  const int64_t m0 = (static_cast<int64_t>(blockIdx.y) + p.mblock_offset) * BM;
  if (m0 >= p.m) return;
  const int64_t k0 = static_cast<int64_t>(chunk) * p.kc;
  const int kw = p.k - k0 < p.kc ? static_cast<int>(p.k - k0) : p.kc;
  const int rows_valid = p.m - m0 < BM ? static_cast<int>(p.m - m0) : BM;
  const uint16_t* gys = reinterpret_cast<const uint16_t*>(p.gy);
  const uint16_t* vals = reinterpret_cast<const uint16_t*>(p.values);

  for (int i = tid; i < BM * ldacc; i += THREADS) accs[i] = 0.f;

  // The issue cursor walks the items (tile, q0) of this chunk and their
  // j-stages; every thread walks it identically.
  struct Cursor {
    int64_t t;
    TileInfo ti;
    int q0, qe, j0;
    bool valid;
  } cur;
  auto seek = [&](int64_t t) {  // first tile >= t with kept features in this chunk
    for (; t < p.layout.num_tiles; ++t) {
      const TileInfo ti = tile_info(p.layout, t, p.nv, p.k);
      if (!ti.ok) continue;
      const int32_t* b = p.bounds + t * (p.nkc + 1) + chunk;
      // kept features only: a padding slot repeats the last kept feature's column
      const int plo = static_cast<int>(clamp64(b[0], 0, ti.kr));
      const int phi = static_cast<int>(clamp64(b[1], plo, ti.kr));
      if (phi > plo) {
        cur.t = t;
        cur.ti = ti;
        cur.q0 = plo;
        cur.qe = phi;
        cur.j0 = 0;
        cur.valid = true;
        return;
      }
    }
    cur.valid = false;
  };
  auto advance = [&]() {
    cur.j0 += BK;
    if (cur.j0 < cur.ti.g) return;
    cur.j0 = 0;
    cur.q0 += NB;
    if (cur.q0 < cur.qe) return;
    seek(cur.t + 1);
  };

  TileLoader<BM, BK, THREADS, LDA> la;
  TileLoader<BK, NB, THREADS, LDB> lb;
  // Issues the cursor's stage into slot s (or marks the slot as the end).
  auto issue = [&](int s) {
    ItemStage* si = info + s;
    if (!cur.valid) {
      if (tid == 0) si->valid = 0;
      return false;
    }
    const TileInfo& ti = cur.ti;
    const int gvalid = ti.g - cur.j0;
    if (tid == 0) {
      si->valid = 1;
      si->last = cur.j0 + BK >= ti.g;
      si->lo = ti.lo;
      si->q0 = cur.q0;
      si->qn = cur.qe - cur.q0 < NB ? cur.qe - cur.q0 : NB;
    }
    const int32_t* cols_t = p.layout.cols + cur.t * p.layout.tile + cur.j0;
    la.issue(As + s * BM * LDA, gys, p.ldg, m0, rows_valid, cols_t, 0, gvalid, p.n, p.gy_vec, tid);
    const bool v_vec = p.v_vec && (ti.voff % 8) == 0 && (ti.kt % 8) == 0;
    lb.issue(Bs + s * BK * LDB, vals + ti.voff, ti.kt, cur.j0, gvalid, nullptr, cur.q0, cur.qe - cur.q0, ti.kt,
             v_vec, tid);
    return true;
  };

  float acc[MT][NT][4];
  zero_accumulators(acc);

  seek(0);
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    const bool issued = issue(s);
    cp_async_commit();
    if (issued) {
      advance();
      la.store(As + s * BM * LDA, tid);
      lb.store(Bs + s * BK * LDB, tid);
    }
  }

  for (int it = 0;; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage `it` landed; slot (it - 1) % STAGES is free; accs writes of the last item done
    const int slot = it % STAGES;
    const ItemStage si = info[slot];
    if (!si.valid) break;  // uniform
    const int ns = (it + STAGES - 1) % STAGES;
    const bool issued = issue(ns);
    cp_async_commit();
    if (issued) advance();

    const uint16_t* as = As + slot * BM * LDA;
    const uint16_t* bs = Bs + slot * BK * LDB;
    warp_mma_slice<H, BK>(
        acc, [&](uint32_t(&a)[4], int m, int ks) { load_a_kmajor(a, as, LDA, wm * WM + m, ks, lane); },
        [&](uint32_t(&b)[4], int n, int ks) { load_b_nmajor(b, bs, LDB, wn * WN + n, ks, lane); });
    if (issued) {
      la.store(As + ns * BM * LDA, tid);
      lb.store(Bs + ns * BK * LDB, tid);
    }

    if (si.last) {
      // Scatter the item's product into the chunk accumulator. Within an item
      // every (m, q) belongs to one thread and rows_t is strictly increasing,
      // so no two threads add to one element; items are separated by the
      // barrier at the top of the loop.
      const int32_t* rows_q = p.layout.rows + si.lo + si.q0;
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          const int q = wn * WN + j * 8 + 2 * (lane & 3) + e2;
          if (q >= si.qn) continue;
          const int64_t col = static_cast<int64_t>(rows_q[q]) - k0;
          if (col < 0 || col >= kw) continue;
#pragma unroll
          for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int r = wm * WM + i * 16 + (lane >> 2) + 8 * h;
              accs[r * ldacc + col] += acc[i][j][2 * h + e2];
            }
        }
      zero_accumulators(acc);
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Write the chunk: fp32 -> T, 16-byte stores where aligned.
  uint16_t* gx = reinterpret_cast<uint16_t*>(p.gx);
  const int cpr = (kw + 7) / 8;
  for (int ci = tid; ci < rows_valid * cpr; ci += THREADS) {
    const int r = ci / cpr, cc = (ci % cpr) * 8;
    store_half8<T>(gx + (m0 + r) * p.ldx + k0 + cc, accs + r * ldacc + cc, kw - cc, p.gx_vec);
  }
}

// ---------------------------------------------------------------------------
// SIMT kernel (T = float or double, accumulating in T). Chunk of 64 input
// features, 64 rows; a tile keeps at most 64 features of a chunk, so each
// tile is a single [64 x 64] product over its g columns.
// ---------------------------------------------------------------------------
constexpr int kGiSimtBM = 64, kGiSimtKC = 64, kGiSimtBJ = 16;

template <typename T>
constexpr int gi_simt_smem_bytes() {
  return (kGiSimtBM * (kGiSimtKC + 1) + 2 * kGiSimtBJ * (64 + 1)) * static_cast<int>(sizeof(T));
}

template <typename T>
__global__ void __launch_bounds__(256) tw_grad_input_simt_kernel(const GradInputParams<T, T> p) {
  constexpr int BM = kGiSimtBM, KC = kGiSimtKC, BJ = kGiSimtBJ, LD = 65;
  unsigned char* smem_raw = dynamic_smem();
  T* accs = reinterpret_cast<T*>(smem_raw);  // [BM][LD]
  T* Gs = accs + BM * LD;                    // [BJ][LD] (m)
  T* Vs = Gs + BJ * LD;                      // [BJ][LD] (q)
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int chunk = blockIdx.x;
  const int64_t m0 = (static_cast<int64_t>(blockIdx.y) + p.mblock_offset) * BM;
  if (m0 >= p.m) return;
  const int64_t k0 = static_cast<int64_t>(chunk) * KC;
  const int kw = p.k - k0 < KC ? static_cast<int>(p.k - k0) : KC;
  for (int i = tid; i < BM * LD; i += 256) accs[i] = T(0);
  __syncthreads();

  for (int64_t t = 0; t < p.layout.num_tiles; ++t) {
    const TileInfo ti = tile_info(p.layout, t, p.nv, p.k);
    if (!ti.ok) continue;
    const int32_t* b = p.bounds + t * (p.nkc + 1) + chunk;
    const int plo = static_cast<int>(clamp64(b[0], 0, ti.kr));
    const int phi = static_cast<int>(clamp64(b[1], plo, ti.kr));
    const int cnt = phi - plo < KC ? phi - plo : KC;
    if (cnt <= 0) continue;
    const int32_t* cols_t = p.layout.cols + t * p.layout.tile;
    const T* vt = p.values + ti.voff;
    T acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
    for (int j0 = 0; j0 < ti.g; j0 += BJ) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e = tid + 256 * i;
        {  // Gs[jj][r] = grad_out[m0 + r, cols_t[j0 + jj]]
          const int jj = e % BJ, r = e / BJ;
          T v = T(0);
          if (j0 + jj < ti.g && m0 + r < p.m) v = p.gy[(m0 + r) * p.ldg + clamp_index(cols_t[j0 + jj], p.n)];
          Gs[jj * LD + r] = v;
        }
        {  // Vs[jj][q] = V_t[j0 + jj, plo + q]
          const int q = e % 64, jj = e / 64;
          T v = T(0);
          if (j0 + jj < ti.g && q < cnt) v = vt[static_cast<int64_t>(j0 + jj) * ti.kt + plo + q];
          Vs[jj * LD + q] = v;
        }
      }
      __syncthreads();
#pragma unroll
      for (int jj = 0; jj < BJ; ++jj) {
        T a[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = Gs[jj * LD + ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = Vs[jj * LD + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * bv[j];
      }
      __syncthreads();
    }
    // Scatter (separated from the next tile's scatter by its loop barriers).
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int q = tx + 16 * j;
      if (q >= cnt) continue;
      const int64_t col = static_cast<int64_t>(p.layout.rows[ti.lo + plo + q]) - k0;
      if (col < 0 || col >= kw) continue;
#pragma unroll
      for (int i = 0; i < 4; ++i) accs[(ty + 16 * i) * LD + col] += acc[i][j];
    }
  }
  __syncthreads();
  for (int i = tid; i < BM * KC; i += 256) {
    const int r = i / KC, c = i % KC;
    if (m0 + r < p.m && c < kw) p.gx[(m0 + r) * p.ldx + k0 + c] = accs[r * LD + c];
  }
}

}  // namespace tilesparse::cuda
