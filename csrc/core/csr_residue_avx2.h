// AVX2+FMA float32 kernels of the TEW residue (same contracts as the generic
// ones in csr_residue.h), runtime-selected where core::avx2::available(). The
// generic loops compile to SSE2 without FMA in a baseline x86-64 build; these
// run 8 samples per instruction with fused multiply-adds:
//   forward      one 64-sample block of an output row lives in 8 ymm
//                accumulators over all its entries (loads: one x run per entry)
//   grad input   the forward of R^T (csr_residue.h's CsrTransposed)
//   grad values  dot products of length M in 4 independent FMA chains
// Partial blocks (M not a multiple of 8 or 64) use masked loads and stores, so
// no lane outside the arrays is touched. The feature-major copies the kernels
// read, and the forward's store, are 8 x 8 register transposes (torch's
// strided copy of a [640, 1536] gradient cost as much as a kernel).
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

// out[c * ldo + i] = a[i * lda + c] for i < rows, c < cols (8 x 8 blocks in
// registers, scalar edges). Also the forward's tile store.
void transpose(const float* a, int64_t rows, int64_t cols, int64_t lda, float* out, int64_t ldo);

// out [F, M] = the feature-major copy of a [M, F] (row-major), in blocks of
// kBlockM samples: what the kernels above read.
void feature_major(const float* a, int64_t M, int64_t F, float* out, const ParallelFn& parallel_for);

}  // namespace tilesparse::core::avx2
