// Host side of the sm90 TMA loads: cuTensorMapEncodeTiled, reached through
// the runtime's driver entry point, so that the extension does not link
// libcuda (torch loads it; the entry point finds the one in the process).
// Torch-free: the ATen headers (a minute and a half of nvcc time) are not
// needed here.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <cstring>

#include "sm90_ptx.cuh"

namespace tilesparse::cuda::sm90 {
namespace {

// The driver's cuTensorMapEncodeTiled (the 12.0 ABI), looked up once; null
// where the driver does not have it.
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    // cudaGetDriverEntryPoint without a version is deprecated from 12.5 on: ask for the 12.0 ABI explicitly
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault, &found);
#endif
    if (e != cudaSuccess || found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();  // not sticky: leave no error behind for the next launch check
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

CUtensorMapSwizzle driver_swizzle(Swizzle s) {
  switch (s) {
    case Swizzle::k128B: return CU_TENSOR_MAP_SWIZZLE_128B;
    case Swizzle::k64B: return CU_TENSOR_MAP_SWIZZLE_64B;
    case Swizzle::k32B: return CU_TENSOR_MAP_SWIZZLE_32B;
    case Swizzle::kNone: break;
  }
  return CU_TENSOR_MAP_SWIZZLE_NONE;
}

}  // namespace

bool encode_tensor_map_2d(CUtensorMap* map, const void* base, uint64_t dim0, uint64_t dim1, uint64_t row_stride_bytes,
                          uint32_t box0, uint32_t box1, Swizzle swizzle) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = encode_tiled();
  if (encode == nullptr || map == nullptr) return false;
  const cuuint64_t dims[2] = {dim0, dim1};
  const cuuint64_t strides[1] = {row_stride_bytes};  // of dim1; dim0 is contiguous
  const cuuint32_t box[2] = {box0, box1};
  const cuuint32_t element_strides[2] = {1, 1};
  CUtensorMap m;
  // 16-bit elements as UINT16: TMA copies bits (fp16 and bf16 alike); OOB_FILL_NONE fills zeros.
  const CUresult r = encode(&m, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, const_cast<void*>(base), dims, strides, box,
                            element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, driver_swizzle(swizzle),
                            CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return false;
  std::memcpy(static_cast<void*>(map), &m, sizeof m);
  return true;
}

}  // namespace tilesparse::cuda::sm90
