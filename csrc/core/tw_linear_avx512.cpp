#include "tw_linear_avx512.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TS_HAVE_AVX512_BUILD 1
#include <immintrin.h>
#define TS_AVX512 __attribute__((target("avx512f,fma")))
#else
#define TS_HAVE_AVX512_BUILD 0
#endif

namespace tilesparse::core::avx512 {

#if TS_HAVE_AVX512_BUILD

namespace {

// Micro-tile: NB outputs broadcast from a packed panel x VL = 3 vectors of 16
// along the other output dimension: 24 accumulators in zmm registers.
constexpr int64_t NB = 8;
constexpr int64_t VL = 48;

std::unique_ptr<float[]> scratch(int64_t n) { return std::unique_ptr<float[]>(new float[std::max<int64_t>(1, n)]); }

// acc[j][v] = sum_p b[p * NB + j] * a[row(p) * lda + v] for v < h (h <= VL),
// row(p) = idx[p] when Indexed (the fused gather), else p. Written to
// out[j * ldo + v]. Full (h == VL) chunks use plain loads and stores; only
// the edge chunk pays for masks.
template <bool Indexed, bool Full>
TS_AVX512 void micro_impl(const float* a, int64_t lda, const int32_t* idx, int64_t len, const float* b, int64_t h,
                          float* out, int64_t ldo, bool accumulate) {
  const __mmask16 m0 = h >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << h) - 1);
  const __mmask16 m1 = h >= 32 ? 0xFFFF : h <= 16 ? 0 : static_cast<__mmask16>((1u << (h - 16)) - 1);
  const __mmask16 m2 = h >= 48 ? 0xFFFF : h <= 32 ? 0 : static_cast<__mmask16>((1u << (h - 32)) - 1);
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00, c20 = c00, c21 = c00,
         c22 = c00, c30 = c00, c31 = c00, c32 = c00, c40 = c00, c41 = c00, c42 = c00, c50 = c00, c51 = c00,
         c52 = c00, c60 = c00, c61 = c00, c62 = c00, c70 = c00, c71 = c00, c72 = c00;
  if (accumulate) {  // continue a sum over an earlier chunk of the reduction
#define TS_LOAD(j)                                                 \
  c##j##0 = _mm512_maskz_loadu_ps(m0, out + (j) * ldo);            \
  c##j##1 = _mm512_maskz_loadu_ps(m1, out + (j) * ldo + 16);       \
  c##j##2 = _mm512_maskz_loadu_ps(m2, out + (j) * ldo + 32);
    TS_LOAD(0) TS_LOAD(1) TS_LOAD(2) TS_LOAD(3) TS_LOAD(4) TS_LOAD(5) TS_LOAD(6) TS_LOAD(7)
#undef TS_LOAD
  }
#pragma GCC unroll 2
  for (int64_t p = 0; p < len; ++p) {
    const float* ap = a + (Indexed ? static_cast<int64_t>(idx[p]) : p) * lda;
    __m512 a0, a1, a2;
    if (Full) {
      a0 = _mm512_loadu_ps(ap);
      a1 = _mm512_loadu_ps(ap + 16);
      a2 = _mm512_loadu_ps(ap + 32);
    } else {
      a0 = _mm512_maskz_loadu_ps(m0, ap);
      a1 = _mm512_maskz_loadu_ps(m1, ap + 16);
      a2 = _mm512_maskz_loadu_ps(m2, ap + 32);
    }
    const float* bp = b + p * NB;
#define TS_ROW(j)                                   \
  {                                                 \
    const __m512 bj = _mm512_set1_ps(bp[j]);        \
    c##j##0 = _mm512_fmadd_ps(a0, bj, c##j##0);     \
    c##j##1 = _mm512_fmadd_ps(a1, bj, c##j##1);     \
    c##j##2 = _mm512_fmadd_ps(a2, bj, c##j##2);     \
  }
    TS_ROW(0) TS_ROW(1) TS_ROW(2) TS_ROW(3) TS_ROW(4) TS_ROW(5) TS_ROW(6) TS_ROW(7)
#undef TS_ROW
  }
#define TS_STORE(j)                                            \
  if (Full) {                                                  \
    _mm512_storeu_ps(out + (j) * ldo, c##j##0);                \
    _mm512_storeu_ps(out + (j) * ldo + 16, c##j##1);           \
    _mm512_storeu_ps(out + (j) * ldo + 32, c##j##2);           \
  } else {                                                     \
    _mm512_mask_storeu_ps(out + (j) * ldo, m0, c##j##0);       \
    _mm512_mask_storeu_ps(out + (j) * ldo + 16, m1, c##j##1);  \
    _mm512_mask_storeu_ps(out + (j) * ldo + 32, m2, c##j##2);  \
  }
  TS_STORE(0) TS_STORE(1) TS_STORE(2) TS_STORE(3) TS_STORE(4) TS_STORE(5) TS_STORE(6) TS_STORE(7)
#undef TS_STORE
}

template <bool Indexed>
void micro(const float* a, int64_t lda, const int32_t* idx, int64_t len, const float* b, int64_t h, float* out,
           int64_t ldo, bool accumulate = false) {
  if (h == VL) micro_impl<Indexed, true>(a, lda, idx, len, b, h, out, ldo, accumulate);
  else micro_impl<Indexed, false>(a, lda, idx, len, b, h, out, ldo, accumulate);
}

// Reduction chunk of the forward kernel: the KC gathered rows of one 48-row
// chunk (3 cache lines each) stay in L1 while every panel of the tile streams
// past them.
constexpr int64_t KC = 128;

// Rows per M-block: a multiple of VL whose K-major block (width floats per
// row of the block) stays in L2 next to the packed panels.
int64_t block_rows(int64_t m, int64_t width, int64_t workers) {
  const int64_t fit = std::max<int64_t>(1, (int64_t(1) << 20) / (4 * std::max<int64_t>(1, width) * VL)) * VL;
  const int64_t split = ((m + workers - 1) / std::max<int64_t>(1, workers) + VL - 1) / VL * VL;
  return std::max<int64_t>(VL, std::min<int64_t>({5 * VL, fit, split}));
}

// dst[c * ldd + i] = src[i * lds + c], 16 x 16 blocks.
void transpose(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd) {
  for (int64_t i0 = 0; i0 < rows; i0 += 16)
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int64_t i1 = std::min(rows, i0 + 16), c1 = std::min(cols, c0 + 16);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t i = i0; i < i1; ++i) dst[c * ldd + i] = src[i * lds + c];
    }
}

int64_t panels(int64_t width) { return (width + NB - 1) / NB; }

// Packs every tile's values into NB-wide panels. by_rows=false (forward):
// panel q of tile t holds outputs j in [q*NB, q*NB+NB) as [kt][NB];
// by_rows=true (grad_input): panel q holds kept inputs r in [q*NB, ...) as
// [g][NB]. Zero-padded; offsets[t] is the tile's start.
std::vector<float> pack_panels(const LayoutView& l, const float* values, bool by_rows, std::vector<int64_t>& offsets,
                               const ParallelFn& parallel_for) {
  offsets.assign(l.num_tiles + 1, 0);
  for (int64_t t = 0; t < l.num_tiles; ++t) {
    const int64_t g = l.tile_width(t), kt = l.tile_rows(t);
    offsets[t + 1] = offsets[t] + (by_rows ? panels(kt) * NB * g : panels(g) * NB * kt);
  }
  std::vector<float> packed(offsets[l.num_tiles]);
  parallel_for(0, l.num_tiles, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = l.tile_width(t), kt = l.tile_rows(t);
      const float* v = values + l.value_offset(t);  // [g, kt]
      float* out = packed.data() + offsets[t];
      const int64_t outer = by_rows ? kt : g, inner = by_rows ? g : kt;
      for (int64_t q = 0; q < panels(outer); ++q)
        for (int64_t p = 0; p < inner; ++p)
          for (int64_t j = 0; j < NB; ++j) {
            const int64_t o = q * NB + j;
            float val = 0.f;
            if (o < outer) val = by_rows ? v[p * kt + o] : v[o * kt + p];
            out[(q * inner + p) * NB + j] = val;
          }
    }
  });
  return packed;
}

}  // namespace

bool available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return ok;
}

void forward(const LayoutView& l, const float* x, int64_t m, int64_t k, const float* values, const float* bias,
             float* y, int64_t n, int64_t workers, const ParallelFn& parallel_for) {
  std::vector<int64_t> off;
  const std::vector<float> bp = pack_panels(l, values, false, off, parallel_for);
  const int64_t mb = block_rows(m, k, workers);
  const int64_t blocks = (m + mb - 1) / mb;
  // Output features no tile computes (pruned, or in a tile that keeps no
  // input feature) are bias only; every other feature is written exactly
  // once, by its tile, so y needs no separate initialisation pass.
  std::vector<uint8_t> covered(n, 0);
  for (int64_t t = 0; t < l.num_tiles; ++t)
    if (l.tile_rows(t) > 0)
      for (int64_t j = 0; j < l.tile_width(t); ++j) covered[l.cols[t * l.tile + j]] = 1;
  std::vector<int64_t> bias_only;
  for (int64_t c = 0; c < n; ++c)
    if (!covered[c]) bias_only.push_back(c);
  parallel_for(0, blocks, [&](int64_t b0, int64_t b1) {
    // yt: one tile's outputs of the block, transposed [g, w]; writing it to y
    // row by row touches each line of y once (y rows are often 4 KiB-aliased).
    auto xt = scratch(k * mb), yt = scratch(panels(l.tile) * NB * mb);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * mb, w = std::min(mb, m - i0);
      float* yb = y + i0 * n;
      for (int64_t i = 0; i < w; ++i)
        for (int64_t c : bias_only) yb[i * n + c] = bias ? bias[c] : 0.f;
      transpose(x + i0 * k, k, w, k, xt.get(), w);  // K-major block [k, w]
      for (int64_t t = 0; t < l.num_tiles; ++t) {
        const int64_t g = l.tile_width(t), kt = l.tile_rows(t);
        if (kt == 0) continue;
        const int32_t* rows = l.rows + l.row_offsets[t];
        const int32_t* cols = l.cols + t * l.tile;
        for (int64_t i = 0; i < w; i += VL)
          for (int64_t p0 = 0; p0 < kt; p0 += KC) {
            const int64_t len = std::min(KC, kt - p0);
            for (int64_t q = 0; q < panels(g); ++q)
              micro<true>(xt.get() + i, w, rows + p0, len, bp.data() + off[t] + (q * kt + p0) * NB,
                          std::min(VL, w - i), yt.get() + q * NB * w + i, w, p0 > 0);
          }
        const bool contiguous = l.cols_contiguous(t);
        for (int64_t i = 0; i < w; ++i) {
          float* yr = yb + i * n;
          if (contiguous) {
            float* yc = yr + cols[0];
            const float* bc = bias ? bias + cols[0] : nullptr;
            for (int64_t j = 0; j < g; ++j) yc[j] = yt[j * w + i] + (bc ? bc[j] : 0.f);
          } else {
            for (int64_t j = 0; j < g; ++j) yr[cols[j]] = yt[j * w + i] + (bias ? bias[cols[j]] : 0.f);
          }
        }
      }
    }
  });
}

void grad_input(const LayoutView& l, const float* gy, int64_t m, int64_t n, const float* values, float* gx,
                int64_t k, int64_t workers, const ParallelFn& parallel_for) {
  std::vector<int64_t> off;
  const std::vector<float> bp = pack_panels(l, values, true, off, parallel_for);
  const int64_t mb = block_rows(m, n, workers);
  int64_t max_k = 0;
  for (int64_t t = 0; t < l.num_tiles; ++t) max_k = std::max(max_k, l.tile_rows(t));
  const int64_t blocks = (m + mb - 1) / mb;
  parallel_for(0, blocks, [&](int64_t b0, int64_t b1) {
    // gt: one tile's input gradients of the block, transposed [kt, w]
    auto gyt = scratch(n * mb), gt = scratch((max_k + NB) * mb);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * mb, w = std::min(mb, m - i0);
      float* gxb = gx + i0 * k;
      std::fill(gxb, gxb + w * k, 0.f);
      transpose(gy + i0 * n, n, w, n, gyt.get(), w);  // [n, w]
      for (int64_t t = 0; t < l.num_tiles; ++t) {
        const int64_t g = l.tile_width(t), kt = l.tile_rows(t);
        if (kt == 0) continue;
        const int32_t* rows = l.rows + l.row_offsets[t];
        const int32_t* cols = l.cols + t * l.tile;
        for (int64_t q = 0; q < panels(kt); ++q) {
          const float* bq = bp.data() + off[t] + q * g * NB;
          // gt[r][i] = sum_j V_t[j, r] * gY^T[cols_j, i]
          for (int64_t i = 0; i < w; i += VL)
            micro<true>(gyt.get() + i, w, cols, g, bq, std::min(VL, w - i), gt.get() + q * NB * w + i, w);
        }
        for (int64_t i = 0; i < w; ++i) {
          float* gr = gxb + i * k;
          for (int64_t r = 0; r < kt; ++r) gr[rows[r]] += gt[r * w + i];
        }
      }
    }
  });
}

void grad_values(const LayoutView& l, const float* gy, const float* x, int64_t m, int64_t n, int64_t k, float* gv,
                 const ParallelFn& parallel_for) {
  const int64_t mb = std::min<int64_t>(256, std::max<int64_t>(1, m));
  const int64_t blocks = (m + mb - 1) / mb;
  std::fill(gv, gv + num_values(l), 0.f);
  // Workers own whole tiles (the sum over m stays inside one worker).
  parallel_for(0, l.num_tiles, [&](int64_t t0, int64_t t1) {
    int64_t max_k = 0;
    for (int64_t t = t0; t < t1; ++t) max_k = std::max(max_k, l.tile_rows(t));
    auto xg = scratch(mb * max_k), gyp = scratch(panels(l.tile) * NB * mb);
    alignas(64) float tmp[NB * VL];
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * mb, w = std::min(mb, m - i0);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t g = l.tile_width(t), kt = l.tile_rows(t);
        if (kt == 0) continue;
        const int32_t* rows = l.rows + l.row_offsets[t];
        const int32_t* cols = l.cols + t * l.tile;
        for (int64_t i = 0; i < w; ++i) {  // x[:, rows_t] of the block, [w, kt]
          const float* xr = x + (i0 + i) * k;
          float* d = xg.get() + i * kt;
          for (int64_t r = 0; r < kt; ++r) d[r] = xr[rows[r]];
        }
        for (int64_t q = 0; q < panels(g); ++q)  // gY[:, cols_t] as panels [w][NB]
          for (int64_t i = 0; i < w; ++i)
            for (int64_t j = 0; j < NB; ++j)
              gyp[(q * w + i) * NB + j] = q * NB + j < g ? gy[(i0 + i) * n + cols[q * NB + j]] : 0.f;
        float* gvt = gv + l.value_offset(t);  // [g, kt]
        for (int64_t q = 0; q < panels(g); ++q) {
          const int64_t nj = std::min(NB, g - q * NB);
          for (int64_t r0 = 0; r0 < kt; r0 += VL) {
            const int64_t h = std::min(VL, kt - r0);
            // tmp[j][r] = sum_i gY[i, cols_j] * X[i, rows_r]
            micro<false>(xg.get() + r0, kt, nullptr, w, gyp.get() + q * w * NB, h, tmp, VL);
            for (int64_t j = 0; j < nj; ++j) {
              float* dst = gvt + (q * NB + j) * kt + r0;
              for (int64_t r = 0; r < h; ++r) dst[r] += tmp[j * VL + r];
            }
          }
        }
      }
    }
  });
}

#else  // no AVX-512 build support: never selected

bool available() { return false; }
void forward(const LayoutView&, const float*, int64_t, int64_t, const float*, const float*, float*, int64_t, int64_t,
             const ParallelFn&) {}
void grad_input(const LayoutView&, const float*, int64_t, int64_t, const float*, float*, int64_t, int64_t,
                const ParallelFn&) {}
void grad_values(const LayoutView&, const float*, const float*, int64_t, int64_t, int64_t, float*, const ParallelFn&) {}

#endif

}  // namespace tilesparse::core::avx512
