// The AVX2+FMA switch of the AVX2 kernels (tw_linear_avx2.cpp,
// csr_residue_avx2.cpp): TS_HAVE_AVX2_BUILD says whether this build can emit
// them, TS_AVX2 marks a function compiled for AVX2+FMA. Per-function target
// instead of -mavx2 for the files: inline functions from shared headers
// (std::vector, LayoutView) instantiated there must stay baseline, or the
// linker may hand AVX2 copies to code run on any CPU. Include only from
// those .cpp files; callers check core::avx2::available() at run time.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TS_HAVE_AVX2_BUILD 1
#include <immintrin.h>
#define TS_AVX2 __attribute__((target("avx2,fma")))

namespace tilesparse::core::avx2 {

// Lanes [0, rem) of a ymm set (rem clamped to [0, 8]), for maskload/maskstore.
TS_AVX2 inline __m256i lane_mask(int64_t rem) {
  const int r = static_cast<int>(std::min<int64_t>(8, std::max<int64_t>(0, rem)));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

}  // namespace tilesparse::core::avx2
#else
#define TS_HAVE_AVX2_BUILD 0
#endif
