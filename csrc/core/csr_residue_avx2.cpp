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

}  // namespace

// The parallel bodies are lambdas (no target attribute): they call the TS_AVX2 helpers.
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
        for (int64_t i = 0; i < mb; ++i) {  // feature-major tile -> y's sample-major rows
          float* out = y + (m0 + i) * r.rows + n0;
          for (int64_t dn = 0; dn < nb; ++dn) out[dn] = tile[dn * kBlockM + i];
        }
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

#endif

}  // namespace tilesparse::core::avx2
