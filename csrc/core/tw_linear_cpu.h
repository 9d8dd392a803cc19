// CPU tile-wise linear, torch-free. Each tile is one dense GEMM on the tile's
// kept input features.
//
// The work is split into blocks of up to 256 rows of x (M-blocks). For each
// tile, the kept input features of the block are gathered column-wise into a
// small row-major buffer that stays in cache, and one GEMM writes the tile's
// output columns in place. Nothing is transposed: on CPUs whose memory
// bandwidth is low next to their FLOPs, a strided pass over x or y costs
// more than the gathers. Workers take whole M-blocks, so no two write the
// same output; grad_values, a sum over M, adds per-worker partial sums.
//
// The GEMM and the parallel loop are parameters: the ATen wrapper passes
// torch's BLAS-backed matmul and at::parallel_for, the Catch2 tests a naive
// triple loop and a serial loop.
//
//   Gemm:        gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc)
//                computes C[m, n] = op(A) @ op(B) + beta * C, all row-major;
//                op(A) is [m, k] (A stored [k, m] when trans_a), likewise B.
//                It is called from inside parallel_for and must then run on
//                the calling thread alone.
//   ParallelFor: parallel_for(begin, end, fn(begin, end)).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "tile_layout.h"

namespace tilesparse::core {

// Rows of x per M-block. Every tile gathers from the whole block (its kept
// features touch nearly every cache line of a row), so the block must stay
// in the core's L2 cache (about `cache_bytes`); beyond that, larger blocks
// make more efficient GEMMs. A block holds min(256, cache-fit rows,
// ceil(m / workers)) rows, so m is spread over (up to) `workers` workers.
inline int64_t m_block_size(int64_t m, int64_t k, int64_t elem_size, int64_t workers,
                            int64_t cache_bytes = int64_t(1) << 20) {
  const int64_t fit = std::max<int64_t>(32, cache_bytes / std::max<int64_t>(1, k * elem_size)) / 16 * 16;
  const int64_t split_rows = (m + workers - 1) / std::max<int64_t>(1, workers);
  return std::max<int64_t>(1, std::min<int64_t>({256, fit, split_rows}));
}

// dst[i, r] = src[i, idx[r]] for i < rows, r < count (src leading dim lds).
template <typename T>
void gather_cols(const T* src, int64_t lds, int64_t rows, const int32_t* idx, int64_t count, T* dst) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* s = src + i * lds;
    T* d = dst + i * count;
    for (int64_t r = 0; r < count; ++r) d[r] = s[idx[r]];
  }
}

// dst[i, idx[r]] += src[i, r] for i < rows, r < count (dst leading dim ldd).
template <typename T>
void scatter_add_cols(const T* src, int64_t rows, const int32_t* idx, int64_t count, T* dst, int64_t ldd) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* s = src + i * count;
    T* d = dst + i * ldd;
    for (int64_t r = 0; r < count; ++r) d[idx[r]] += s[r];
  }
}

template <typename T>
std::unique_ptr<T[]> scratch(int64_t n) {
  return std::unique_ptr<T[]>(new T[std::max<int64_t>(1, n)]);
}

inline int64_t max_tile_rows(const LayoutView& l) {
  int64_t mk = 0;
  for (int64_t t = 0; t < l.num_tiles; ++t) mk = std::max(mk, l.tile_rows(t));
  return mk;
}

// Tile t keeps every input feature, in order (rows_t == arange(k)). Compared
// entry by entry: a padded layout may hold k entries that repeat features.
inline bool keeps_all_rows(const LayoutView& l, int64_t t, int64_t k) {
  if (l.tile_rows(t) != k) return false;
  const int32_t* rows = l.rows + l.row_offsets[t];
  for (int64_t r = 0; r < k; ++r)
    if (rows[r] != r) return false;
  return true;
}

// The layout is the dense [n, k] weight: cols == arange(n) and every tile
// keeps arange(k), so the packed values are W itself, row-major.
inline bool is_dense_layout(const LayoutView& l, int64_t n, int64_t k) {
  if (n <= 0 || k <= 0 || l.num_cols != n || num_values(l) != n * k) return false;
  for (int64_t c = 0; c < n; ++c)
    if (l.cols[c] != c) return false;
  for (int64_t t = 0; t < l.num_tiles; ++t)
    if (!keeps_all_rows(l, t, k)) return false;
  return true;
}

// The block's kept input features of tile t as a row-major [w, kr] operand
// (kr = tile_kept(t)): x itself when the tile keeps every feature, else
// gathered into buf.
template <typename T>
const T* tile_input(const LayoutView& l, int64_t t, const T* xb, int64_t k, int64_t w, T* buf, int64_t* ld) {
  const int64_t kr = l.tile_kept(t);
  if (kr == k) {  // kept rows are strictly increasing in [0, k): all of them, in order
    *ld = k;
    return xb;
  }
  gather_cols(xb, k, w, l.rows + l.row_offsets[t], kr, buf);
  *ld = kr;
  return buf;
}

// The block's output-gradient columns of tile t as a row-major [w, g]
// operand: a view when the tile's features are contiguous, else gathered.
template <typename T>
const T* tile_grad_out(const LayoutView& l, int64_t t, const T* gyb, int64_t n, int64_t w, T* buf, int64_t* ld) {
  const int32_t* cols = l.cols + t * l.tile;
  if (l.cols_contiguous(t)) {
    *ld = n;
    return gyb + cols[0];
  }
  gather_cols(gyb, n, w, cols, l.tile_width(t), buf);
  *ld = l.tile_width(t);
  return buf;
}

// In the three kernels below a tile's values block is [g, kt] (kt slots,
// the leading dimension) of which the first kr = tile_kept(t) columns are
// weights; padding slots are skipped (docs/format.md).
//
// Forward: y[m, n] = x[m, k] @ W^T + bias (bias may be null). `workers`
// sizes the M-blocks; the parallel loop decides the real threads.
template <typename T, typename Gemm, typename ParallelFor>
void tw_linear_forward(const LayoutView& l, const T* x, int64_t m, int64_t k, const T* values, const T* bias, T* y,
                       int64_t n, int64_t workers, Gemm&& gemm, ParallelFor&& parallel_for) {
  const int64_t mb = m_block_size(m, k, sizeof(T), workers);
  const int64_t blocks = (m + mb - 1) / mb;
  const int64_t mk = max_tile_rows(l);
  parallel_for(0, blocks, [&](int64_t b0, int64_t b1) {
    auto xbuf = scratch<T>(mb * mk), ybuf = scratch<T>(mb * l.tile);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * mb, w = std::min(mb, m - i0);
      const T* xb = x + i0 * k;
      T* yb = y + i0 * n;
      for (int64_t i = 0; i < w; ++i) {
        if (bias) std::memcpy(yb + i * n, bias, sizeof(T) * n);
        else std::fill(yb + i * n, yb + (i + 1) * n, T(0));
      }
      for (int64_t t = 0; t < l.num_tiles; ++t) {
        const int64_t g = l.tile_width(t), kt = l.tile_rows(t), kr = l.tile_kept(t);
        if (kr == 0) continue;
        int64_t lda = 0;
        const T* a = tile_input(l, t, xb, k, w, xbuf.get(), &lda);
        const T* v = values + l.value_offset(t);
        const int32_t* cols = l.cols + t * l.tile;
        if (l.cols_contiguous(t)) {  // Y[:, cols_t] += X[:, rows_t] @ V_t^T in place
          gemm(false, true, w, g, kr, a, lda, v, kt, T(1), yb + cols[0], n);
        } else {  // 2-D TW: regrouped features, scattered after the GEMM
          gemm(false, true, w, g, kr, a, lda, v, kt, T(0), ybuf.get(), g);
          scatter_add_cols(ybuf.get(), w, cols, g, yb, n);
        }
      }
    }
  });
}

// grad wrt x: gx[m, k] = gy[m, n] @ W.
template <typename T, typename Gemm, typename ParallelFor>
void tw_linear_grad_input(const LayoutView& l, const T* gy, int64_t m, int64_t n, const T* values, T* gx, int64_t k,
                          int64_t workers, Gemm&& gemm, ParallelFor&& parallel_for) {
  const int64_t mb = m_block_size(m, k, sizeof(T), workers);
  const int64_t blocks = (m + mb - 1) / mb;
  const int64_t mk = max_tile_rows(l);
  parallel_for(0, blocks, [&](int64_t b0, int64_t b1) {
    auto tmp = scratch<T>(mb * mk), gbuf = scratch<T>(mb * l.tile);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * mb, w = std::min(mb, m - i0);
      T* gxb = gx + i0 * k;
      std::fill(gxb, gxb + w * k, T(0));
      for (int64_t t = 0; t < l.num_tiles; ++t) {
        const int64_t kt = l.tile_rows(t), kr = l.tile_kept(t);
        if (kr == 0) continue;
        int64_t lda = 0;
        const T* a = tile_grad_out(l, t, gy + i0 * n, n, w, gbuf.get(), &lda);
        const T* v = values + l.value_offset(t);
        if (kr == k) {  // gX += gY_t @ V_t in place
          gemm(false, false, w, k, l.tile_width(t), a, lda, v, kt, T(1), gxb, k);
        } else {  // tmp[w, kr] = gY_t @ V_t, scattered to the kept input features
          gemm(false, false, w, kr, l.tile_width(t), a, lda, v, kt, T(0), tmp.get(), kr);
          scatter_add_cols(tmp.get(), w, l.rows + l.row_offsets[t], kr, gxb, k);
        }
      }
    }
  });
}

// grad wrt the packed values: gv_t = gy[:, cols_t]^T @ x[:, rows_t], a sum
// over m: each worker reduces its share of the M-blocks into its own buffer
// (worker 0 into gv), then the buffers are added.
template <typename T, typename Gemm, typename ParallelFor>
void tw_linear_grad_values(const LayoutView& l, const T* gy, const T* x, int64_t m, int64_t n, int64_t k, T* gv,
                           int64_t workers, Gemm&& gemm, ParallelFor&& parallel_for) {
  const int64_t nv = num_values(l);
  const int64_t mb = m_block_size(m, k, sizeof(T), workers);
  const int64_t blocks = (m + mb - 1) / mb;
  const int64_t parts = std::max<int64_t>(1, std::min(workers, blocks));
  const int64_t mk = max_tile_rows(l);
  auto partial = scratch<T>((parts - 1) * nv);
  parallel_for(0, parts, [&](int64_t p0, int64_t p1) {
    auto xbuf = scratch<T>(mb * mk), gbuf = scratch<T>(mb * l.tile);
    for (int64_t p = p0; p < p1; ++p) {
      T* acc = p == 0 ? gv : partial.get() + (p - 1) * nv;
      std::fill(acc, acc + nv, T(0));
      for (int64_t b = p * blocks / parts; b < (p + 1) * blocks / parts; ++b) {
        const int64_t i0 = b * mb, w = std::min(mb, m - i0);
        for (int64_t t = 0; t < l.num_tiles; ++t) {
          const int64_t kt = l.tile_rows(t), kr = l.tile_kept(t);
          if (kr == 0) continue;
          int64_t lda = 0, ldb = 0;
          const T* a = tile_grad_out(l, t, gy + i0 * n, n, w, gbuf.get(), &lda);
          const T* xt = tile_input(l, t, x + i0 * k, k, w, xbuf.get(), &ldb);
          // gv_t[g, :kr] += gY_t^T @ X[:, rows_t]; padding slots stay zero
          gemm(true, false, l.tile_width(t), kr, w, a, lda, xt, ldb, T(1), acc + l.value_offset(t), kt);
        }
      }
    }
  });
  for (int64_t p = 1; p < parts; ++p) {
    const T* src = partial.get() + (p - 1) * nv;
    for (int64_t i = 0; i < nv; ++i) gv[i] += src[i];
  }
}

// The naive reference GEMM (row-major, see Gemm above), for tests and as the
// definition of the interface.
template <typename T>
void naive_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                int64_t ldb, T beta, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T acc = T(0);
      for (int64_t p = 0; p < k; ++p) {
        const T av = trans_a ? a[p * lda + i] : a[i * lda + p];
        const T bv = trans_b ? b[j * ldb + p] : b[p * ldb + j];
        acc += av * bv;
      }
      c[i * ldc + j] = (beta == T(0) ? T(0) : beta * c[i * ldc + j]) + acc;
    }
}

}  // namespace tilesparse::core
