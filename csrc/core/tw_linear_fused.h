// The ISA-independent half of the fused CPU kernels (tw_linear_avx512.cpp,
// tw_linear_avx2.cpp): L2-sized row blocking, the output descriptor of a
// micro-kernel call, and the forward's driver over packed weight panels.
// Each ISA file supplies its register tile (FR rows x FW outputs), its
// reduction chunk FKC and its micro-kernel; nothing here needs the ISA, so
// the driver is compiled for any CPU and only calls into the target code.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "tile_layout.h"

namespace tilesparse::core::fused {

// Per-core L2 size from the OS (glibc reads CPUID), `fallback` when unknown.
inline int64_t l2_cache_bytes(int64_t fallback) {
  const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return v >= (64 << 10) ? static_cast<int64_t>(v) : fallback;
}

// Row blocks (a multiple of fr rows) whose slice of the row-major inputs,
// row_floats per row, fills ~3/4 of L2 while every tile streams past (bigger
// blocks stream the packed weight from L3 fewer times). Their count is
// rounded up to a multiple of the workers, so each gets the same rows, but
// stays at most one block per fr rows. Returns {rows per block, blocks}.
inline std::pair<int64_t, int64_t> row_blocks(int64_t m, int64_t row_floats, int64_t workers, int64_t fr,
                                              int64_t l2_bytes) {
  const int64_t fit = std::max<int64_t>(1, l2_bytes * 3 / 4 / (4 * std::max<int64_t>(1, row_floats) * fr)) * fr;
  const int64_t mb_max = std::max<int64_t>(fr, std::min<int64_t>(fit, 40 * fr));
  int64_t blocks = (m + mb_max - 1) / mb_max;
  blocks = std::min((blocks + workers - 1) / workers * workers, (m + fr - 1) / fr);
  const int64_t mb = ((m + blocks - 1) / blocks + fr - 1) / fr * fr;
  return {mb, (m + mb - 1) / mb};
}

// Where a micro-kernel call writes its rows x width outputs.
struct FwdOut {
  float* y;             // contiguous outputs: &y[0, first output of the panel]; else y
  int64_t ldy;
  const int32_t* cols;  // null: contiguous outputs; else the panel's output features
  int64_t width;        // outputs in this panel (<= FW)
  const float* bias;    // contiguous: &bias[first output]; else bias; may be null
  bool accumulate;      // add to y (a later reduction chunk / another tile) instead of the bias
};

// y[m, n] = x[m, k] @ W^T + bias over packed panels: panel q of tile t is
// [kt][FW] floats at panels + offsets[t] + q * kt * FW (kt slots; the
// reduction covers the kt_kept ones). micro(rows, x, ldx, idx, len, b, ldb,
// out, row0, full_b) is the ISA's FR x FW register tile.
template <int64_t FR, int64_t FW, int64_t FKC, typename Micro, typename ParallelFor>
void forward_panels(const LayoutView& l, const float* panels, const std::vector<int64_t>& offsets, const float* x,
                    int64_t m, int64_t k, const float* bias, float* y, int64_t n, int64_t workers, int64_t l2_bytes,
                    const ParallelFor& parallel_for, Micro&& micro) {
  if (m <= 0 || n <= 0) return;
  workers = std::max<int64_t>(1, workers);
  // Output features no tile computes (pruned, or in a tile that keeps no
  // input feature) are bias only; every other feature is written by its tile.
  std::vector<uint8_t> covered(n, 0);
  for (int64_t t = 0; t < l.num_tiles; ++t)
    if (l.tile_rows(t) > 0)
      for (int64_t j = 0; j < l.tile_width(t); ++j) covered[l.cols[t * l.tile + j]] = 1;
  std::vector<int64_t> bias_only;
  for (int64_t c = 0; c < n; ++c)
    if (!covered[c]) bias_only.push_back(c);
  std::vector<uint8_t> contiguous(l.num_tiles);
  for (int64_t t = 0; t < l.num_tiles; ++t) contiguous[t] = l.cols_contiguous(t);

  // With fewer row blocks than workers the tiles are split too.
  const auto [mb, blocks] = row_blocks(m, k, workers, FR, l2_bytes);
  const int64_t groups = blocks >= workers ? 1 : std::min<int64_t>(std::max<int64_t>(1, l.num_tiles),
                                                                    (workers + blocks - 1) / blocks);
  parallel_for(0, blocks * groups, [&](int64_t w0, int64_t w1) {
    for (int64_t item = w0; item < w1; ++item) {
      const int64_t b = item / groups, grp = item % groups;
      const int64_t i0 = b * mb, h = std::min(mb, m - i0);
      const int64_t t0 = l.num_tiles * grp / groups, t1 = l.num_tiles * (grp + 1) / groups;
      if (grp == 0)
        for (int64_t i = 0; i < h; ++i)
          for (int64_t c : bias_only) y[(i0 + i) * n + c] = bias ? bias[c] : 0.f;
      for (int64_t t = t0; t < t1; ++t) {
        // panels are [kt][FW] (kt slots); the reduction skips the padding slots
        const int64_t g = l.tile_width(t), kt = l.tile_rows(t), kr = l.tile_kept(t);
        if (kr == 0) continue;
        const int32_t* rows = l.rows + l.row_offsets[t];
        const int32_t* cols = l.cols + t * l.tile;
        for (int64_t p0 = 0; p0 < kr; p0 += FKC) {
          const int64_t len = std::min(FKC, kr - p0);
          for (int64_t q = 0; q * FW < g; ++q) {
            const int64_t width = std::min(FW, g - q * FW);
            const float* bq = panels + offsets[t] + (q * kt + p0) * FW;
            const int64_t c0 = contiguous[t] ? cols[0] + q * FW : 0;  // offset of the panel's first output
            const FwdOut o{y + c0, n, contiguous[t] ? nullptr : cols + q * FW, width, bias ? bias + c0 : nullptr,
                           p0 > 0};
            for (int64_t i = 0; i < h; i += FR)
              micro(std::min(FR, h - i), x + (i0 + i) * k, k, rows + p0, len, bq, FW, o, i0 + i, true);
          }
        }
      }
    }
  });
}

}  // namespace tilesparse::core::fused
