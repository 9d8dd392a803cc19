// AVX2+FMA float32 kernels of the TEW residue (same contracts as the generic
// ones in csr_residue.h), runtime-selected where core::avx2::available(). The
// generic loops compile to SSE2 without FMA in a baseline x86-64 build; these
// run 8 samples per instruction with fused multiply-adds:
//   forward      one 64-sample block of an output row lives in 8 ymm
//                accumulators over all its entries (loads: one x run per entry)
//   grad input   the forward of R^T (csr_residue.h's CsrTransposed)
//   grad values  dot products of length M in 4 independent FMA chains
// Partial blocks (M not a multiple of 8 or 64) use masked loads and stores, so
// no lane outside the arrays is touched.
#pragma once

#include <cstdint>

#include "csr_residue.h"
#include "tw_linear_avx2.h"

namespace tilesparse::core::avx2 {

void csr_forward(const float* xt, int64_t M, const float* values, const CsrView& r, float* y,
                 const ParallelFn& parallel_for);

void csr_grad_input(const float* gt, int64_t M, const float* values, const CsrView& r, float* gx,
                    const ParallelFn& parallel_for);

void csr_grad_values_t(const float* gt, const float* xt, int64_t M, const CsrView& r, float* dv,
                       const ParallelFn& parallel_for);

}  // namespace tilesparse::core::avx2
