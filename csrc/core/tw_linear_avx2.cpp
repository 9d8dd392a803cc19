#include "tw_linear_avx2.h"
#include "tw_linear_fused.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "avx2_target.h"

namespace tilesparse::core::avx2 {

#if TS_HAVE_AVX2_BUILD

namespace {

// Micro-tile: FR rows x NV vectors of 8 outputs. Registers: FR * NV = 12
// accumulators + NV = 2 weight vectors + 1 broadcast = 15 of the 16 ymm.
// (4 x 3 vectors also fits, with 7 loads per 12 FMAs instead of 8; 6 x 2
// keeps panels 16 wide, so 64-wide tiles split evenly and edges are rarer.)
constexpr int64_t FR = 6;
constexpr int NV = 2;
constexpr int64_t FW = 8 * NV;
// Reduction chunk of the forward: a [FKC][FW] panel is 16 KiB, half of a
// 32 KiB L1 (Zen 2/3, most Intel clients), leaving room for the lines of x.
constexpr int64_t FKC = 256;
// grad_values: kept inputs per work item, and rows of the reduction per pass
// (the item's x columns of a pass stay in L2 while its 16-output gy panels
// stream through L1).
constexpr int64_t GPC = 96;
constexpr int64_t GMB = 256;

// Per-core L2 size from the OS (glibc reads CPUID), 512 KiB when unknown.
int64_t l2_bytes() {
  static const int64_t bytes = fused::l2_cache_bytes(int64_t(512) << 10);
  return bytes;
}

using fused::FwdOut;

// y[row0 + r, out j] (+)= sum_p x[r * ldx + idx[p]] * b[p * ldb + j], r < R, j < width.
// FullB: FW floats may be read from every row of b (else only `width`).
template <int R, bool FullB>
TS_AVX2 void fwd_micro_impl(const float* x, int64_t ldx, const int32_t* idx, int64_t len, const float* b,
                            int64_t ldb, const FwdOut& o, int64_t row0) {
  __m256 c[R][NV];
  __m256i mk[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) mk[v] = lane_mask(o.width - 8 * v);
  const bool full_w = o.width == FW;
  float* yr = o.y + row0 * o.ldy;
  if (o.cols == nullptr && o.accumulate) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v)
        c[r][v] = full_w ? _mm256_loadu_ps(yr + r * o.ldy + 8 * v) : _mm256_maskload_ps(yr + r * o.ldy + 8 * v, mk[v]);
  } else if (o.cols == nullptr && o.bias) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const __m256 bv = full_w ? _mm256_loadu_ps(o.bias + 8 * v) : _mm256_maskload_ps(o.bias + 8 * v, mk[v]);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) c[r][v] = bv;
    }
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) c[r][v] = _mm256_setzero_ps();
  }
  // One base pointer per row: each broadcast is then a single load from
  // base + idx[p] (a chain of `+ ldx` adds per kept feature would crowd the
  // front end next to the 12 FMAs).
  const float* xr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    xr[r] = x + r * ldx;
    asm("" : "+r"(xr[r]));  // opaque, so the compiler cannot fold them back into that chain
  }
#pragma GCC unroll 2
  for (int64_t p = 0; p < len; ++p) {
    const int64_t ip = idx[p];
    const float* bp = b + p * ldb;
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = FullB ? _mm256_loadu_ps(bp + 8 * v) : _mm256_maskload_ps(bp + 8 * v, mk[v]);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(xr[r] + ip);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) c[r][v] = _mm256_fmadd_ps(a, bv[v], c[r][v]);
    }
  }
  if (o.cols == nullptr) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        if (full_w) _mm256_storeu_ps(yr + r * o.ldy + 8 * v, c[r][v]);
        else _mm256_maskstore_ps(yr + r * o.ldy + 8 * v, mk[v], c[r][v]);
      }
  } else {  // scattered outputs (2-D TW, gathered rows of grad_input): through a small buffer,
            // one output at a time, so repeated features accumulate
    alignas(32) float tmp[R * FW];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) _mm256_store_ps(tmp + r * FW + 8 * v, c[r][v]);
    if (o.accumulate) {  // column by column: one index load for the R rows
      for (int64_t j = 0; j < o.width; ++j) {
        float* dst = yr + o.cols[j];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) dst[r * o.ldy] += tmp[r * FW + j];
      }
    } else {
      for (int64_t j = 0; j < o.width; ++j) {
        float* dst = yr + o.cols[j];
        const float b0 = o.bias ? o.bias[o.cols[j]] : 0.f;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) dst[r * o.ldy] = b0 + tmp[r * FW + j];
      }
    }
  }
}

void fwd_micro(int64_t rows, const float* x, int64_t ldx, const int32_t* idx, int64_t len, const float* b,
               int64_t ldb, const FwdOut& o, int64_t row0, bool full_b) {
#define TS_CASE(R)                                                             \
  case R:                                                                      \
    return full_b ? fwd_micro_impl<R, true>(x, ldx, idx, len, b, ldb, o, row0) \
                  : fwd_micro_impl<R, false>(x, ldx, idx, len, b, ldb, o, row0);
  switch (rows) {
    TS_CASE(6) TS_CASE(5) TS_CASE(4) TS_CASE(3) TS_CASE(2)
    default: TS_CASE(1)
  }
#undef TS_CASE
}

// acc[r * FW + j] += sum_i xg[i * ldxg + r] * gp[i * FW + j] for r < R, j <
// FW: both operands packed (gp is zero past the tile's width), 16 output
// gradients per 2 loads; the call's sum (one pass of rows) is added to the
// accumulator tile as vectors (no transposed scalar adds to gv per pass;
// summing per pass keeps the error of a blocked sum over m).
template <int R>
TS_AVX2 void gv_micro_impl(const float* xg, int64_t ldxg, int64_t len, const float* gp, float* acc) {
  __m256 c[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) c[r][v] = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int64_t i = 0; i < len; ++i) {
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_loadu_ps(gp + i * FW + 8 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(xg + i * ldxg + r);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) c[r][v] = _mm256_fmadd_ps(a, bv[v], c[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(acc + r * FW + 8 * v, _mm256_add_ps(_mm256_loadu_ps(acc + r * FW + 8 * v), c[r][v]));
}

void gv_micro(int64_t rows, const float* xg, int64_t ldxg, int64_t len, const float* gp, float* acc) {
  switch (rows) {
    case 6: return gv_micro_impl<6>(xg, ldxg, len, gp, acc);
    case 5: return gv_micro_impl<5>(xg, ldxg, len, gp, acc);
    case 4: return gv_micro_impl<4>(xg, ldxg, len, gp, acc);
    case 3: return gv_micro_impl<3>(xg, ldxg, len, gp, acc);
    case 2: return gv_micro_impl<2>(xg, ldxg, len, gp, acc);
    default: return gv_micro_impl<1>(xg, ldxg, len, gp, acc);
  }
}

// gp[i * FW + j] = g[i * ldg + j] for i < h, j < width, zero for j >= width.
TS_AVX2 void pack_gy_panel(const float* g, int64_t ldg, int64_t h, int64_t width, float* gp) {
  if (width == FW) {
    for (int64_t i = 0; i < h; ++i) {
      _mm256_storeu_ps(gp + i * FW, _mm256_loadu_ps(g + i * ldg));
      _mm256_storeu_ps(gp + i * FW + 8, _mm256_loadu_ps(g + i * ldg + 8));
    }
    return;
  }
  const __m256i m0 = lane_mask(width), m1 = lane_mask(width - 8);
  for (int64_t i = 0; i < h; ++i) {
    _mm256_storeu_ps(gp + i * FW, _mm256_maskload_ps(g + i * ldg, m0));
    _mm256_storeu_ps(gp + i * FW + 8, _mm256_maskload_ps(g + i * ldg + 8, m1));
  }
}

// xg[i * GPC + p] = x[i * ldx + rows[p]] for i < h, p < len (<= GPC), 8
// kept inputs per vector gather (zero past len); the next rows' span of x is
// prefetched (rows a multiple of 4 KiB apart defeat the hardware prefetcher).
TS_AVX2 void gather_x_rows(const float* x, int64_t ldx, int64_t h, const int32_t* rows, int64_t len, float* xg) {
  constexpr int64_t NQ = (GPC + 7) / 8;
  alignas(32) int32_t idx[NQ * 8];
  for (int64_t p = 0; p < NQ * 8; ++p) idx[p] = p < len ? rows[p] : rows[len - 1];  // past len: a valid address
  const int64_t nq = (len + 7) / 8, span0 = rows[0], span1 = rows[len - 1];
  constexpr int64_t ahead = 4;
  for (int64_t i = 0; i < h; ++i) {
    const float* xr = x + i * ldx;
    if (i + ahead < h)
      for (int64_t c = span0; c <= span1 + 15; c += 16)
        _mm_prefetch(reinterpret_cast<const char*>(xr + ahead * ldx + std::min(c, span1)), _MM_HINT_T0);
    for (int64_t v = 0; v < nq; ++v)
      _mm256_storeu_ps(xg + i * GPC + 8 * v,
                       _mm256_i32gather_ps(xr, _mm256_load_si256(reinterpret_cast<const __m256i*>(idx + 8 * v)), 4));
  }
}

// dst[c * ldd + r] = src[r * lds + c] for an 8 x 8 block, in registers.
TS_AVX2 void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // pairs of rows interleaved
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {  // 4-wide columns per 128-bit lane
    r[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {  // then the lanes of rows 0-3 and 4-7
    t[j] = _mm256_permute2f128_ps(r[j], r[4 + j], 0x20);
    t[4 + j] = _mm256_permute2f128_ps(r[j], r[4 + j], 0x31);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + i * ldd, t[i]);
}

}  // namespace

bool available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

void pack_forward(const LayoutView& l, const float* values, ForwardPanels& out, const ParallelFn& parallel_for) {
  out.offsets.assign(l.num_tiles + 1, 0);
  for (int64_t t = 0; t < l.num_tiles; ++t)
    out.offsets[t + 1] = out.offsets[t] + (l.tile_width(t) + FW - 1) / FW * FW * l.tile_rows(t);
  out.data.resize(out.offsets[l.num_tiles]);  // every element is written below
  float* packed = out.data.data();
  const std::vector<int64_t>& off = out.offsets;
  fused::maybe_parallel(out.offsets[l.num_tiles] < fused::kSerialPackElems, parallel_for, 0, l.num_tiles,
                        [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = l.tile_width(t), kt = l.tile_rows(t);
      const float* v = values + l.value_offset(t);  // [g, kt]
      for (int64_t q = 0; q * FW < g; ++q) {
        float* panel = packed + off[t] + q * kt * FW;  // [kt][FW]
        const float* vq = v + q * FW * kt;
        const int64_t j1 = std::min(FW, g - q * FW);
        for (int64_t p0 = 0; p0 < kt; p0 += 8)
          for (int64_t jb = 0; jb < FW; jb += 8) {
            const int64_t np = std::min<int64_t>(8, kt - p0), nj = std::min<int64_t>(8, j1 - jb);
            if (np == 8 && nj == 8) {
              transpose8(vq + jb * kt + p0, kt, panel + p0 * FW + jb, FW);
              continue;
            }
            for (int64_t p = p0; p < p0 + np; ++p)
              for (int64_t j = jb; j < jb + 8; ++j) panel[p * FW + j] = j - jb < nj ? vq[j * kt + p] : 0.f;
          }
      }
    }
  });
}

void forward_packed(const LayoutView& l, const ForwardPanels& panels, const float* x, int64_t m, int64_t k,
                    const float* bias, float* y, int64_t n, int64_t workers, const ParallelFn& parallel_for) {
  fused::forward_panels<FR, FW, FKC>(l, panels.data.data(), panels.offsets, x, m, k, bias, y, n, workers, l2_bytes(),
                                     parallel_for, fwd_micro);
}

void forward(const LayoutView& l, const float* x, int64_t m, int64_t k, const float* values, const float* bias,
             float* y, int64_t n, int64_t workers, const ParallelFn& parallel_for) {
  if (m <= 0 || n <= 0) return;
  // Reused per calling thread: no page faults and zero fill of a fresh
  // allocation per call; holds the largest layer's panels seen by the thread.
  thread_local ForwardPanels buf;
  pack_forward(l, values, buf, parallel_for);
  forward_packed(l, buf, x, m, k, bias, y, n, workers, parallel_for);
}

void grad_input(const LayoutView& l, const float* gy, int64_t m, int64_t n, const float* values, float* gx,
                int64_t k, int64_t workers, const ParallelFn& parallel_for) {
  if (m <= 0 || k <= 0) return;
  thread_local std::vector<float> packed;  // reused: no page faults of a fresh buffer per call
  std::vector<int64_t> off;
  fused::pack_grad_input<FW>(l, values, packed, off, parallel_for);
  fused::grad_input_panels<FR, FW>(l, packed.data(), off, gy, m, n, gx, k, workers, l2_bytes(), parallel_for,
                                   fwd_micro);
}

void grad_values(const LayoutView& l, const float* gy, const float* x, int64_t m, int64_t n, int64_t k, float* gv,
                 int64_t workers, const ParallelFn& parallel_for) {
  fused::grad_values_items<FR, FW, GPC>(l, gy, x, m, n, k, gv, workers, fused::grad_values_rows(k, l2_bytes(), GMB),
                                        parallel_for, gather_x_rows, pack_gy_panel, gv_micro);
}

#else  // no AVX2 build support: never selected

bool available() { return false; }
void pack_forward(const LayoutView&, const float*, ForwardPanels&, const ParallelFn&) {}
void forward_packed(const LayoutView&, const ForwardPanels&, const float*, int64_t, int64_t, const float*, float*,
                    int64_t, int64_t, const ParallelFn&) {}
void forward(const LayoutView&, const float*, int64_t, int64_t, const float*, const float*, float*, int64_t, int64_t,
             const ParallelFn&) {}
void grad_input(const LayoutView&, const float*, int64_t, int64_t, const float*, float*, int64_t, int64_t,
                const ParallelFn&) {}
void grad_values(const LayoutView&, const float*, const float*, int64_t, int64_t, int64_t, float*, int64_t,
                 const ParallelFn&) {}

#endif

}  // namespace tilesparse::core::avx2
