// The packed format's definition (docs/format.md) written as naive loops:
// the independent reference that the Catch2 tests of the CPU kernels
// (tests/cpp) and of the emulated CUDA kernels (tests/cuda_emulation) share.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/tile_layout.h"

namespace tilesparse::format_reference {

// Slot r of tile t is padding when it repeats the slot before it.
inline bool is_padding(const core::OwnedLayout& l, int64_t t, int64_t r) {
  return r > 0 && l.rows[l.row_offsets[t] + r] == l.rows[l.row_offsets[t] + r - 1];
}

// Calls f(value index, dense index, padding?) for every slot of every tile.
template <typename F>
void for_each_slot(const core::OwnedLayout& l, int64_t k, int64_t tile, F&& f) {
  const int64_t num_tiles = static_cast<int64_t>(l.row_offsets.size()) - 1;
  for (int64_t t = 0; t < num_tiles; ++t) {
    const int64_t g = std::min<int64_t>(tile, static_cast<int64_t>(l.cols.size()) - t * tile);
    const int64_t kt = l.row_offsets[t + 1] - l.row_offsets[t];
    for (int64_t j = 0; j < g; ++j)
      for (int64_t r = 0; r < kt; ++r)
        f(tile * l.row_offsets[t] + j * kt + r, static_cast<int64_t>(l.cols[t * tile + j]) * k + l.rows[l.row_offsets[t] + r],
          is_padding(l, t, r));
  }
}

// Dense W[n, k] (zeros where pruned) of packed values; padding slots are not weights.
template <typename V>
std::vector<double> dense_weight(const core::OwnedLayout& l, int64_t n, int64_t k, int64_t tile, const V& values) {
  std::vector<double> w(n * k, 0.0);
  for_each_slot(l, k, tile, [&](int64_t vi, int64_t di, bool pad) {
    if (!pad) w[di] = static_cast<double>(values[vi]);
  });
  return w;
}

// Packed values of a dense [n, k] matrix (zero in padding slots).
inline std::vector<double> packed(const core::OwnedLayout& l, int64_t k, int64_t tile, const std::vector<double>& dense) {
  std::vector<double> v(core::num_values(l.view(tile)), 0.0);
  for_each_slot(l, k, tile, [&](int64_t vi, int64_t di, bool pad) { v[vi] = pad ? 0.0 : dense[di]; });
  return v;
}

}  // namespace tilesparse::format_reference
