// Kernel choice of the CPU operators (cpu_kernel.h).
#include "cpu_kernel.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <cstdlib>
#include <type_traits>

#include "../core/tw_linear_avx2.h"
#include "../core/tw_linear_avx512.h"

namespace tilesparse {

const char* kernel_name(CpuKernel k) {
  switch (k) {
    case CpuKernel::kAvx512: return "avx512";
    case CpuKernel::kAvx2: return "avx2";
    default: return "generic";
  }
}

namespace {

bool kernel_supported(CpuKernel k) {
  switch (k) {
    case CpuKernel::kAvx512: return core::avx512::available();
    case CpuKernel::kAvx2: return core::avx2::available();
    default: return true;
  }
}

std::string cpu_features() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  auto yes = [](bool b) { return b ? "yes" : "no"; };
  return std::string("avx512f=") + yes(__builtin_cpu_supports("avx512f")) + ", avx2=" +
         yes(__builtin_cpu_supports("avx2")) + ", fma=" + yes(__builtin_cpu_supports("fma"));
#else
  return "not an x86-64 build";
#endif
}

}  // namespace

std::vector<std::string> supported_kernels() {
  std::vector<std::string> out;
  for (CpuKernel k : {CpuKernel::kAvx512, CpuKernel::kAvx2, CpuKernel::kGeneric})
    if (kernel_supported(k)) out.emplace_back(kernel_name(k));
  return out;
}

CpuKernel selected_kernel() {
  const char* env = std::getenv("TILESPARSE_CPU_KERNEL");
  const std::string choice = env ? env : "";
  if (choice.empty() || choice == "auto") {
    for (CpuKernel k : {CpuKernel::kAvx512, CpuKernel::kAvx2})
      if (kernel_supported(k)) return k;
    return CpuKernel::kGeneric;
  }
  for (CpuKernel k : {CpuKernel::kAvx512, CpuKernel::kAvx2, CpuKernel::kGeneric}) {
    if (choice != kernel_name(k)) continue;
    TORCH_CHECK(kernel_supported(k), "TILESPARSE_CPU_KERNEL=", choice, " names a kernel this CPU cannot run (",
                cpu_features(), "); supported here: ", c10::Join(", ", supported_kernels()),
                ". Unset TILESPARSE_CPU_KERNEL to pick the best one.");
    return k;
  }
  TORCH_CHECK_VALUE(false, "TILESPARSE_CPU_KERNEL must be one of avx512, avx2, generic or auto (or unset), got '",
                    choice, "'");
  return CpuKernel::kGeneric;
}

bool is_16bit(at::ScalarType dtype) { return dtype == at::kHalf || dtype == at::kBFloat16; }

CpuKernel kernel_for(at::ScalarType dtype) {
  const CpuKernel k = selected_kernel();  // validates the variable for every dtype
  return dtype == at::kFloat ? k : CpuKernel::kGeneric;
}

static_assert(std::is_same_v<AtenParallelFn, core::avx2::ParallelFn> &&
                  std::is_same_v<AtenParallelFn, core::avx512::ParallelFn>,
              "aten_parallel_for serves both fused kernel families");

const AtenParallelFn& aten_parallel_for() {
  static const AtenParallelFn fn = [](int64_t b, int64_t e, const std::function<void(int64_t, int64_t)>& f) {
    at::parallel_for(b, e, 1, f);
  };
  return fn;
}

}  // namespace tilesparse
