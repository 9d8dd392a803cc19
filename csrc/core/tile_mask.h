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

// Row selection. keep is row-major [T, k]. The pruning unit inside a tile is a
// run of k_align rows taken from the least important end of the tile's
// ranking (the first unit is k % k_align rows when that is non-zero), so every
// tile keeps a multiple of k_align rows or all k. A unit's score is the best
// segment score in it.
//
// By count: prunes units in ascending score order (globally across tiles)
// while doing so brings the pruned element count closer to `target_pruned`;
// the result is within half a unit of the target.
std::vector<uint8_t> keep_rows_by_count(const MaskProblem& p, const std::vector<int64_t>& cols,
                                        const std::vector<double>& seg, int64_t target_pruned);
// By threshold: prunes every unit whose score < threshold.
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
