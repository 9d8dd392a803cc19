// The packed tile format (docs/format.md), torch-free: building it from a
// mask, validating untrusted indices, and moving values between the dense
// [n, k] weight and the condensed per-tile blocks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tilesparse::core {

// Borrowed view of a layout's int32 index arrays.
struct LayoutView {
  const int32_t* cols;
  int64_t num_cols;
  const int32_t* row_offsets;  // num_tiles + 1 entries
  int64_t num_tiles;
  const int32_t* rows;
  int64_t num_rows;
  int64_t tile;

  int64_t tile_width(int64_t t) const {
    const int64_t w = num_cols - t * tile;
    return w < tile ? w : tile;
  }
  // Slots of tile t: its kept input features plus trailing padding entries;
  // the row length (leading dimension) of its [g, slots] values block.
  int64_t tile_rows(int64_t t) const { return row_offsets[t + 1] - row_offsets[t]; }
  // Kept input features of tile t: its slots minus the padding, which
  // repeats the last kept feature (kept features are strictly increasing, so
  // a repeat can only be padding). Kernels reduce over these only: padding
  // slots are not weights (their values are ignored and get zero gradient).
  int64_t tile_kept(int64_t t) const {
    const int32_t* r = rows + row_offsets[t];
    int64_t n = tile_rows(t);
    while (n > 1 && r[n - 1] == r[n - 2]) --n;
    return n;
  }
  int64_t value_offset(int64_t t) const { return tile * row_offsets[t]; }
  // cols of tile t form one contiguous range (always true for 1-D TW).
  bool cols_contiguous(int64_t t) const {
    const int64_t g = tile_width(t);
    return g == 0 || cols[t * tile + g - 1] - cols[t * tile] == g - 1;
  }
};

struct OwnedLayout {
  std::vector<int32_t> cols;
  std::vector<int32_t> row_offsets;
  std::vector<int32_t> rows;
  LayoutView view(int64_t tile) const {
    return LayoutView{cols.data(), static_cast<int64_t>(cols.size()), row_offsets.data(),
                      static_cast<int64_t>(row_offsets.size()) - 1, rows.data(),
                      static_cast<int64_t>(rows.size()), tile};
  }
};

// Builds the layout of a tile-wise mask ([n, k] row-major, true = kept).
// Kept output features are those with any kept weight; they are grouped in
// order into tiles of `tile`, and every feature of a tile must keep the same
// input features. Each tile's slots are padded to a multiple of `pad` (>= 1)
// by repeating its last kept feature, so every values block starts and every
// row of it runs on a multiple of `pad` elements (16-byte copies on the GPU
// for pad = 8 and 16-bit values). Returns an error message (empty on success).
std::string build_layout(const bool* mask, int64_t n, int64_t k, int64_t tile, int64_t pad, OwnedLayout& out);

// Checks untrusted indices against (n, k): sizes, ranges, monotonicity. An
// empty result means every index is safe to read through.
std::string validate_layout(const LayoutView& l, int64_t n, int64_t k);

// sum_t g_t * slots_t (the length of values) for a validated layout.
int64_t num_values(const LayoutView& l);
// sum_t g_t * kept_t: the weights the layout keeps (padding excluded).
int64_t num_kept(const LayoutView& l);

// values[tile t block] <- weight[cols_t, rows_t] (zero in padding slots);
// weight row-major [n, k].
template <typename T>
void pack(const LayoutView& l, const T* weight, int64_t k, T* values) {
  for (int64_t t = 0; t < l.num_tiles; ++t) {
    const int64_t g = l.tile_width(t), kt = l.tile_rows(t), kr = l.tile_kept(t);
    const int32_t* rows = l.rows + l.row_offsets[t];
    T* block = values + l.value_offset(t);
    for (int64_t j = 0; j < g; ++j) {
      const T* w = weight + static_cast<int64_t>(l.cols[t * l.tile + j]) * k;
      for (int64_t r = 0; r < kr; ++r) block[j * kt + r] = w[rows[r]];
      for (int64_t r = kr; r < kt; ++r) block[j * kt + r] = T(0);
    }
  }
}

// dense[cols_t, rows_t] <- values, padding slots ignored (dense must be
// zero-filled [n, k]).
template <typename T>
void unpack(const LayoutView& l, const T* values, int64_t k, T* dense) {
  for (int64_t t = 0; t < l.num_tiles; ++t) {
    const int64_t g = l.tile_width(t), kt = l.tile_rows(t), kr = l.tile_kept(t);
    const int32_t* rows = l.rows + l.row_offsets[t];
    const T* block = values + l.value_offset(t);
    for (int64_t j = 0; j < g; ++j) {
      T* w = dense + static_cast<int64_t>(l.cols[t * l.tile + j]) * k;
      for (int64_t r = 0; r < kr; ++r) w[rows[r]] = block[j * kt + r];
    }
  }
}

// Zeroes the padding slots of a values array (gradients of non-weights).
template <typename T>
void zero_padding(const LayoutView& l, T* values) {
  for (int64_t t = 0; t < l.num_tiles; ++t) {
    const int64_t g = l.tile_width(t), kt = l.tile_rows(t), kr = l.tile_kept(t);
    if (kr == kt) continue;
    T* block = values + l.value_offset(t);
    for (int64_t j = 0; j < g; ++j)
      for (int64_t r = kr; r < kt; ++r) block[j * kt + r] = T(0);
  }
}

}  // namespace tilesparse::core
