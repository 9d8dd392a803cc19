#include "tile_mask.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace tilesparse::core {

std::string check_mask_problem(const MaskProblem& p) {
  std::ostringstream err;
  if (p.n < 0 || p.k < 0) err << "scores must have non-negative sizes, got [" << p.n << ", " << p.k << "]";
  else if (p.tile <= 0) err << "tile must be positive, got " << p.tile;
  else if (p.k_align <= 0) err << "k_align must be positive, got " << p.k_align;
  else if (p.unit <= 0) err << "unit must be positive, got " << p.unit;
  else if (p.k_align % p.unit != 0 && p.unit % p.k_align != 0)
    err << "k_align and unit must divide one another, got k_align=" << p.k_align << ", unit=" << p.unit;
  return err.str();
}

int64_t first_nonfinite(const double* v, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (!std::isfinite(v[i])) return i;
  return -1;
}

std::vector<double> column_scores(const MaskProblem& p) {
  std::vector<double> out(p.n, 0.0);
  for (int64_t c = 0; c < p.n; ++c) {
    const double* row = p.scores + c * p.k;
    double ss = 0;
    for (int64_t r = 0; r < p.k; ++r) ss += row[r] * row[r];
    out[c] = p.k > 0 ? std::sqrt(ss) / static_cast<double>(p.k) : 0.0;
  }
  return out;
}

std::vector<int64_t> keep_columns_by_count(const std::vector<double>& col_scores, int64_t n_prune) {
  const int64_t n = static_cast<int64_t>(col_scores.size());
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return col_scores[a] < col_scores[b]; });
  std::vector<uint8_t> pruned(n, 0);
  for (int64_t i = 0; i < std::min(n_prune, n); ++i) pruned[order[i]] = 1;
  std::vector<int64_t> kept;
  kept.reserve(n - std::min(n_prune, n));
  for (int64_t c = 0; c < n; ++c)
    if (!pruned[c]) kept.push_back(c);
  return kept;
}

std::vector<int64_t> keep_columns_by_threshold(const std::vector<double>& col_scores, double threshold) {
  std::vector<int64_t> kept;
  for (int64_t c = 0; c < static_cast<int64_t>(col_scores.size()); ++c)
    if (col_scores[c] >= threshold) kept.push_back(c);
  return kept;
}

namespace {

int64_t num_tiles(int64_t num_cols, int64_t tile) { return (num_cols + tile - 1) / tile; }
int64_t tile_width(int64_t t, int64_t num_cols, int64_t tile) {
  return std::min(tile, num_cols - t * tile);
}

// Length of run u: unit, or what is left of k for the last run.
int64_t run_length(const MaskProblem& p, int64_t u) { return std::min(p.unit, p.k - u * p.unit); }

// Ranked runs per pruning group (see the header).
int64_t group_runs(const MaskProblem& p) { return std::max<int64_t>(1, p.k_align / p.unit); }

// One pruning group: ranked runs [begin, end) of tile t's ranking (rank 0 =
// most important). pos counts groups from the least important end; features is
// the number of input features the group covers.
struct Group {
  double score;
  int64_t tile;
  int64_t pos;
  int64_t begin;
  int64_t end;
  int64_t features;
};

// Tile t's runs by descending run score (ties: lower run index first).
void rank_runs(const std::vector<double>& us, int64_t U, int64_t t, std::vector<int64_t>& rank) {
  const double* s = us.data() + t * U;
  rank.resize(U);
  std::iota(rank.begin(), rank.end(), 0);
  std::stable_sort(rank.begin(), rank.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
}

// Tile t's ranking and its groups from the bottom up.
void rank_and_split(const MaskProblem& p, const std::vector<double>& us, int64_t U, int64_t t,
                    std::vector<int64_t>& rank, std::vector<Group>& groups) {
  rank_runs(us, U, t, rank);
  const double* s = us.data() + t * U;
  const int64_t a = group_runs(p);
  const int64_t first = U % a;
  int64_t end = U;
  int64_t pos = 0;
  while (end > 0) {
    const int64_t len = (pos == 0 && first != 0) ? first : std::min(a, end);
    const int64_t begin = end - len;
    int64_t features = 0;
    for (int64_t r = begin; r < end; ++r) features += run_length(p, rank[r]);
    groups.push_back(Group{s[rank[begin]], t, pos, begin, end, features});
    end = begin;
    ++pos;
  }
}

// keep[t, r] = 1 for the features r of tile t's best U - pruned_runs[t] runs.
std::vector<uint8_t> keep_from_counts(const MaskProblem& p, const std::vector<double>& us, int64_t U, int64_t T,
                                      const std::vector<int64_t>& pruned_runs) {
  std::vector<uint8_t> keep(T * p.k, 0);
  std::vector<int64_t> rank;
  for (int64_t t = 0; t < T; ++t) {
    rank_runs(us, U, t, rank);
    for (int64_t r = 0; r < U - pruned_runs[t]; ++r) {
      const int64_t b = rank[r] * p.unit;
      std::fill(keep.begin() + t * p.k + b, keep.begin() + t * p.k + b + run_length(p, rank[r]), 1);
    }
  }
  return keep;
}

}  // namespace

std::vector<double> segment_scores(const MaskProblem& p, const std::vector<int64_t>& cols) {
  const int64_t nc = static_cast<int64_t>(cols.size());
  const int64_t T = num_tiles(nc, p.tile);
  std::vector<double> seg(T * p.k, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t g = tile_width(t, nc, p.tile);
    double* out = seg.data() + t * p.k;
    for (int64_t j = 0; j < g; ++j) {
      const double* row = p.scores + cols[t * p.tile + j] * p.k;
      for (int64_t r = 0; r < p.k; ++r) out[r] += row[r] * row[r];
    }
    for (int64_t r = 0; r < p.k; ++r) out[r] = std::sqrt(out[r]) / static_cast<double>(g);
  }
  return seg;
}

int64_t num_units(const MaskProblem& p) { return p.k > 0 ? (p.k + p.unit - 1) / p.unit : 0; }

std::vector<double> unit_scores(const MaskProblem& p, const std::vector<double>& seg) {
  if (p.unit == 1) return seg;
  const int64_t U = num_units(p);
  const int64_t T = p.k > 0 ? static_cast<int64_t>(seg.size()) / p.k : 0;
  std::vector<double> out(T * U, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t u = 0; u < U; ++u) {
      const int64_t len = run_length(p, u);
      double ss = 0;
      for (int64_t r = u * p.unit; r < u * p.unit + len; ++r) ss += seg[t * p.k + r] * seg[t * p.k + r];
      out[t * U + u] = std::sqrt(ss / static_cast<double>(len));
    }
  return out;
}

std::vector<uint8_t> keep_rows_by_count(const MaskProblem& p, const std::vector<int64_t>& cols,
                                        const std::vector<double>& seg, int64_t target_pruned) {
  const int64_t nc = static_cast<int64_t>(cols.size());
  const int64_t T = num_tiles(nc, p.tile);
  const int64_t U = num_units(p);
  const std::vector<double> us = unit_scores(p, seg);
  std::vector<Group> groups;
  std::vector<int64_t> rank;
  for (int64_t t = 0; t < T; ++t) rank_and_split(p, us, U, t, rank, groups);
  // Ascending score; within a tile the lower group first so every tile prunes
  // a bottom prefix of its ranking.
  std::stable_sort(groups.begin(), groups.end(), [](const Group& a, const Group& b) {
    if (a.score != b.score) return a.score < b.score;
    if (a.tile != b.tile) return a.tile < b.tile;
    return a.pos < b.pos;
  });
  std::vector<int64_t> pruned_runs(T, 0);
  int64_t pruned = 0;
  for (const Group& g : groups) {
    const int64_t elems = g.features * tile_width(g.tile, nc, p.tile);
    if (std::llabs(pruned + elems - target_pruned) >= std::llabs(pruned - target_pruned)) break;
    pruned += elems;
    pruned_runs[g.tile] += g.end - g.begin;
  }
  return keep_from_counts(p, us, U, T, pruned_runs);
}

std::vector<uint8_t> keep_rows_by_threshold(const MaskProblem& p, const std::vector<int64_t>& cols,
                                            const std::vector<double>& seg, double threshold) {
  const int64_t T = num_tiles(static_cast<int64_t>(cols.size()), p.tile);
  const int64_t U = num_units(p);
  const std::vector<double> us = unit_scores(p, seg);
  std::vector<int64_t> pruned_runs(T, 0);
  std::vector<Group> groups;
  std::vector<int64_t> rank;
  for (int64_t t = 0; t < T; ++t) {
    groups.clear();
    rank_and_split(p, us, U, t, rank, groups);
    for (const Group& g : groups) {  // bottom up: stop at the first group kept
      if (!(g.score < threshold)) break;
      pruned_runs[t] += g.end - g.begin;
    }
  }
  return keep_from_counts(p, us, U, T, pruned_runs);
}

void assemble_mask(const MaskProblem& p, const std::vector<int64_t>& cols,
                   const std::vector<uint8_t>& keep_rows, bool* mask) {
  std::fill(mask, mask + p.n * p.k, false);
  const int64_t nc = static_cast<int64_t>(cols.size());
  for (int64_t j = 0; j < nc; ++j) {
    const uint8_t* keep = keep_rows.data() + (j / p.tile) * p.k;
    bool* row = mask + cols[j] * p.k;
    for (int64_t r = 0; r < p.k; ++r) row[r] = keep[r] != 0;
  }
}

void tile_mask_by_sparsity(const MaskProblem& p, double sparsity, double col_sparsity, bool* mask) {
  const std::string err = check_mask_problem(p);
  if (!err.empty()) throw std::invalid_argument(err);
  if (!(sparsity >= 0.0 && sparsity < 1.0))
    throw std::invalid_argument("sparsity must be in [0, 1), got " + std::to_string(sparsity));
  if (!(col_sparsity >= 0.0 && col_sparsity <= sparsity))
    throw std::invalid_argument("col_sparsity must be in [0, sparsity], got " + std::to_string(col_sparsity));
  const int64_t total = p.n * p.k;
  const int64_t target = std::llround(sparsity * static_cast<double>(total));
  std::vector<int64_t> cols;
  if (col_sparsity > 0.0) {
    // Never prune more by whole columns than the overall target allows, so
    // the achieved sparsity stays within one row segment of the target.
    const int64_t n_prune = std::min<int64_t>(std::llround(col_sparsity * static_cast<double>(p.n)),
                                              p.k > 0 ? target / p.k : p.n);
    cols = keep_columns_by_count(column_scores(p), n_prune);
  } else {
    cols.resize(p.n);
    std::iota(cols.begin(), cols.end(), 0);
  }
  const int64_t col_pruned = (p.n - static_cast<int64_t>(cols.size())) * p.k;
  const std::vector<double> seg = segment_scores(p, cols);
  const auto keep = keep_rows_by_count(p, cols, seg, std::max<int64_t>(0, target - col_pruned));
  assemble_mask(p, cols, keep, mask);
}

void tile_mask_by_threshold(const MaskProblem& p, double threshold, bool has_col_threshold,
                            double col_threshold, bool* mask) {
  const std::string err = check_mask_problem(p);
  if (!err.empty()) throw std::invalid_argument(err);
  std::vector<int64_t> cols;
  if (has_col_threshold) {
    cols = keep_columns_by_threshold(column_scores(p), col_threshold);
  } else {
    cols.resize(p.n);
    std::iota(cols.begin(), cols.end(), 0);
  }
  const std::vector<double> seg = segment_scores(p, cols);
  assemble_mask(p, cols, keep_rows_by_threshold(p, cols, seg, threshold), mask);
}

}  // namespace tilesparse::core
