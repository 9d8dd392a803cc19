// Host side of the sm_90a paths, torch-free: what the kernels need to know
// of a layout on the host (kept counts, the slice table, which designs
// apply, grad_values' work items). The CUDA operators cache these with the
// validated layout (Sm90LayoutCache); the emulation tests build them through
// the same functions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tw_fwd_sm90_kernels.cuh"

namespace tilesparse::cuda {

// Kept features per tile: its slots minus the trailing padding slots, which
// repeat the last kept feature (docs/format.md). Host copies of the layout.
inline std::vector<int32_t> sm90_kept_counts(const int32_t* row_offsets, const int32_t* rows, int64_t num_tiles) {
  std::vector<int32_t> kept(static_cast<size_t>(num_tiles), 0);
  for (int64_t t = 0; t < num_tiles; ++t) {
    const int32_t lo = row_offsets[t], kt = row_offsets[t + 1] - lo;
    int32_t kr = kt;
    while (kr > 1 && rows[lo + kr - 1] == rows[lo + kr - 2]) --kr;
    kept[static_cast<size_t>(t)] = kr;
  }
  return kept;
}

// Every tile's slot count a multiple of 8: rows of V_t are whole 16-byte
// units, as a TMA row stride must be (layouts of pad % 8 == 0).
inline bool sm90_slots_aligned(const int32_t* row_offsets, int64_t num_tiles) {
  for (int64_t t = 0; t < num_tiles; ++t)
    if ((row_offsets[t + 1] - row_offsets[t]) % 8 != 0) return false;
  return true;
}

// The slice table: every 128-output slice that has outputs, as
// t * (tile / 128) + j, by kept count descending (ties by id), so that the 2C
// slices that share one x stream (one cluster) keep similar counts.
inline std::vector<int32_t> sm90_slice_table(const int32_t* kept, int64_t num_tiles, int64_t tile, int64_t num_cols) {
  std::vector<int32_t> table;
  if (tile % sm90_fwd::kSliceN != 0) return table;  // no sm90 (the plan needs tile % 128 == 0)
  const int64_t spt = tile / sm90_fwd::kSliceN;
  for (int64_t t = 0; t < num_tiles; ++t) {
    const int64_t g = std::min<int64_t>(tile, num_cols - t * tile);
    for (int64_t j = 0; j < spt && j * sm90_fwd::kSliceN < g; ++j) table.push_back(static_cast<int32_t>(t * spt + j));
  }
  std::stable_sort(table.begin(), table.end(),
                   [&](int32_t a, int32_t b) { return kept[a / spt] > kept[b / spt]; });
  return table;
}

// Every tile's kept features are runs of 16 consecutive features (any start):
// design U's A operand of a k16 step is then one TMA box. Host copies.
inline bool sm90_unit16_runs(const int32_t* row_offsets, const int32_t* rows, const int32_t* kept, int64_t num_tiles) {
  for (int64_t t = 0; t < num_tiles; ++t) {
    const int32_t lo = row_offsets[t], kr = kept[t];
    if (kr % sm90_fwd::kStepK != 0) return false;
    for (int32_t q = 0; q < kr; q += sm90_fwd::kStepK)
      for (int32_t i = 1; i < sm90_fwd::kStepK; ++i)
        if (rows[lo + q + i] != rows[lo + q] + i) return false;
  }
  return true;
}

// Every slice's outputs are consecutive columns (cols_t[j0 + i] = cols_t[j0]
// + i for its g outputs): grad_values' gy operand of a slice is then one TMA
// box. Always so for 1-D TW; 2-D TW layouts with pruned outputs may not be.
inline bool sm90_slice_cols_runs(const int32_t* cols, int64_t num_cols, int64_t tile) {
  if (tile % sm90_fwd::kSliceN != 0) return false;
  for (int64_t j0 = 0; j0 < num_cols; j0 += sm90_fwd::kSliceN) {
    const int64_t end = std::min<int64_t>(num_cols, j0 + sm90_fwd::kSliceN);
    for (int64_t j = j0 + 1; j < end; ++j)
      if (cols[j] != cols[j0] + (j - j0)) return false;
  }
  return true;
}

// The tensor maps of the values, one per tile (host array maps[num_tiles]):
// V_t is [g_t rows, kr_t positions] with row stride kpad_t elements. The
// map's dim0 is the kept count, not the slot count: padding slots (not
// weights; any value, NaN included) then arrive as TMA's zero fill, since
// B goes from TMA straight to wgmma with no pass through registers to mask
// them. Tiles without work get a zeroed map (never loaded). false: the
// driver refused one.
inline bool sm90_encode_tile_maps(CUtensorMap* maps, const void* values, int64_t nv, const int32_t* row_offsets,
                                  const int32_t* kept, int64_t num_tiles, int64_t tile, int64_t num_cols) {
  for (int64_t t = 0; t < num_tiles; ++t) {
    CUtensorMap& m = maps[t];
    std::memset(static_cast<void*>(&m), 0, sizeof(CUtensorMap));
    const int64_t kt = row_offsets[t + 1] - row_offsets[t], g = std::min<int64_t>(tile, num_cols - t * tile);
    const int64_t voff = tile * static_cast<int64_t>(row_offsets[t]);
    if (kt == 0 || g <= 0 || kept[t] == 0 || voff + g * kt > nv) continue;
    const void* base = static_cast<const uint16_t*>(values) + voff;
    if (!sm90::encode_tensor_map_2d(&m, base, static_cast<uint64_t>(kept[t]), static_cast<uint64_t>(g),
                                    static_cast<uint64_t>(kt) * 2, sm90_fwd::kStageK, sm90_fwd::kBoxRowsB,
                                    sm90::Swizzle::k128B))
      return false;
  }
  return true;
}

// grad_values on sm_90a (tw_gv_sm90u_kernels.cuh): a cluster of C CTAs
// covers C x 256 consecutive slots of one slice. The largest C in {4, 2}
// whose clusters' CTAs have slots to work on at least 85% of the time (the
// last group of a tile may be partial), else 1. slots[t]: the tile's slot
// count (kept + padding); table: the slice table.
inline int sm90_gv_cluster(const int32_t* slots, const std::vector<int32_t>& table, int64_t tile) {
  const int64_t spt = tile / sm90_fwd::kSliceN;
  for (int c : {4, 2}) {
    int64_t used = 0, held = 0;
    for (int32_t sid : table) {
      const int64_t blocks = (slots[sid / spt] + 255) / 256;
      used += blocks;
      held += (blocks + c - 1) / c * c;
    }
    if (held > 0 && 100 * used >= 85 * held) return c;
  }
  return 1;
}

// grad_values' work entries for clusters of C: (slice table slot, position
// group) for every group of C x 256 slots a slice has, the fullest first
// (longest items first: the persistent grid's last round is the short
// ones). Flattened pairs.
inline std::vector<int32_t> sm90_gv_item_table(const int32_t* slots, const std::vector<int32_t>& table, int64_t tile,
                                               int c) {
  const int64_t spt = tile / sm90_fwd::kSliceN, span = 256 * static_cast<int64_t>(c);
  struct Entry {
    int32_t slot, group;
    int64_t size;
  };
  std::vector<Entry> entries;
  for (size_t i = 0; i < table.size(); ++i) {
    const int64_t kt = slots[table[i] / spt];
    for (int64_t g = 0; g * span < kt; ++g)
      entries.push_back({static_cast<int32_t>(i), static_cast<int32_t>(g), std::min<int64_t>(span, kt - g * span)});
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.size > b.size; });
  std::vector<int32_t> out;
  out.reserve(2 * entries.size());
  for (const Entry& e : entries) {
    out.push_back(e.slot);
    out.push_back(e.group);
  }
  return out;
}

}  // namespace tilesparse::cuda
