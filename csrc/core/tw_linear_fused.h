// The ISA-independent half of the fused CPU kernels (tw_linear_avx512.cpp,
// tw_linear_avx2.cpp): L2-sized row blocking, the output descriptor of a
// micro-kernel call, and the drivers of the forward (over packed weight
// panels), grad_input (over packed panels of kept inputs) and grad_values
// (work items of kept inputs summed over m).
// Each ISA file supplies its register tile (FR rows x FW outputs), its
// reduction chunk FKC and its micro-kernel; nothing here needs the ISA, so
// the driver is compiled for any CPU and only calls into the target code.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
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

// Elements below which a packing pass runs on the calling thread: a small
// layer's pack takes microseconds, less than waking the workers (and on a
// shared machine a woken worker may wait a whole scheduler tick for a core).
constexpr int64_t kSerialPackElems = int64_t(1) << 17;

// parallel_for(begin, end, fn), or fn(begin, end) here when `serial`.
template <typename ParallelFor, typename Fn>
void maybe_parallel(bool serial, const ParallelFor& parallel_for, int64_t begin, int64_t end, Fn&& fn) {
  if (serial) fn(begin, end);
  else parallel_for(begin, end, fn);
}

// fn(begin, end) over [0, total) in units of `unit` items, handed out on
// demand to `workers` tasks: on a shared machine a worker may start a
// scheduler tick (4 ms) late or be preempted, and with a static split the
// others then wait for its share; here they take it.
// One worker (or one unit): fn(0, total) on the calling thread.
template <typename ParallelFor, typename Fn>
void dynamic_for(const ParallelFor& parallel_for, int64_t workers, int64_t total, int64_t unit, Fn&& fn) {
  if (total <= 0) return;
  unit = std::max<int64_t>(1, unit);
  const int64_t units = (total + unit - 1) / unit;
  workers = std::max<int64_t>(1, std::min(workers, units));
  if (workers == 1) {
    fn(0, total);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(0, workers, [&](int64_t, int64_t) {
    for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units;)
      fn(u * unit, std::min(total, (u + 1) * unit));
  });
}

// Multiply-adds below which a kernel runs on the calling thread: waking the
// workers costs tens of microseconds (hundreds on a loaded machine), more
// than such a call's arithmetic (decoding-sized m).
constexpr int64_t kSerialMacs = int64_t(1) << 21;

// The workers a call of m rows over this layout's kept weights should use.
inline int64_t workers_for(const LayoutView& l, int64_t m, int64_t workers) {
  return m * num_kept(l) < kSerialMacs ? 1 : std::max<int64_t>(1, workers);
}

// idx[0..w) is one run of consecutive features (duplicates, e.g. padding
// that repeats a tile's last kept feature, are not).
inline bool consecutive(const int32_t* idx, int64_t w) {
  for (int64_t j = 1; j < w; ++j)
    if (idx[j] != idx[0] + j) return false;
  return true;
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
  workers = workers_for(l, m, workers);
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
  dynamic_for(parallel_for, workers, blocks * groups, 1, [&](int64_t w0, int64_t w1) {
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

// grad_input's weight operand: for every tile, panels of FW kept inputs
// [g][FW] (zero past the tile's kept inputs): V_t's [g, kt] rows read in
// place are kt floats apart, often a multiple of 4 KiB (kt ~ 1024), so they
// share a few L1 sets, and every FR-row micro-tile re-reads them.
template <int64_t FW, typename ParallelFor>
void pack_grad_input(const LayoutView& l, const float* values, std::vector<float>& packed,
                     std::vector<int64_t>& off, const ParallelFor& parallel_for) {
  off.assign(l.num_tiles + 1, 0);
  for (int64_t t = 0; t < l.num_tiles; ++t)
    off[t + 1] = off[t] + (l.tile_kept(t) + FW - 1) / FW * FW * l.tile_width(t);
  packed.resize(off[l.num_tiles]);
  float* pk = packed.data();
  maybe_parallel(off[l.num_tiles] < kSerialPackElems, parallel_for, 0, l.num_tiles, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      // panels of the kr kept inputs (padding slots are not weights); rows of v are kt long
      const int64_t g = l.tile_width(t), kt = l.tile_rows(t), kr = l.tile_kept(t);
      const float* v = values + l.value_offset(t);
      for (int64_t q = 0; q * FW < kr; ++q) {
        const int64_t width = std::min(FW, kr - q * FW);
        float* panel = pk + off[t] + q * FW * g;
        for (int64_t j = 0; j < g; ++j) {
          const float* src = v + j * kt + q * FW;
          float* dst = panel + j * FW;
          for (int64_t c = 0; c < width; ++c) dst[c] = src[c];
          for (int64_t c = width; c < FW; ++c) dst[c] = 0.f;
        }
      }
    }
  });
}

// gx[i, rows_t[p]] += sum_j gy[i, cols_t[j]] * V_t[j, p]: the forward's
// micro-kernel with gy's kept outputs broadcast and the pack_grad_input
// panels as the weight, accumulated into gx through the tile's kept inputs.
template <int64_t FR, int64_t FW, typename Micro, typename ParallelFor>
void grad_input_panels(const LayoutView& l, const float* pk, const std::vector<int64_t>& off, const float* gy,
                       int64_t m, int64_t n, float* gx, int64_t k, int64_t workers, int64_t l2_bytes,
                       const ParallelFor& parallel_for, Micro&& micro) {
  workers = workers_for(l, m, workers);
  const auto [mb, blocks] = row_blocks(m, n + k, workers, FR, l2_bytes);
  dynamic_for(parallel_for, workers, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * mb, h = std::min(mb, m - i0);
      std::fill(gx + i0 * k, gx + (i0 + h) * k, 0.f);
      for (int64_t t = 0; t < l.num_tiles; ++t) {
        const int64_t g = l.tile_width(t), kr = l.tile_kept(t);
        if (kr == 0 || g == 0) continue;
        const int32_t* rows = l.rows + l.row_offsets[t];
        const int32_t* cols = l.cols + t * l.tile;
        for (int64_t q = 0; q * FW < kr; ++q) {
          const int64_t width = std::min(FW, kr - q * FW);
          const int32_t* qr = rows + q * FW;
          const bool contiguous = consecutive(qr, width);
          const FwdOut o{contiguous ? gx + qr[0] : gx, k, contiguous ? nullptr : qr, width, nullptr, true};
          for (int64_t i = 0; i < h; i += FR)
            micro(std::min(FR, h - i), gy + (i0 + i) * n, n, cols, g, pk + off[t] + q * FW * g, FW, o, i0 + i,
                  true);
        }
      }
    }
  });
}

// Rows per grad_values pass: the pass's block of x (every tile reads nearly
// every line of it) should stay in L2 while the tiles stream by, so x is
// read from memory once per pass, not once per tile (a tile's gy columns
// are only reused by its own, consecutive, items). Longer passes amortize
// the gathers' and panels' setup.
inline int64_t grad_values_rows(int64_t k, int64_t l2_bytes, int64_t max_rows) {
  const int64_t fit = l2_bytes / 2 / (4 * std::max<int64_t>(1, k));
  return std::max<int64_t>(48, std::min<int64_t>(max_rows, fit / 16 * 16));
}

// gv = packed(gy^T @ x). Work items: (tile, chunk of GPC kept inputs); each
// owns its [g, chunk] slice of gv and sums over all of m, so no two items
// write the same gradient and no partial sums are added. Items, in tile
// order, are cut into 2 * workers ranges (units) handed out on demand: a
// unit's consecutive items are chunks of one tile (its gy columns stay in
// cache) and its pass's block of x, sized for L2, serves all its tiles. Per
// pass of `rows` rows an item gathers its x columns, gather_x(x, ldx, h,
// rows, len, xg): xg[i * GPC + p] = x[i * ldx + rows[p]] (vector gathers),
// packs the tile's gy as [h][FW] panels, pack_gy(g, ldg, h, width, gp):
// gp[i * FW + j] = g[i * ldg + j], zero past width, and micro-kernel
// gv_micro(rows, xg, ldxg, h, gp, acc) adds to an FR x FW accumulator tile
// acc[r * FW + j] kept for the unit over all passes; the tiles are written,
// transposed, to gv at the end.
template <int64_t FR, int64_t FW, int64_t GPC, typename GatherX, typename PackGy, typename GvMicro,
          typename ParallelFor>
void grad_values_items(const LayoutView& l, const float* gy, const float* x, int64_t m, int64_t n, int64_t k,
                       float* gv, int64_t workers, int64_t rows_per_pass, const ParallelFor& parallel_for,
                       GatherX&& gather_x, PackGy&& pack_gy, GvMicro&& gv_micro) {
  const int64_t nv = num_values(l);
  std::fill(gv, gv + nv, 0.f);
  if (m <= 0 || nv == 0) return;
  workers = workers_for(l, m, workers);
  const int64_t GMB = std::max<int64_t>(1, rows_per_pass);
  // Output gradients of regrouped (2-D) tiles, gathered once into tile order:
  // gyc[i, t * tile + j] = gy[i, cols_t[j]].
  bool all_contiguous = true;
  for (int64_t t = 0; t < l.num_tiles; ++t) all_contiguous &= l.cols_contiguous(t);
  std::vector<float> gyc;
  if (!all_contiguous) {
    gyc.resize(m * l.num_cols);
    maybe_parallel(workers == 1, parallel_for, 0, m, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t c = 0; c < l.num_cols; ++c) gyc[i * l.num_cols + c] = gy[i * n + l.cols[c]];
    });
  }
  // Chunks of GPC kept inputs, halved while there are too few items to
  // balance the workers (a 384-wide layer has 3 tiles for 2 workers).
  std::vector<std::pair<int64_t, int64_t>> items;
  int64_t chunk = GPC;
  for (;; chunk /= 2) {
    items.clear();
    for (int64_t t = 0; t < l.num_tiles; ++t)
      if (l.tile_width(t) > 0)
        for (int64_t p0 = 0; p0 < l.tile_kept(t); p0 += chunk) items.emplace_back(t, p0);  // padding keeps 0
    if (chunk <= 2 * FR || static_cast<int64_t>(items.size()) >= 4 * workers) break;
  }
  const int64_t num_items = static_cast<int64_t>(items.size());
  const int64_t units = std::min<int64_t>(num_items, 2 * workers);
  auto item_len = [&](int64_t it) { return std::min(chunk, l.tile_kept(items[it].first) - items[it].second); };
  auto item_tiles = [&](int64_t it) {  // FR x FW accumulator tiles of an item
    return (item_len(it) + FR - 1) / FR * ((l.tile_width(items[it].first) + FW - 1) / FW);
  };
  dynamic_for(parallel_for, workers, units, 1, [&](int64_t u0, int64_t u1) {
    const int64_t rows = std::min(GMB, m);  // (a small m needs, and zero-fills, less)
    std::vector<float> xg(GPC * rows), gp(rows * FW), acc;
    for (int64_t u = u0; u < u1; ++u) {
      std::vector<int64_t> mine, acc_off{0};
      for (int64_t it = u * num_items / units; it < (u + 1) * num_items / units; ++it) {
        mine.push_back(it);
        acc_off.push_back(acc_off.back() + item_tiles(it) * FR * FW);
      }
      acc.assign(acc_off.back(), 0.f);
      for (int64_t i0 = 0; i0 < m; i0 += GMB) {
        const int64_t h = std::min(GMB, m - i0);
        for (size_t e = 0; e < mine.size(); ++e) {
          const auto [t, p0] = items[mine[e]];
          const int64_t g = l.tile_width(t), len = item_len(mine[e]);
          const bool contiguous = all_contiguous || l.cols_contiguous(t);
          const float* gsrc = contiguous ? gy + l.cols[t * l.tile] : gyc.data() + t * l.tile;
          const int64_t ldg = contiguous ? n : l.num_cols;
          gather_x(x + i0 * k, k, h, l.rows + l.row_offsets[t] + p0, len, xg.data());
          const int64_t panels = (g + FW - 1) / FW;
          for (int64_t q = 0; q < panels; ++q) {
            pack_gy(gsrc + i0 * ldg + q * FW, ldg, h, std::min(FW, g - q * FW), gp.data());
            for (int64_t r0 = 0; r0 < len; r0 += FR)
              gv_micro(std::min(FR, len - r0), xg.data() + r0, GPC, h, gp.data(),
                       acc.data() + acc_off[e] + (r0 / FR * panels + q) * FR * FW);
          }
        }
      }
      for (size_t e = 0; e < mine.size(); ++e) {  // gv_t[q * FW + j, p0 + r0 + r] = acc tile [r][j]
        const auto [t, p0] = items[mine[e]];
        const int64_t g = l.tile_width(t), kt = l.tile_rows(t), len = item_len(mine[e]);
        const int64_t panels = (g + FW - 1) / FW;
        float* gvt = gv + l.value_offset(t) + p0;  // [g, kt] from column p0
        for (int64_t r0 = 0; r0 < len; r0 += FR)
          for (int64_t q = 0; q < panels; ++q) {
            const float* a = acc.data() + acc_off[e] + (r0 / FR * panels + q) * FR * FW;
            for (int64_t j = 0; j < std::min(FW, g - q * FW); ++j)
              for (int64_t r = 0; r < std::min(FR, len - r0); ++r) gvt[(q * FW + j) * kt + r0 + r] = a[r * FW + j];
          }
      }
    }
  });
}

}  // namespace tilesparse::core::fused
