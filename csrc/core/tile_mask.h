// Tile-wise mask selection, independent of torch (raw pointers, std only), so
// the Catch2 tests exercise exactly the code the operators run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tilesparse::core {

// Parameters shared by the selection routines. `scores` is row-major [n, k],
// one non-negative importance per weight (|w| for magnitude, accumulated
// (grad * w)^2 for Taylor).
struct MaskProblem {
  const double* scores;
  int64_t n;      // out_features
  int64_t k;      // in_features
  int64_t tile;   // G, output features per tile
  int64_t k_align = 1;  // kept rows per tile: a multiple of this (or all k)
  // Pruning unit: the aligned run [u*unit, (u+1)*unit) of input features of a
  // tile is kept or pruned as a whole (the last run is partial when
  // k % unit != 0), so kept features come in contiguous runs (16-byte or
  // 32-byte gathers for unit 8 or 16 in 16-bit types). unit and k_align must
  // divide one another: with k_align > unit every tile keeps a multiple of
  // k_align / unit runs, or all of them.
  int64_t unit = 1;
};

// Empty string when the parameters are usable, else a message naming the bad one.
std::string check_mask_problem(const MaskProblem& p);

// Column (output feature) score: L2 norm of its scores divided by its length k.
std::vector<double> column_scores(const MaskProblem& p);

// Kept output features (ascending) when `n_prune` of them are pruned by lowest
// column score (ties: lower index pruned first).
std::vector<int64_t> keep_columns_by_count(const std::vector<double>& col_scores, int64_t n_prune);
// Kept output features whose column score >= threshold.
std::vector<int64_t> keep_columns_by_threshold(const std::vector<double>& col_scores, double threshold);

// Row-segment scores of the tiles formed by regrouping `cols` into tiles of
// p.tile: out is row-major [T, k], out[t, r] = ||scores[cols_t, r]||_2 / g_t.
std::vector<double> segment_scores(const MaskProblem& p, const std::vector<int64_t>& cols);

// Number of aligned runs of p.unit input features: ceil(k / unit).
int64_t num_units(const MaskProblem& p);

// Run scores from segment scores `seg` [T, k]: out is row-major [T, U],
// U = num_units(p), out[t, u] = the root mean square of seg[t, r] over the
// features r of run u (its own length for the partial last run). For full
// runs this ranks as the L2 norm of the run's segment scores,
// ||scores[cols_t, run]||_F / g_t; dividing by the run length keeps the
// partial last run comparable. With unit == 1 it is `seg` exactly.
std::vector<double> unit_scores(const MaskProblem& p, const std::vector<double>& seg);

// Row selection. keep is row-major [T, k]. Each tile ranks its runs of p.unit
// features by run score (descending, ties by position). The pruning group
// inside a tile is k_align / unit ranked runs (one run when unit >= k_align)
// taken from the least important end of the ranking (the first group is
// U % (k_align / unit) runs when that is non-zero), so with unit == 1 every
// tile keeps a multiple of k_align rows or all k. A group's score is the best
// run score in it.
//
// By count: prunes groups in ascending score order (globally across tiles)
// while doing so brings the pruned element count closer to `target_pruned`;
// the result is within half a group of the target.
std::vector<uint8_t> keep_rows_by_count(const MaskProblem& p, const std::vector<int64_t>& cols,
                                        const std::vector<double>& seg, int64_t target_pruned);
// By threshold: prunes every group whose score < threshold.
std::vector<uint8_t> keep_rows_by_threshold(const MaskProblem& p, const std::vector<int64_t>& cols,
                                            const std::vector<double>& seg, double threshold);

// Writes the [n, k] mask (1 = kept) for the given columns and per-tile rows.
void assemble_mask(const MaskProblem& p, const std::vector<int64_t>& cols,
                   const std::vector<uint8_t>& keep_rows, bool* mask);

// The whole selection: 1-D TW when col_sparsity == 0, else 2-D TW.
// `sparsity` is the overall fraction of weights pruned; col_sparsity <= sparsity.
void tile_mask_by_sparsity(const MaskProblem& p, double sparsity, double col_sparsity, bool* mask);
// Threshold form; has_col_threshold selects 2-D TW.
void tile_mask_by_threshold(const MaskProblem& p, double threshold, bool has_col_threshold,
                            double col_threshold, bool* mask);

// Index of the first non-finite score, or -1.
int64_t first_nonfinite(const double* v, int64_t count);

}  // namespace tilesparse::core
