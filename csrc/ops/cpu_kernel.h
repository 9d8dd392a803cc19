// Which CPU kernel family runs a float32 operator: the fused kernels of the
// widest ISA the CPU has (avx512, then avx2), or the generic ones (other
// dtypes always). TILESPARSE_CPU_KERNEL (read on every call, so tests and
// benchmarks can switch) forces one; naming a kernel this CPU cannot run is
// an error, never a silent fallback. Shared by tw_linear (every family) and
// the TEW residue (AVX2 kernels wherever the choice is avx2 or avx512), with
// the parallel-for both hand to the torch-free fused kernels.
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace tilesparse {

enum class CpuKernel { kGeneric, kAvx2, kAvx512 };

const char* kernel_name(CpuKernel k);

// Kernels this CPU and build can run, widest first ("generic" always last).
std::vector<std::string> supported_kernels();

// TILESPARSE_CPU_KERNEL, validated, or the widest supported kernel.
CpuKernel selected_kernel();

bool is_16bit(at::ScalarType dtype);

// The kernel a tensor of `dtype` runs on (the fused kernels are float32 only);
// validates the variable for every dtype.
CpuKernel kernel_for(at::ScalarType dtype);

// at::parallel_for (grain 1) as the fused kernels' ParallelFn
// (core::avx2::ParallelFn, core::avx512::ParallelFn: this same type).
using AtenParallelFn = std::function<void(int64_t, int64_t, const std::function<void(int64_t, int64_t)>&)>;
const AtenParallelFn& aten_parallel_for();

// at::parallel_for (grain 1) as the generic cores' ParallelFor template argument.
struct AtenParallelFor {
  template <typename F>
  void operator()(int64_t begin, int64_t end, F&& fn) const {
    at::parallel_for(begin, end, /*grain_size=*/1, fn);
  }
};

}  // namespace tilesparse
