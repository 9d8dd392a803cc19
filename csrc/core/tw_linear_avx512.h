// AVX-512 float32 tile-wise linear for CPUs that have it (runtime-detected):
// the tile's kept input features are selected by the load address inside the
// micro-kernel (the CPU analogue of gathering in the GEMM's global->shared
// load), so no gathered copy of x is made, and outputs land in place in y's
// row-major layout. Other dtypes/CPUs use the generic path in tw_linear_cpu.h.
#pragma once

#include <cstdint>
#include <functional>

#include "tile_layout.h"
#include "tw_forward_panels.h"

namespace tilesparse::core::avx512 {

// parallel_for(begin, end, fn(begin, end))
using ParallelFn = std::function<void(int64_t, int64_t, const std::function<void(int64_t, int64_t)>&)>;

// True when this CPU (and this build) can run the kernels below.
bool available();

// The forward's weight operand (tw_forward_panels.h), panels of this file's FW outputs.
void pack_forward(const LayoutView& l, const float* values, ForwardPanels& out, const ParallelFn& parallel_for);

// y[m, n] = x[m, k] @ W^T + bias (bias may be null), W given as panels packed by pack_forward above.
void forward_packed(const LayoutView& l, const ForwardPanels& panels, const float* x, int64_t m, int64_t k,
                    const float* bias, float* y, int64_t n, int64_t workers, const ParallelFn& parallel_for);

// pack_forward into a per-thread buffer, then forward_packed. Contract as in tw_linear_cpu.h.
// `workers` sizes the row blocks (at least one block per worker when m allows).
void forward(const LayoutView& l, const float* x, int64_t m, int64_t k, const float* values, const float* bias,
             float* y, int64_t n, int64_t workers, const ParallelFn& parallel_for);

// gx[m, k] = gy[m, n] @ W
void grad_input(const LayoutView& l, const float* gy, int64_t m, int64_t n, const float* values, float* gx,
                int64_t k, int64_t workers, const ParallelFn& parallel_for);

// gv = packed(gy^T @ x); `workers` sizes the work items.
void grad_values(const LayoutView& l, const float* gy, const float* x, int64_t m, int64_t n, int64_t k, float* gv,
                 int64_t workers, const ParallelFn& parallel_for);

}  // namespace tilesparse::core::avx512
