// The ATen side of Sm90LayoutCache (checks_cuda.cuh): filling it from a
// validated layout, shared by the sm_90a forward and grad_values operators.
// The torch-free work is sm90_layout.cuh's.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "checks_cuda.cuh"
#include "sm90_layout.cuh"

namespace tilesparse::cuda {

// The sm_90a kernel bodies exist only when the build targets 9.0a (setup.py
// defines TILESPARSE_HAS_SM90A then); without them they are traps, so no
// plan may pick them, even on a Hopper device.
#ifdef TILESPARSE_HAS_SM90A
inline constexpr bool kSm90aBuilt = true;
#else
inline constexpr bool kSm90aBuilt = false;
#endif

// Host copies of the indices (one synchronising copy per layout, as its
// validation), kept and slot counts, which designs apply, the slice table.
// The caller holds c.mutex.
inline void build_sm90_layout(const LayoutArgs& l, Sm90LayoutCache& c) {
  const at::Tensor ro = l.row_offsets.cpu(), rows = l.rows.cpu(), cols = l.cols.cpu();
  const int64_t nt = l.row_offsets.numel() - 1;
  c.row_offsets.assign(ro.data_ptr<int32_t>(), ro.data_ptr<int32_t>() + ro.numel());
  c.kept = sm90_kept_counts(c.row_offsets.data(), rows.data_ptr<int32_t>(), nt);
  c.slots.resize(static_cast<size_t>(std::max<int64_t>(nt, 0)));
  for (int64_t t = 0; t < nt; ++t) c.slots[t] = c.row_offsets[t + 1] - c.row_offsets[t];
  c.slots_aligned = sm90_slots_aligned(c.row_offsets.data(), nt);
  c.unit16 = sm90_unit16_runs(c.row_offsets.data(), rows.data_ptr<int32_t>(), c.kept.data(), nt);
  c.cols_runs = sm90_slice_cols_runs(cols.data_ptr<int32_t>(), cols.numel(), l.view.tile);
  c.table = sm90_slice_table(c.kept.data(), nt, l.view.tile, l.cols.numel());
  c.slices = at::empty({static_cast<int64_t>(c.table.size())}, l.cols.options().device(at::kCPU));
  std::copy(c.table.begin(), c.table.end(), c.slices.data_ptr<int32_t>());
  c.slices = c.slices.to(l.cols.device());
  c.built = true;
}

// grad_values' cluster size and work entries (sm90_gv_cluster,
// sm90_gv_item_table), once per layout. The caller holds c.mutex.
inline void ensure_sm90_gv_entries(const LayoutArgs& l, Sm90LayoutCache& c) {
  if (c.gv_cluster > 0) return;
  c.gv_cluster = sm90_gv_cluster(c.slots.data(), c.table, l.view.tile);
  const std::vector<int32_t> entries = sm90_gv_item_table(c.slots.data(), c.table, l.view.tile, c.gv_cluster);
  at::Tensor host = at::empty({std::max<int64_t>(1, static_cast<int64_t>(entries.size()))},
                              l.cols.options().device(at::kCPU));
  std::copy(entries.begin(), entries.end(), host.data_ptr<int32_t>());
  c.gv_entries = host.to(l.cols.device());
  c.gv_entries_count = static_cast<int64_t>(entries.size()) / 2;
}

// The per-tile tensor maps of `values` (re-encoded when the values pointer
// changes); false where the driver refuses one (the caller then plans without them).
inline bool ensure_tile_maps(const LayoutArgs& l, Sm90LayoutCache& c, const void* values, int64_t nv) {
  if (c.maps.defined() && c.maps_values == values && c.maps_nv == nv) return true;
  const int64_t nt = l.row_offsets.numel() - 1;
  std::vector<CUtensorMap> host(static_cast<size_t>(std::max<int64_t>(nt, 1)));
  if (!sm90_encode_tile_maps(host.data(), values, nv, c.row_offsets.data(), c.kept.data(), nt, l.view.tile,
                             l.cols.numel()))
    return false;
  at::Tensor bytes = at::empty({static_cast<int64_t>(host.size() * sizeof(CUtensorMap))},
                               l.cols.options().device(at::kCPU).dtype(at::kByte));
  std::memcpy(bytes.data_ptr(), host.data(), host.size() * sizeof(CUtensorMap));
  c.maps = bytes.to(l.cols.device());  // the caching allocator's blocks are 512-byte aligned: maps need 64
  c.maps_values = values;
  c.maps_nv = nv;
  return true;
}

// Clusters of `c` CTAs of `kernel` resident at once on the current device
// (cudaOccupancyMaxActiveClusters: a cluster lives in one GPC, so this can
// be below num_sms / c); 0 where the query fails (the plans then assume
// num_sms / c).
template <typename Kernel>
int max_active_clusters(Kernel kernel, int c, int threads, int smem) {
  allow_smem(reinterpret_cast<const void*>(kernel), smem);
  const ClusterLaunchConfig cfg(dim3(static_cast<unsigned>(c)), dim3(static_cast<unsigned>(threads)), c, smem, nullptr);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg.config) != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky: clear it for the next launch check
    clusters = 0;
  }
  return clusters;
}

// caps.sm90_clusters for clusters of 1, 2, 4 CTAs of one kernel (`name`):
// query() once per device and kernel, then remembered.
template <typename Query>
void set_resident_clusters(DeviceCaps& caps, const char* name, Query&& query) {
  static std::mutex mutex;
  static std::map<std::pair<int, std::string>, std::array<int, 3>> known;  // by (device, kernel)
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  auto it = known.find({device, name});
  if (it == known.end()) it = known.emplace(std::make_pair(device, std::string(name)), query()).first;
  for (int i = 0; i < 3; ++i) caps.sm90_clusters[i] = it->second[i];
}

}  // namespace tilesparse::cuda
