// ATen-side helpers shared by the CUDA operators: layout validation on the
// device (with a cache, so a layout is checked once, not on every call),
// the kernels' view of a layout, and small launch utilities.
//
// Bounds safety has two layers:
//  1. Every kernel clamps every index it reads through (tw_device.cuh), so no
//     layout, however malformed, makes a kernel access memory out of bounds.
//  2. check_layout_cuda() raises the CPU operators' error ("invalid tile
//     layout: ...", same text) for a malformed layout: two small kernels check
//     the indices, one device->host copy (a sync) reads the verdict, and on a
//     failure the indices are copied to the host and core::validate_layout
//     names the offending entry. A layout that passed is remembered (keyed by
//     the index tensors' identity, data pointer and version counter; weak
//     references, so a freed tensor never matches), so steady-state calls do
//     not sync. Inside CUDA-graph capture no check runs (layer 1 still holds).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../ops/checks.h"
#include "tw_device.cuh"

namespace tilesparse::cuda {

// What the sm90 kernels need of a validated layout on the host (kept counts
// for the tensor maps, the slice table) and what it derives from it, cached
// with the layout: built on first use (one device->host copy of the indices,
// like the validation's), then shared by every call with that layout.
struct Sm90LayoutCache {
  std::mutex mutex;  // guards everything below
  bool built = false;
  bool slots_aligned = false;        // every tile's slots % 8 == 0 (TMA row strides)
  bool unit16 = false;               // every kept run 16 consecutive features (design U, sm90_unit16_runs)
  bool cols_runs = false;            // every slice's outputs consecutive columns (sm90_slice_cols_runs)
  std::vector<int32_t> row_offsets;  // host copies
  std::vector<int32_t> kept;         // kept features per tile (padding excluded)
  std::vector<int32_t> slots;        // slots per tile (kept + padding)
  std::vector<int32_t> table;        // the slice table (host copy)
  at::Tensor slices;                 // int32, device: the slice table (sm90_slice_table)
  int gv_cluster = 0;                // grad_values: sm90_gv_cluster (0: not yet chosen)
  at::Tensor gv_entries;             // int32, device: sm90_gv_item_table for gv_cluster
  int64_t gv_entries_count = 0;      // its (slot, group) pairs
  at::Tensor bounds;                 // int32, device: chunk bounds of 64-feature chunks, once computed
  at::Tensor maps;                   // uint8, device: [num_tiles] CUtensorMap of the values at maps_values
  const void* maps_values = nullptr; // the values pointer the maps encode (re-encoded when it changes)
  int64_t maps_nv = -1;
  at::Tensor counters;               // int32, device: K-split arrival counters, zero between launches ...
  cudaStream_t counters_stream = nullptr;  // ... of launches on this stream (another stream gets its own)
};

struct LayoutInfo {
  bool known = false;      // false: not checked (graph capture); sizes below unknown
  int64_t num_values = 0;  // sum_t g_t * slots_t (the length of values)
  int64_t max_rows = 0;    // max_t slots_t
  int64_t num_kept = 0;    // sum_t g_t * kept_t (padding excluded)
  at::Tensor fwd_bounds;   // the v2 forward's chunk bounds, once computed for this layout (cached with it)
  std::shared_ptr<Sm90LayoutCache> sm90;  // known layouts: the sm90 forward's host side (shared with the cache)
};

// Checks the layout against (n, k) as core::validate_layout does on the CPU,
// raising ValueError "invalid tile layout: ..." when it is malformed.
LayoutInfo check_layout_cuda(const LayoutArgs& l, int64_t n, int64_t k);

// Remembers the v2 forward's chunk bounds with the layout's cache entry, so
// later calls (inference) skip the bounds kernel: one launch less per call.
void cache_fwd_bounds(const LayoutArgs& l, int64_t n, int64_t k, const at::Tensor& bounds);

inline DevLayout dev_layout(const LayoutArgs& l) {
  return DevLayout{l.cols.data_ptr<int32_t>(), l.row_offsets.data_ptr<int32_t>(), l.rows.data_ptr<int32_t>(),
                   l.cols.numel(), l.row_offsets.numel() - 1, l.rows.numel(), l.view.tile};
}

// t as [m, last] with unit stride along last (a view when possible);
// *ld receives the row stride.
inline at::Tensor rows_view(const at::Tensor& t, int64_t m, int64_t last, int64_t* ld) {
  at::Tensor t2 = t.reshape({m, last});
  if (last > 1 && t2.stride(1) != 1) t2 = t2.contiguous();
  if (m > 1 && t2.stride(0) < 0) t2 = t2.contiguous();
  *ld = m > 1 ? t2.stride(0) : last;
  return t2;
}

// Base 16-byte aligned and rows of whole 16-byte units (2-byte elements).
inline bool vec16_ok(const void* p, int64_t ld) {
  return (reinterpret_cast<uintptr_t>(p) % 16) == 0 && (ld % 8) == 0;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int max_smem_optin() {
  return static_cast<int>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
}
inline int num_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// Raises a kernel's dynamic shared-memory limit past the default 48 KiB, once
// per (kernel, device) and size: cudaFuncSetAttribute is not free, and the
// launchers call this before every launch.
inline void allow_smem(const void* kernel, int bytes) {
  TORCH_CHECK(bytes <= max_smem_optin(), "tilesparse: kernel needs ", bytes,
              " bytes of shared memory, the device allows ", max_smem_optin());
  if (bytes <= 48 * 1024) return;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> raised;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  int& done = raised[{kernel, device}];
  if (bytes <= done) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done = bytes;
}

// cudaLaunchConfig_t of a cluster of cluster_x CTAs along x (the cluster-
// dimension attribute lives in this object: not copyable). CudaLaunch::cluster
// launches with it; max_active_clusters (sm90_layout_cache.cuh) queries it.
struct ClusterLaunchConfig {
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t config = {};
  ClusterLaunchConfig(dim3 grid, dim3 block, int cluster_x, int smem, cudaStream_t stream) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = static_cast<unsigned>(cluster_x);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = static_cast<size_t>(smem);
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
  }
  ClusterLaunchConfig(const ClusterLaunchConfig&) = delete;
  ClusterLaunchConfig& operator=(const ClusterLaunchConfig&) = delete;
};

// The launch callable of the torch-free launchers (tw_*_launch.cuh): the
// current stream, the shared-memory opt-in, and a launch check after each;
// cluster() launches clusters of cluster_x blocks along x (cudaLaunchKernelEx
// with the cluster-dimension attribute: the sm90 kernels).
struct CudaLaunch {
  cudaStream_t stream;
  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), dim3 grid, dim3 block, int smem, A&&... args) const {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    allow_smem(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename... P, typename... A>
  void cluster(void (*kernel)(P...), dim3 grid, dim3 block, int cluster_x, int smem, A&&... args) const {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    TORCH_CHECK(cluster_x >= 1 && grid.x % cluster_x == 0, "tilesparse: grid.x ", grid.x,
                " is not a multiple of the cluster size ", cluster_x);
    allow_smem(reinterpret_cast<const void*>(kernel), smem);
    const ClusterLaunchConfig c(grid, block, cluster_x, smem, stream);
    C10_CUDA_CHECK(cudaLaunchKernelEx(&c.config, kernel, std::forward<A>(args)...));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

inline DeviceCaps device_caps() {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  DeviceCaps caps{static_cast<int>(prop->sharedMemPerBlockOptin), prop->multiProcessorCount, prop->major, prop->minor};
  caps.l2_bytes = prop->l2CacheSize;
  return caps;
}


// A layout that keeps every weight without padding is the identity (cols =
// arange(N), every tile keeps rows = arange(K)), so its values are W itself,
// row-major [N, K]: the operators then run cuBLAS, as the CPU ones run BLAS.
// Only known once the layout was checked (not inside graph capture, where
// the kernels run).
inline bool keeps_everything(const LayoutInfo& info, int64_t n, int64_t k) {
  return info.known && n > 0 && k > 0 && info.num_values == n * k && info.num_kept == n * k;
}

// The values' checks of the CPU operators (dimension, device, dtype, count).
inline void check_values_cuda(const at::Tensor& values, const at::Tensor& ref, const LayoutInfo& info) {
  TS_CHECK_DIM(values, 1);
  TS_CHECK_SAME_DEVICE(values, ref);
  TORCH_CHECK_TYPE(values.scalar_type() == ref.scalar_type(), "values must have the dtype of ", "the input (",
                   ref.scalar_type(), "), got ", values.scalar_type());
  if (info.known) {
    TORCH_CHECK_VALUE(values.numel() == info.num_values, "values must have ", info.num_values,
                      " elements for this layout, got ", values.numel());
  }
}

}  // namespace tilesparse::cuda
