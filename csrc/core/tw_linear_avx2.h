// AVX2+FMA float32 tile-wise linear for CPUs without AVX-512 (runtime-detected;
// AMD Zen 1-4 client parts, Intel client CPUs since Haswell). Same scheme as
// tw_linear_avx512.h, sized for 16 ymm registers: kept input features are
// broadcast from x[i, rows[p]] (the gather is the load address), the weight
// comes from packed panels, outputs land in place in y's row-major layout.
// The code is compiled with per-function target attributes, so the rest of
// the library (and every inline function it shares) stays baseline x86-64.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "tile_layout.h"
#include "tw_forward_panels.h"

namespace tilesparse::core::avx2 {

// parallel_for(begin, end, fn(begin, end))
using ParallelFn = std::function<void(int64_t, int64_t, const std::function<void(int64_t, int64_t)>&)>;

// True when this CPU (and this build) can run the kernels below.
bool available();

// The forward's weight operand (tw_forward_panels.h), panels of 16 outputs.
void pack_forward(const LayoutView& l, const float* values, ForwardPanels& out, const ParallelFn& parallel_for);

// y[m, n] = x[m, k] @ W^T + bias (bias may be null), W given as packed panels
// of this layout. `workers` sizes the row blocks.
void forward_packed(const LayoutView& l, const ForwardPanels& panels, const float* x, int64_t m, int64_t k,
                    const float* bias, float* y, int64_t n, int64_t workers, const ParallelFn& parallel_for);

// pack_forward into a per-thread buffer, then forward_packed.
void forward(const LayoutView& l, const float* x, int64_t m, int64_t k, const float* values, const float* bias,
             float* y, int64_t n, int64_t workers, const ParallelFn& parallel_for);

// gx[m, k] = gy[m, n] @ W
void grad_input(const LayoutView& l, const float* gy, int64_t m, int64_t n, const float* values, float* gx,
                int64_t k, int64_t workers, const ParallelFn& parallel_for);

// gv = packed(gy^T @ x)
void grad_values(const LayoutView& l, const float* gy, const float* x, int64_t m, int64_t n, int64_t k, float* gv,
                 int64_t workers, const ParallelFn& parallel_for);

}  // namespace tilesparse::core::avx2
