#include "tw_linear_avx512.h"
#include "tw_linear_fused.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>
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

// ---- grad_values: NB outputs x VL kept inputs ---------------------------------
// Micro-tile: NB outputs broadcast from a packed panel x VL = 3 vectors of 16
// along the other output dimension: 24 accumulators in zmm registers.
constexpr int64_t NB = 8;
constexpr int64_t VL = 48;

std::unique_ptr<float[]> scratch(int64_t n) { return std::unique_ptr<float[]>(new float[std::max<int64_t>(1, n)]); }

// acc[j][v] = sum_p b[p * NB + j] * a[p * lda + v] for v < h (h <= VL), written to
// out[j * ldo + v]. Full (h == VL) chunks use plain loads and stores; only
// the edge chunk pays for masks.
template <bool Full>
TS_AVX512 void micro_impl(const float* a, int64_t lda, int64_t len, const float* b, int64_t h,
                          float* out, int64_t ldo) {
  const __mmask16 m0 = h >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << h) - 1);
  const __mmask16 m1 = h >= 32 ? 0xFFFF : h <= 16 ? 0 : static_cast<__mmask16>((1u << (h - 16)) - 1);
  const __mmask16 m2 = h >= 48 ? 0xFFFF : h <= 32 ? 0 : static_cast<__mmask16>((1u << (h - 32)) - 1);
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00, c20 = c00, c21 = c00,
         c22 = c00, c30 = c00, c31 = c00, c32 = c00, c40 = c00, c41 = c00, c42 = c00, c50 = c00, c51 = c00,
         c52 = c00, c60 = c00, c61 = c00, c62 = c00, c70 = c00, c71 = c00, c72 = c00;
#pragma GCC unroll 2
  for (int64_t p = 0; p < len; ++p) {
    const float* ap = a + p * lda;
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

void micro(const float* a, int64_t lda, int64_t len, const float* b, int64_t h, float* out,
           int64_t ldo) {
  if (h == VL) micro_impl<true>(a, lda, len, b, h, out, ldo);
  else micro_impl<false>(a, lda, len, b, h, out, ldo);
}

int64_t panels(int64_t width) { return (width + NB - 1) / NB; }

// ---- forward: R rows of x x FW outputs --------------------------------------
// The rows of x are read in place: each kept input feature is broadcast from
// x[i, rows[p]] (the gather is the load address), the packed weight panel
// supplies FW = 4 vectors of outputs, and the result lands directly in y's
// row-major layout (no transpose of x or y).
// 6 x 4 vectors = 24 accumulators + 4 weight vectors + 1 broadcast of 32
// zmm registers (12 x 2 vectors measured ~10% slower here).
constexpr int64_t FR = 6;
constexpr int NV = 4;
constexpr int64_t FW = 16 * NV;
// Reduction chunk: long enough that most tiles run in one pass (each extra
// chunk reloads and re-stores the outputs); measured best on a Xeon with
// 48 KiB L1 / 2 MiB L2 against 128-512.
constexpr int64_t FKC = 1024;

// Per-core L2 size from the OS (glibc reads CPUID), 1 MiB when unknown.
int64_t l2_bytes() {
  static const int64_t bytes = fused::l2_cache_bytes(int64_t(1) << 20);
  return bytes;
}

// fused::row_blocks with this file's register tile and L2 size.
std::pair<int64_t, int64_t> row_blocks(int64_t m, int64_t row_floats, int64_t workers) {
  return fused::row_blocks(m, row_floats, workers, FR, l2_bytes());
}

using fused::FwdOut;

template <int R, bool FullB>
TS_AVX512 void fwd_micro_impl(const float* x, int64_t ldx, const int32_t* idx, int64_t len, const float* b,
                              int64_t ldb, const FwdOut& o, int64_t row0) {
  __m512 c[R][NV];
  __mmask16 mk[NV];
  for (int v = 0; v < NV; ++v) {
    const int64_t rem = o.width - 16 * v;
    mk[v] = rem >= 16 ? 0xFFFF : rem <= 0 ? 0 : static_cast<__mmask16>((1u << rem) - 1);
  }
  float* yr = o.y + row0 * o.ldy;
  if (o.cols == nullptr && o.accumulate) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_maskz_loadu_ps(mk[v], yr + r * o.ldy + 16 * v);
  } else if (o.cols == nullptr && o.bias) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512 bv = _mm512_maskz_loadu_ps(mk[v], o.bias + 16 * v);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) c[r][v] = bv;
    }
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_setzero_ps();
  }
#pragma GCC unroll 2
  for (int64_t p = 0; p < len; ++p) {
    const float* xp = x + idx[p];
    const float* bp = b + p * ldb;
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)  // (masked loads cost an extra ALU uop: only at the edge)
      bv[v] = FullB ? _mm512_loadu_ps(bp + 16 * v) : _mm512_maskz_loadu_ps(mk[v], bp + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(xp[r * ldx]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_fmadd_ps(a, bv[v], c[r][v]);
    }
  }
  if (o.cols == nullptr) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(yr + r * o.ldy + 16 * v, mk[v], c[r][v]);
  } else {  // outputs regrouped by 2-D TW: scatter through a small buffer
    alignas(64) float tmp[R * FW];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _mm512_store_ps(tmp + r * FW + 16 * v, c[r][v]);
    for (int r = 0; r < R; ++r)
      for (int64_t j = 0; j < o.width; ++j) {
        float& dst = yr[r * o.ldy + o.cols[j]];
        dst = (o.accumulate ? dst : o.bias ? o.bias[o.cols[j]] : 0.f) + tmp[r * FW + j];
      }
  }
}

// b: the panel, [len] rows of `width` floats at stride ldb; full_b: FW floats
// may be read from every row (else only `width`, so an unpadded panel at the
// end of an array is safe).
void fwd_micro(int64_t rows, const float* x, int64_t ldx, const int32_t* idx, int64_t len, const float* b,
               int64_t ldb, const FwdOut& o, int64_t row0, bool full_b) {
#define TS_CASE(R)                                                                          \
  case R:                                                                                   \
    return full_b ? fwd_micro_impl<R, true>(x, ldx, idx, len, b, ldb, o, row0)              \
                  : fwd_micro_impl<R, false>(x, ldx, idx, len, b, ldb, o, row0);
  switch (rows) {
    TS_CASE(6) TS_CASE(5) TS_CASE(4) TS_CASE(3) TS_CASE(2)
    default: TS_CASE(1)
  }
#undef TS_CASE
}

// dst[c * ldd + r] = src[r * lds + c] for a 16 x 16 block, in registers.
TS_AVX512 void transpose16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // pairs of rows interleaved
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // 2 x 2 blocks of pairs -> 4-wide columns per 128-bit lane
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)  // then whole 128-bit lanes
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xDD);
    }
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ldd, r[i]);
}

// A per-thread buffer that only grows: the packed weight is rebuilt every
// call (values change between training steps), and reusing the memory avoids
// a fresh allocation's page faults and zero fill each time. It holds at most
// the largest layer's packed values per calling thread.
float* forward_panel_buffer(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// Panel q of tile t holds outputs [q*FW, q*FW+FW) as [kt][FW], zero-padded
// past the tile's width; offsets[t] is the tile's start.
const float* pack_forward_panels(const LayoutView& l, const float* values, std::vector<int64_t>& offsets,
                                 const ParallelFn& parallel_for) {
  offsets.assign(l.num_tiles + 1, 0);
  for (int64_t t = 0; t < l.num_tiles; ++t)
    offsets[t + 1] = offsets[t] + (l.tile_width(t) + FW - 1) / FW * FW * l.tile_rows(t);
  float* packed = forward_panel_buffer(offsets[l.num_tiles]);
  parallel_for(0, l.num_tiles, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = l.tile_width(t), kt = l.tile_rows(t);
      const float* v = values + l.value_offset(t);  // [g, kt]
      float* out = packed + offsets[t];
      for (int64_t q = 0; q * FW < g; ++q) {
        float* panel = out + q * kt * FW;  // [kt][FW]
        const float* vq = v + q * FW * kt;
        const int64_t j1 = std::min(FW, g - q * FW);
        for (int64_t p0 = 0; p0 < kt; p0 += 16)
          for (int64_t jb = 0; jb < FW; jb += 16) {
            const int64_t np = std::min<int64_t>(16, kt - p0), nj = std::min<int64_t>(16, j1 - jb);
            if (np == 16 && nj == 16) {
              transpose16(vq + jb * kt + p0, kt, panel + p0 * FW + jb, FW);
              continue;
            }
            for (int64_t p = p0; p < p0 + np; ++p)
              for (int64_t j = jb; j < jb + 16; ++j)
                panel[p * FW + j] = j - jb < nj ? vq[j * kt + p] : 0.f;
          }
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
  if (m <= 0 || n <= 0) return;
  std::vector<int64_t> off;
  const float* bp = pack_forward_panels(l, values, off, parallel_for);
  fused::forward_panels<FR, FW, FKC>(l, bp, off, x, m, k, bias, y, n, workers, l2_bytes(), parallel_for, fwd_micro);
}

void grad_input(const LayoutView& l, const float* gy, int64_t m, int64_t n, const float* values, float* gx,
                int64_t k, int64_t workers, const ParallelFn& parallel_for) {
  if (m <= 0 || k <= 0) return;
  workers = std::max<int64_t>(1, workers);
  // gx[i, rows_t[p]] += sum_j gy[i, cols_t[j]] * V_t[j, p]: the forward's
  // micro-kernel with gy's kept outputs broadcast and V_t read in place
  // ([g, kt] row-major: 64 consecutive kept inputs of one output are one
  // panel row), accumulated into gx through the tile's kept inputs.
  const auto [mb, blocks] = row_blocks(m, n + k, workers);
  parallel_for(0, blocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * mb, h = std::min(mb, m - i0);
      std::fill(gx + i0 * k, gx + (i0 + h) * k, 0.f);
      for (int64_t t = 0; t < l.num_tiles; ++t) {
        const int64_t g = l.tile_width(t), kt = l.tile_rows(t), kr = l.tile_kept(t);
        if (kr == 0 || g == 0) continue;
        const int32_t* rows = l.rows + l.row_offsets[t];
        const int32_t* cols = l.cols + t * l.tile;
        const float* v = values + l.value_offset(t);  // [g, kt]: kr weights, then padding
        for (int64_t q = 0; q * FW < kr; ++q) {
          const int64_t width = std::min(FW, kr - q * FW);
          const int32_t* qr = rows + q * FW;
          // entry by entry: padded rows repeat a feature, so the span alone can mislead
          const bool contiguous = std::adjacent_find(qr, qr + width, [](int32_t a, int32_t b) { return b != a + 1; }) ==
                                  qr + width;
          FwdOut o{contiguous ? gx + qr[0] : gx, k, contiguous ? nullptr : qr, width, nullptr, true};
          for (int64_t i = 0; i < h; i += FR)
            fwd_micro(std::min(FR, h - i), gy + (i0 + i) * n, n, cols, g, v + q * FW, kt, o, i0 + i,
                      width == FW);
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
        // gv_t[:, :kr] only: the padding slots keep their zero gradient
        const int64_t g = l.tile_width(t), kt = l.tile_rows(t), kr = l.tile_kept(t);
        if (kr == 0) continue;
        const int32_t* rows = l.rows + l.row_offsets[t];
        const int32_t* cols = l.cols + t * l.tile;
        for (int64_t i = 0; i < w; ++i) {  // x[:, rows_t] of the block, [w, kr] (leading dimension kt)
          const float* xr = x + (i0 + i) * k;
          float* d = xg.get() + i * kt;
          for (int64_t r = 0; r < kr; ++r) d[r] = xr[rows[r]];
        }
        for (int64_t q = 0; q < panels(g); ++q)  // gY[:, cols_t] as panels [w][NB]
          for (int64_t i = 0; i < w; ++i)
            for (int64_t j = 0; j < NB; ++j)
              gyp[(q * w + i) * NB + j] = q * NB + j < g ? gy[(i0 + i) * n + cols[q * NB + j]] : 0.f;
        float* gvt = gv + l.value_offset(t);  // [g, kt]
        for (int64_t q = 0; q < panels(g); ++q) {
          const int64_t nj = std::min(NB, g - q * NB);
          for (int64_t r0 = 0; r0 < kr; r0 += VL) {
            const int64_t h = std::min(VL, kr - r0);
            // tmp[j][r] = sum_i gY[i, cols_j] * X[i, rows_r]
            micro(xg.get() + r0, kt, w, gyp.get() + q * w * NB, h, tmp, VL);
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
