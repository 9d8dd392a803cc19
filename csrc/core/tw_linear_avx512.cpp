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

// grad_values: kept inputs per work item (a multiple of 16), and rows of the
// reduction per pass: the item's gathered x (144 KiB) and 64-output gy panel
// (96 KiB) stay in L2; longer passes amortize the transposed adds to gv
// (measured against 128-1024 rows on the Xeon of benchmarks/results).
constexpr int64_t GPC = 96;
constexpr int64_t GMB = 384;

// Per-core L2 size from the OS (glibc reads CPUID), 1 MiB when unknown.
int64_t l2_bytes() {
  static const int64_t bytes = fused::l2_cache_bytes(int64_t(1) << 20);
  return bytes;
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
  // One base pointer per row: each broadcast is then a single load from
  // base + idx[p] (a chain of `+ ldx` adds per kept feature, which the
  // compiler emits otherwise, crowds the front end next to the 24 FMAs).
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
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)  // (masked loads cost an extra ALU uop: only at the edge)
      bv[v] = FullB ? _mm512_loadu_ps(bp + 16 * v) : _mm512_maskz_loadu_ps(mk[v], bp + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(xr[r][ip]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_fmadd_ps(a, bv[v], c[r][v]);
    }
  }
  if (o.cols == nullptr) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(yr + r * o.ldy + 16 * v, mk[v], c[r][v]);
  } else {  // scattered outputs (2-D TW, grad_input's kept inputs): gather, add, scatter 16 at a time.
            // The indices are distinct (cols and a tile's kept rows are strictly increasing), so
            // one scatter never writes an element twice.
    __m512i ix[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) ix[v] = _mm512_maskz_loadu_epi32(mk[v], o.cols + 16 * v);
    __m512 base[NV] = {};  // read only when !accumulate
    if (!o.accumulate) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        base[v] = o.bias ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk[v], ix[v], o.bias, 4)
                         : _mm512_setzero_ps();
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      float* row = yr + r * o.ldy;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        if (!mk[v]) continue;
        const __m512 prev = o.accumulate ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk[v], ix[v], row, 4)
                                         : base[v];
        _mm512_mask_i32scatter_ps(row, mk[v], ix[v], _mm512_add_ps(prev, c[r][v]), 4);
      }
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

// acc[r * FW + j] += sum_i xg[i * ldxg + r] * gp[i * FW + j] for r < R, j <
// FW: both operands packed (gp is zero past the tile's width), 64 output
// gradients per 4 loads; the call's sum (one pass of rows) is added to the
// accumulator tile as vectors (no transposed scalar adds to gv per pass;
// summing per pass keeps the error of a blocked sum over m).
template <int R>
TS_AVX512 void gv_micro_impl(const float* xg, int64_t ldxg, int64_t len, const float* gp, float* acc) {
  __m512 c[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int64_t i = 0; i < len; ++i) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(gp + i * FW + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(xg[i * ldxg + r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_fmadd_ps(a, bv[v], c[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(acc + r * FW + 16 * v, _mm512_add_ps(_mm512_loadu_ps(acc + r * FW + 16 * v), c[r][v]));
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
TS_AVX512 void pack_gy_panel(const float* g, int64_t ldg, int64_t h, int64_t width, float* gp) {
  __mmask16 mk[NV];
  for (int v = 0; v < NV; ++v) {
    const int64_t rem = width - 16 * v;
    mk[v] = rem >= 16 ? 0xFFFF : rem <= 0 ? 0 : static_cast<__mmask16>((1u << rem) - 1);
  }
  for (int64_t i = 0; i < h; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(gp + i * FW + 16 * v, _mm512_maskz_loadu_ps(mk[v], g + i * ldg + 16 * v));
}

// xg[i * GPC + p] = x[i * ldx + rows[p]] for i < h, p < len (<= GPC), 16
// kept inputs per vector gather (zero past len); the next rows' span of x is
// prefetched (rows a multiple of 4 KiB apart defeat the hardware prefetcher).
TS_AVX512 void gather_x_rows(const float* x, int64_t ldx, int64_t h, const int32_t* rows, int64_t len, float* xg) {
  constexpr int64_t NQ = (GPC + 15) / 16;
  __m512i ix[NQ];
  __mmask16 mk[NQ];
  for (int64_t v = 0; v < NQ; ++v) {
    const int64_t rem = len - 16 * v;
    mk[v] = rem >= 16 ? 0xFFFF : rem <= 0 ? 0 : static_cast<__mmask16>((1u << rem) - 1);
    ix[v] = _mm512_maskz_loadu_epi32(mk[v], rows + 16 * v);
  }
  const int64_t nq = (len + 15) / 16, span0 = rows[0], span1 = rows[len - 1];
  constexpr int64_t ahead = 4;
  for (int64_t i = 0; i < h; ++i) {
    const float* xr = x + i * ldx;
    if (i + ahead < h)
      for (int64_t c = span0; c <= span1 + 15; c += 16) _mm_prefetch(reinterpret_cast<const char*>(xr + ahead * ldx + std::min(c, span1)), _MM_HINT_T0);
    for (int64_t v = 0; v < nq; ++v)
      _mm512_storeu_ps(xg + i * GPC + 16 * v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk[v], ix[v], xr, 4));
  }
}

// Panel q of tile t holds outputs [q*FW, q*FW+FW) as [kt][FW], zero-padded
// past the tile's width; offsets[t] is the tile's start.
void pack_forward_impl(const LayoutView& l, const float* values, ForwardPanels& out,
                       const ParallelFn& parallel_for) {
  out.offsets.assign(l.num_tiles + 1, 0);
  for (int64_t t = 0; t < l.num_tiles; ++t)
    out.offsets[t + 1] = out.offsets[t] + (l.tile_width(t) + FW - 1) / FW * FW * l.tile_rows(t);
  out.data.resize(out.offsets[l.num_tiles]);  // every element is written below
  float* packed = out.data.data();
  const std::vector<int64_t>& offsets = out.offsets;
  fused::maybe_parallel(offsets[l.num_tiles] < fused::kSerialPackElems, parallel_for, 0, l.num_tiles,
                        [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = l.tile_width(t), kt = l.tile_rows(t);
      const float* v = values + l.value_offset(t);  // [g, kt]
      float* tile_panels = packed + offsets[t];
      for (int64_t q = 0; q * FW < g; ++q) {
        float* panel = tile_panels + q * kt * FW;  // [kt][FW]
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
}

}  // namespace

bool available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return ok;
}

void pack_forward(const LayoutView& l, const float* values, ForwardPanels& out, const ParallelFn& parallel_for) {
  pack_forward_impl(l, values, out, parallel_for);
}

void forward_packed(const LayoutView& l, const ForwardPanels& panels, const float* x, int64_t m, int64_t k,
                    const float* bias, float* y, int64_t n, int64_t workers, const ParallelFn& parallel_for) {
  if (m <= 0 || n <= 0) return;
  fused::forward_panels<FR, FW, FKC>(l, panels.data.data(), panels.offsets, x, m, k, bias, y, n, workers, l2_bytes(),
                                     parallel_for, fwd_micro);
}

void forward(const LayoutView& l, const float* x, int64_t m, int64_t k, const float* values, const float* bias,
             float* y, int64_t n, int64_t workers, const ParallelFn& parallel_for) {
  if (m <= 0 || n <= 0) return;
  // Reused per calling thread: no page faults and zero fill of a fresh
  // allocation per call; holds the largest layer's panels seen by the thread.
  thread_local ForwardPanels buf;
  pack_forward_impl(l, values, buf, parallel_for);
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

#else  // no AVX-512 build support: never selected

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

}  // namespace tilesparse::core::avx512
