#include "tile_layout.h"

#include <limits>
#include <sstream>

namespace tilesparse::core {

std::string build_layout(const bool* mask, int64_t n, int64_t k, int64_t tile, int64_t pad, OwnedLayout& out) {
  std::ostringstream err;
  if (tile <= 0) {
    err << "tile must be positive, got " << tile;
    return err.str();
  }
  if (pad <= 0) {
    err << "pad must be positive, got " << pad;
    return err.str();
  }
  if (n > std::numeric_limits<int32_t>::max() || k > std::numeric_limits<int32_t>::max()) {
    err << "mask of shape [" << n << ", " << k << "] exceeds the int32 index range";
    return err.str();
  }
  out.cols.clear();
  out.rows.clear();
  out.row_offsets.assign(1, 0);
  for (int64_t c = 0; c < n; ++c) {
    const bool* row = mask + c * k;
    for (int64_t r = 0; r < k; ++r)
      if (row[r]) {
        out.cols.push_back(static_cast<int32_t>(c));
        break;
      }
  }
  const int64_t nc = static_cast<int64_t>(out.cols.size());
  for (int64_t t = 0; t * tile < nc; ++t) {
    const bool* first = mask + static_cast<int64_t>(out.cols[t * tile]) * k;
    for (int64_t r = 0; r < k; ++r)
      if (first[r]) out.rows.push_back(static_cast<int32_t>(r));
    const int64_t g = std::min(tile, nc - t * tile);
    for (int64_t j = 1; j < g; ++j) {
      const bool* other = mask + static_cast<int64_t>(out.cols[t * tile + j]) * k;
      for (int64_t r = 0; r < k; ++r)
        if (other[r] != first[r]) {
          err << "mask is not tile-wise for tile=" << tile << ": output feature " << out.cols[t * tile + j]
              << " keeps a different set of input features than output feature " << out.cols[t * tile]
              << " of the same tile " << t << " (first difference at input feature " << r << ")";
          return err.str();
        }
    }
    const size_t kept = out.rows.size() - static_cast<size_t>(out.row_offsets.back());
    if (kept > 0)
      while ((out.rows.size() - static_cast<size_t>(out.row_offsets.back())) % static_cast<size_t>(pad) != 0)
        out.rows.push_back(out.rows.back());
    if (out.rows.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      err << "layout has more kept rows than the int32 index range";
      return err.str();
    }
    out.row_offsets.push_back(static_cast<int32_t>(out.rows.size()));
  }
  return err.str();
}

std::string validate_layout(const LayoutView& l, int64_t n, int64_t k) {
  std::ostringstream err;
  if (l.tile <= 0) {
    err << "tile must be positive, got " << l.tile;
  } else if (l.num_cols > n) {
    err << "cols has " << l.num_cols << " entries but out_features is " << n;
  } else if (l.num_tiles != (l.num_cols + l.tile - 1) / l.tile) {
    err << "row_offsets must have ceil(len(cols) / tile) + 1 = " << (l.num_cols + l.tile - 1) / l.tile + 1
        << " entries, got " << l.num_tiles + 1;
  } else if (l.row_offsets[0] != 0) {
    err << "row_offsets[0] must be 0, got " << l.row_offsets[0];
  } else if (l.row_offsets[l.num_tiles] != l.num_rows) {
    err << "row_offsets[-1] must equal len(rows) = " << l.num_rows << ", got " << l.row_offsets[l.num_tiles];
  }
  if (!err.str().empty()) return err.str();
  for (int64_t j = 0; j < l.num_cols; ++j) {
    const int32_t c = l.cols[j];
    if (c < 0 || c >= n) {
      err << "cols[" << j << "] = " << c << " is out of range [0, " << n << ")";
      return err.str();
    }
    if (j > 0 && c <= l.cols[j - 1]) {
      err << "cols must be strictly increasing, but cols[" << j << "] = " << c << " follows " << l.cols[j - 1];
      return err.str();
    }
  }
  // All of row_offsets first, so a bad offset is reported as such (not as
  // unsorted rows of a tile whose range it corrupts).
  for (int64_t t = 0; t < l.num_tiles; ++t) {
    const int32_t lo = l.row_offsets[t], hi = l.row_offsets[t + 1];
    if (hi < lo || hi > l.num_rows) {
      err << "row_offsets must be non-decreasing within [0, len(rows)], but row_offsets[" << t << ":" << t + 2
          << "] = [" << lo << ", " << hi << "]";
      return err.str();
    }
  }
  // Within a tile: strictly increasing kept features (so at most k of them),
  // then optionally padding that repeats the last one, and nothing after it.
  for (int64_t t = 0; t < l.num_tiles; ++t) {
    const int32_t lo = l.row_offsets[t], hi = l.row_offsets[t + 1];
    int32_t pad_from = -1;
    for (int32_t i = lo; i < hi; ++i) {
      const int32_t r = l.rows[i];
      if (r < 0 || r >= k) {
        err << "rows[" << i << "] = " << r << " is out of range [0, " << k << ")";
        return err.str();
      }
      if (i == lo || r == l.rows[i - 1]) {
        if (i > lo && pad_from < 0) pad_from = i;
        continue;
      }
      if (r < l.rows[i - 1]) {
        err << "rows must be strictly increasing within a tile, but rows[" << i << "] = " << r << " follows "
            << l.rows[i - 1] << " in tile " << t;
        return err.str();
      }
      if (pad_from >= 0) {
        err << "rows must be strictly increasing within a tile, but rows[" << pad_from << "] = " << l.rows[pad_from]
            << " repeats the entry before it and is followed by rows[" << i << "] = " << r << " in tile " << t
            << " (only padding at a tile's end may repeat its last kept feature)";
        return err.str();
      }
    }
  }
  return err.str();
}

int64_t num_values(const LayoutView& l) {
  int64_t total = 0;
  for (int64_t t = 0; t < l.num_tiles; ++t) total += l.tile_width(t) * l.tile_rows(t);
  return total;
}

int64_t num_kept(const LayoutView& l) {
  int64_t total = 0;
  for (int64_t t = 0; t < l.num_tiles; ++t) total += l.tile_width(t) * l.tile_kept(t);
  return total;
}

}  // namespace tilesparse::core
