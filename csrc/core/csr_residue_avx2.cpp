#include "csr_residue_avx2.h"

#include <algorithm>
#include <vector>

#include "avx2_target.h"

namespace tilesparse::core::avx2 {

#if TS_HAVE_AVX2_BUILD

namespace {

constexpr int kVecs = static_cast<int>(kBlockM / 8);  // ymm per 64-sample block
static_assert(kBlockM % 8 == 0, "a sample block is whole ymm vectors");

// acc[q] += v * x[8q .. 8q+8) for the first `mb` samples (Full: mb == kBlockM).
template <bool Full>
TS_AVX2 inline void axpy_block(__m256 v, const float* x, int64_t mb, __m256* acc) {
  for (int q = 0; q < kVecs; ++q) {
    if (Full) {
      acc[q] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 8 * q), acc[q]);
    } else if (8 * q < mb) {
      acc[q] = _mm256_fmadd_ps(v, _mm256_maskload_ps(x + 8 * q, lane_mask(mb - 8 * q)), acc[q]);
    }
  }
}

// One output row's block: out[i] = sum_j values[j] * xt[cols[j]][m0 + i], i < mb.
template <bool Full>
TS_AVX2 void forward_row(const float* xt, int64_t M, int64_t m0, int64_t mb, const float* values,
                         const int32_t* cols, int32_t begin, int32_t end, float* out) {
  __m256 acc[kVecs];
  for (int q = 0; q < kVecs; ++q) acc[q] = _mm256_setzero_ps();
  for (int32_t j = begin; j < end; ++j)
    axpy_block<Full>(_mm256_set1_ps(values[j]), xt + static_cast<int64_t>(cols[j]) * M + m0, mb, acc);
  for (int q = 0; q < kVecs; ++q) {
    if (Full) {
      _mm256_storeu_ps(out + 8 * q, acc[q]);
    } else if (8 * q < mb) {
      _mm256_maskstore_ps(out + 8 * q, lane_mask(mb - 8 * q), acc[q]);
    }
  }
}

TS_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// <a, b> over n floats: 4 independent FMA chains (latency 4 x throughput 2 would
// want 8; 4 keeps the two input streams, not the FMA, the limit at these lengths).
TS_AVX2 float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i < n; i += 8) {  // the last pass masked
    const __m256i m = lane_mask(n - i);
    s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s0);
  }
  return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

// out[c * ldo + i] = a[i * lda + c] for an 8 x 8 block: unpack pairs of rows,
// shuffle pairs of pairs, then swap the 128-bit halves (24 shuffles, no gathers).
TS_AVX2 inline void transpose8x8(const float* a, int64_t lda, float* out, int64_t ldo) {
  __m256 r[8], t[8], q[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(a + i * lda);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);      // a(i,0) a(i+1,0) a(i,1) a(i+1,1) | columns 4, 5
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  // columns 2, 3 | 6, 7
  }
  for (int h = 0; h < 8; h += 4) {  // rows h..h+3: q[h + j] holds column j | column j + 4
    q[h + 0] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    q[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    q[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    q[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {
    _mm256_storeu_ps(out + j * ldo, _mm256_permute2f128_ps(q[j], q[j + 4], 0x20));
    _mm256_storeu_ps(out + (j + 4) * ldo, _mm256_permute2f128_ps(q[j], q[j + 4], 0x31));
  }
}

TS_AVX2 void transpose_impl(const float* a, int64_t rows, int64_t cols, int64_t lda, float* out, int64_t ldo) {
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) {
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) transpose8x8(a + i * lda + c, lda, out + c * ldo + i, ldo);
    for (; c < cols; ++c)
      for (int64_t k = 0; k < 8; ++k) out[c * ldo + i + k] = a[(i + k) * lda + c];
  }
  for (; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c) out[c * ldo + i] = a[i * lda + c];
}

}  // namespace

// Public entry points are baseline code (as in tw_linear_avx2.cpp); the
// AVX2 work is in the TS_AVX2 helpers they call.
void transpose(const float* a, int64_t rows, int64_t cols, int64_t lda, float* out, int64_t ldo) {
  transpose_impl(a, rows, cols, lda, out, ldo);
}

void feature_major(const float* a, int64_t M, int64_t F, float* out, const ParallelFn& parallel_for) {
  parallel_for(0, (M + kBlockM - 1) / kBlockM, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t m0 = b * kBlockM;
      transpose(a + m0 * F, std::min(kBlockM, M - m0), F, F, out + m0, M);
    }
  });
}

void csr_forward(const float* xt, int64_t M, const float* values, const CsrView& r, float* y,
                 const ParallelFn& parallel_for) {
  const int64_t row_blocks = (r.rows + kBlockRows - 1) / kBlockRows;
  parallel_for(0, row_blocks, [&](int64_t begin, int64_t end) {
    alignas(32) float tile[kBlockRows * kBlockM];
    for (int64_t rb = begin; rb < end; ++rb) {
      const int64_t n0 = rb * kBlockRows, nb = std::min(kBlockRows, r.rows - n0);
      for (int64_t m0 = 0; m0 < M; m0 += kBlockM) {
        const int64_t mb = std::min(kBlockM, M - m0);
        for (int64_t dn = 0; dn < nb; ++dn) {
          const int32_t jb = r.row_ptr[n0 + dn], je = r.row_ptr[n0 + dn + 1];
          if (mb == kBlockM) {
            forward_row<true>(xt, M, m0, mb, values, r.cols, jb, je, tile + dn * kBlockM);
          } else {
            forward_row<false>(xt, M, m0, mb, values, r.cols, jb, je, tile + dn * kBlockM);
          }
        }
        transpose(tile, nb, mb, kBlockM, y + m0 * r.rows + n0, r.rows);  // feature-major tile -> y's rows
      }
    }
  });
}

void csr_grad_input(const float* gt, int64_t M, const float* values, const CsrView& r, float* gx,
                    const ParallelFn& parallel_for) {
  const CsrTransposed rt(r);
  const std::vector<float> vt = rt.values(values);
  csr_forward(gt, M, vt.data(), rt.view(), gx, parallel_for);
}

void csr_grad_values_t(const float* gt, const float* xt, int64_t M, const CsrView& r, float* dv,
                       const ParallelFn& parallel_for) {
  parallel_for(0, r.rows, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int32_t j = r.row_ptr[n]; j < r.row_ptr[n + 1]; ++j)
        dv[j] = dot(gt + n * M, xt + static_cast<int64_t>(r.cols[j]) * M, M);
  });
}

#else  // not an x86-64 GCC/Clang build: available() is false and these are never called

void csr_forward(const float*, int64_t, const float*, const CsrView&, float*, const ParallelFn&) {}
void csr_grad_input(const float*, int64_t, const float*, const CsrView&, float*, const ParallelFn&) {}
void csr_grad_values_t(const float*, const float*, int64_t, const CsrView&, float*, const ParallelFn&) {}
void transpose(const float*, int64_t, int64_t, int64_t, float*, int64_t) {}
void feature_major(const float*, int64_t, int64_t, float*, const ParallelFn&) {}

#endif

}  // namespace tilesparse::core::avx2
