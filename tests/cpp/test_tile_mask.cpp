// Catch2 tests of the torch-free mask selection (csrc/core/tile_mask.h):
// each building block on hand-computed inputs, then the whole selection on
// random problems against brute-force checks written here.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "core/tile_mask.h"

using namespace tilesparse::core;

namespace {

std::vector<double> random_scores(int64_t n, int64_t k, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<double> s(static_cast<size_t>(n * k));
  for (auto& v : s) v = u(rng);
  return s;
}

MaskProblem problem(const std::vector<double>& s, int64_t n, int64_t k, int64_t tile, int64_t k_align = 1) {
  return MaskProblem{s.data(), n, k, tile, k_align};
}

// Brute-force TW check: kept features (any kept weight), grouped in order into
// tiles of `tile`, keep identical rows.
bool is_tile_wise(const std::vector<char>& mask, int64_t n, int64_t k, int64_t tile) {
  std::vector<int64_t> kept;
  for (int64_t c = 0; c < n; ++c)
    for (int64_t r = 0; r < k; ++r)
      if (mask[c * k + r]) {
        kept.push_back(c);
        break;
      }
  for (size_t j = 0; j < kept.size(); ++j) {
    const int64_t first = kept[j / tile * tile];
    for (int64_t r = 0; r < k; ++r)
      if (mask[kept[j] * k + r] != mask[first * k + r]) return false;
  }
  return true;
}

std::vector<char> run_sparsity(const MaskProblem& p, double sparsity, double col_sparsity) {
  std::unique_ptr<bool[]> m(new bool[std::max<int64_t>(1, p.n * p.k)]);
  tile_mask_by_sparsity(p, sparsity, col_sparsity, m.get());
  return std::vector<char>(m.get(), m.get() + p.n * p.k);
}

std::vector<char> run_threshold(const MaskProblem& p, double thr, bool has_col, double col_thr) {
  std::unique_ptr<bool[]> m(new bool[std::max<int64_t>(1, p.n * p.k)]);
  tile_mask_by_threshold(p, thr, has_col, col_thr, m.get());
  return std::vector<char>(m.get(), m.get() + p.n * p.k);
}

int64_t count_kept(const std::vector<char>& m) { return std::count(m.begin(), m.end(), 1); }

// Column L2 norm / k, computed here.
double col_score(const std::vector<double>& s, int64_t c, int64_t k) {
  double ss = 0;
  for (int64_t r = 0; r < k; ++r) ss += s[c * k + r] * s[c * k + r];
  return std::sqrt(ss) / static_cast<double>(k);
}

}  // namespace

// ---------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------
TEST_CASE("check_mask_problem names the bad parameter", "[mask]") {
  std::vector<double> s(6, 1.0);
  CHECK(check_mask_problem(problem(s, 2, 3, 2)).empty());
  CHECK_THAT(check_mask_problem(problem(s, -1, 3, 2)), Catch::Contains("non-negative sizes"));
  CHECK_THAT(check_mask_problem(problem(s, 2, 3, 0)), Catch::Contains("tile must be positive, got 0"));
  CHECK_THAT(check_mask_problem(problem(s, 2, 3, -5)), Catch::Contains("tile must be positive, got -5"));
  CHECK_THAT(check_mask_problem(problem(s, 2, 3, 2, 0)), Catch::Contains("k_align must be positive, got 0"));
}

TEST_CASE("first_nonfinite finds the first NaN or inf", "[mask]") {
  std::vector<double> v{1.0, 2.0, 3.0, 4.0};
  CHECK(first_nonfinite(v.data(), 4) == -1);
  CHECK(first_nonfinite(v.data(), 0) == -1);
  v[2] = std::numeric_limits<double>::quiet_NaN();
  v[3] = std::numeric_limits<double>::infinity();
  CHECK(first_nonfinite(v.data(), 4) == 2);
  v[1] = -std::numeric_limits<double>::infinity();
  CHECK(first_nonfinite(v.data(), 4) == 1);
}

TEST_CASE("column_scores is the row's L2 norm over K", "[mask]") {
  std::vector<double> s{3, 4, 0, 0, 1, 0};  // [3, 2]: rows (3,4), (0,0), (1,0)
  const auto c = column_scores(problem(s, 3, 2, 1));
  REQUIRE(c.size() == 3);
  CHECK(c[0] == Approx(2.5));
  CHECK(c[1] == 0.0);
  CHECK(c[2] == Approx(0.5));
  std::vector<double> empty;
  CHECK(column_scores(problem(empty, 2, 0, 1)) == std::vector<double>{0.0, 0.0});
}

TEST_CASE("keep_columns_by_count prunes the lowest, lower index first on ties", "[mask]") {
  CHECK(keep_columns_by_count({3, 1, 2, 1}, 2) == std::vector<int64_t>{0, 2});
  CHECK(keep_columns_by_count({3, 1, 2, 1}, 1) == std::vector<int64_t>{0, 2, 3});
  CHECK(keep_columns_by_count({1, 1, 1, 1}, 1) == std::vector<int64_t>{1, 2, 3});
  CHECK(keep_columns_by_count({1, 1, 1, 1}, 0) == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(keep_columns_by_count({1, 1, 1, 1}, 4).empty());
  CHECK(keep_columns_by_count({1, 1}, 7).empty());
}

TEST_CASE("keep_columns_by_threshold keeps scores >= threshold", "[mask]") {
  CHECK(keep_columns_by_threshold({0.5, 0.2, 0.7, 0.5}, 0.5) == std::vector<int64_t>{0, 2, 3});
  CHECK(keep_columns_by_threshold({0.5, 0.2}, 1.0).empty());
  CHECK(keep_columns_by_threshold({0.5, 0.2}, -1.0) == std::vector<int64_t>{0, 1});
}

TEST_CASE("segment_scores regroups the given columns into tiles", "[mask]") {
  // scores [3, 2]
  std::vector<double> s{3, 1, 4, 2, 5, 0};
  const auto p = problem(s, 3, 2, 2);
  const auto all = segment_scores(p, {0, 1, 2});
  REQUIRE(all.size() == 4);  // T = 2 tiles (2 + 1 partial), k = 2
  CHECK(all[0] == Approx(std::sqrt(9.0 + 16.0) / 2));
  CHECK(all[1] == Approx(std::sqrt(1.0 + 4.0) / 2));
  CHECK(all[2] == Approx(5.0));  // partial tile of width 1
  CHECK(all[3] == Approx(0.0));
  const auto two = segment_scores(p, {0, 2});  // 2-D: feature 1 pruned, {0, 2} is one tile
  REQUIRE(two.size() == 2);
  CHECK(two[0] == Approx(std::sqrt(9.0 + 25.0) / 2));
  CHECK(two[1] == Approx(1.0 / 2));
  CHECK(segment_scores(p, {}).empty());
}

TEST_CASE("keep_rows_by_count prunes the globally lowest segments", "[mask]") {
  // 2 tiles of width 2, k = 3. Segment scores given directly.
  std::vector<double> s(12, 1.0);
  const auto p = problem(s, 4, 3, 2);
  const std::vector<int64_t> cols{0, 1, 2, 3};
  const std::vector<double> seg{0.9, 0.1, 0.5,   // tile 0
                                0.3, 0.8, 0.2};  // tile 1
  // each unit is 2 elements; target 4 -> the two lowest segments (0.1, 0.2)
  CHECK(keep_rows_by_count(p, cols, seg, 4) == std::vector<uint8_t>{1, 0, 1, 1, 1, 0});
  // target 5 is a tie between 4 and 6: stop at 4 (the next unit does not get closer)
  CHECK(keep_rows_by_count(p, cols, seg, 5) == std::vector<uint8_t>{1, 0, 1, 1, 1, 0});
  // target 6 -> also 0.3
  CHECK(keep_rows_by_count(p, cols, seg, 6) == std::vector<uint8_t>{1, 0, 1, 0, 1, 0});
  CHECK(keep_rows_by_count(p, cols, seg, 0) == std::vector<uint8_t>(6, 1));
  CHECK(keep_rows_by_count(p, cols, seg, 12) == std::vector<uint8_t>(6, 0));
  CHECK(keep_rows_by_count(p, cols, seg, 1000) == std::vector<uint8_t>(6, 0));
}

TEST_CASE("keep_rows_by_count with k_align prunes whole units from the bottom", "[mask]") {
  // one tile of width 1, k = 5, k_align = 2: units from the bottom are
  // {lowest} (5 % 2 = 1 row), then pairs. A unit's score is its best segment.
  std::vector<double> s(5, 1.0);
  const auto p = problem(s, 1, 5, 1, 2);
  const std::vector<double> seg{0.5, 0.4, 0.3, 0.2, 0.1};
  CHECK(keep_rows_by_count(p, {0}, seg, 1) == std::vector<uint8_t>{1, 1, 1, 1, 0});
  CHECK(keep_rows_by_count(p, {0}, seg, 3) == std::vector<uint8_t>{1, 1, 0, 0, 0});
  CHECK(keep_rows_by_count(p, {0}, seg, 5) == std::vector<uint8_t>{0, 0, 0, 0, 0});
}

TEST_CASE("keep_rows_by_threshold prunes units strictly below the threshold", "[mask]") {
  std::vector<double> s(6, 1.0);
  const std::vector<double> seg{0.5, 0.4, 0.3, 0.2, 0.1, 0.4};
  const auto p1 = problem(s, 1, 6, 1);
  CHECK(keep_rows_by_threshold(p1, {0}, seg, 0.3) == std::vector<uint8_t>{1, 1, 1, 0, 0, 1});
  CHECK(keep_rows_by_threshold(p1, {0}, seg, 0.0) == std::vector<uint8_t>(6, 1));
  CHECK(keep_rows_by_threshold(p1, {0}, seg, 1.0) == std::vector<uint8_t>(6, 0));
  // k_align = 4: 6 % 4 = 2 bottom rows (0.2, 0.1) then 4 rows; above 0.3 there are 4 rows -> keep 4
  const auto p4 = problem(s, 1, 6, 1, 4);
  CHECK(keep_rows_by_threshold(p4, {0}, seg, 0.3) == std::vector<uint8_t>{1, 1, 1, 0, 0, 1});
  // threshold 0.45: one row above, but the next valid count is 4
  CHECK(keep_rows_by_threshold(p4, {0}, seg, 0.45) == std::vector<uint8_t>{1, 1, 1, 0, 0, 1});
  CHECK(keep_rows_by_threshold(p4, {0}, seg, 0.6) == std::vector<uint8_t>(6, 0));
  // rows of equal score: kept in index order (the higher index is pruned first)
  const std::vector<double> flat(6, 0.5);
  CHECK(keep_rows_by_count(p1, {0}, flat, 2) == std::vector<uint8_t>{1, 1, 1, 1, 0, 0});
}

TEST_CASE("assemble_mask writes the tiles' rows for their columns only", "[mask]") {
  std::vector<double> s(8, 1.0);
  const auto p = problem(s, 4, 2, 2);
  bool mask[8];
  assemble_mask(p, {0, 2, 3}, {1, 0, 0, 1}, mask);  // tile 0 = {0, 2} keeps row 0, tile 1 = {3} keeps row 1
  const bool expected[8] = {true, false, false, false, true, false, false, true};
  CHECK(std::equal(mask, mask + 8, expected));
}

// ---------------------------------------------------------------------------
// Whole selection
// ---------------------------------------------------------------------------
TEST_CASE("tile_mask_by_sparsity: properties over random problems", "[mask]") {
  std::mt19937_64 rng(1234);
  int checked = 0;
  for (int iter = 0; iter < 400; ++iter) {
    const int64_t n = 1 + rng() % 40, k = 1 + rng() % 24, tile = 1 + rng() % 12, k_align = 1 + rng() % 6;
    const double sparsity = std::uniform_real_distribution<double>(0.0, 0.95)(rng);
    const double col_sparsity = (rng() % 2) ? sparsity * std::uniform_real_distribution<double>(0.0, 1.0)(rng) : 0.0;
    const auto s = random_scores(n, k, rng());
    const auto p = problem(s, n, k, tile, k_align);
    const auto mask = run_sparsity(p, sparsity, col_sparsity);
    INFO("n=" << n << " k=" << k << " tile=" << tile << " k_align=" << k_align << " sparsity=" << sparsity
              << " col_sparsity=" << col_sparsity);
    REQUIRE(is_tile_wise(mask, n, k, tile));

    // kept rows per feature: 0, k, or a multiple of k_align
    for (int64_t c = 0; c < n; ++c) {
      const int64_t kept = std::count(mask.begin() + c * k, mask.begin() + (c + 1) * k, 1);
      REQUIRE((kept % k_align == 0 || kept == k));
    }

    // 2-D: the round(col_sparsity * n) lowest-L2 columns are pruned whole,
    // capped so that columns alone never exceed the overall target
    const int64_t target = std::llround(sparsity * static_cast<double>(n * k));
    const int64_t n_prune = col_sparsity > 0 ? std::min<int64_t>(std::llround(col_sparsity * n), target / k) : 0;
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return col_score(s, a, k) < col_score(s, b, k); });
    for (int64_t i = 0; i < n_prune; ++i)
      REQUIRE(std::count(mask.begin() + order[i] * k, mask.begin() + (order[i] + 1) * k, 1) == 0);

    // achieved sparsity within half a unit (widest tile x k_align rows)
    const int64_t pruned = n * k - count_kept(mask);
    const int64_t unit = std::min(tile, n - n_prune) * std::min(k_align, k);
    REQUIRE(2 * std::llabs(pruned - target) <= unit);
    ++checked;
  }
  CHECK(checked == 400);
}

TEST_CASE("tile_mask_by_sparsity keeps the best segments (1-D, k_align 1)", "[mask]") {
  // n a multiple of tile: every unit has tile elements; brute force = prune the
  // P lowest segments, P the smallest count nearest the target.
  std::mt19937_64 rng(99);
  for (int iter = 0; iter < 100; ++iter) {
    const int64_t tile = 1 + rng() % 8, T = 1 + rng() % 6, n = tile * T, k = 1 + rng() % 12;
    const double sparsity = std::uniform_real_distribution<double>(0.0, 0.95)(rng);
    const auto s = random_scores(n, k, rng());
    const auto mask = run_sparsity(problem(s, n, k, tile), sparsity, 0.0);
    // segment scores computed here
    std::vector<std::pair<double, int64_t>> seg;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < k; ++r) {
        double ss = 0;
        for (int64_t j = 0; j < tile; ++j) ss += s[(t * tile + j) * k + r] * s[(t * tile + j) * k + r];
        seg.push_back({std::sqrt(ss) / tile, t * k + r});
      }
    std::sort(seg.begin(), seg.end());
    const int64_t target = std::llround(sparsity * n * k);
    int64_t best = 0;
    for (int64_t P = 0; P <= T * k; ++P)
      if (std::llabs(P * tile - target) < std::llabs(best * tile - target)) best = P;
    std::vector<char> expected(n * k, 1);
    for (int64_t i = 0; i < best; ++i) {
      const int64_t t = seg[i].second / k, r = seg[i].second % k;
      for (int64_t j = 0; j < tile; ++j) expected[(t * tile + j) * k + r] = 0;
    }
    INFO("n=" << n << " k=" << k << " tile=" << tile << " sparsity=" << sparsity);
    REQUIRE(mask == expected);
  }
}

TEST_CASE("tile_mask_by_sparsity: 2-D prunes exactly the lowest columns when sparsity == col_sparsity", "[mask]") {
  const int64_t n = 10, k = 4;
  std::vector<double> s(n * k);
  const double col_level[n] = {5, 1, 7, 3, 9, 2, 8, 4, 6, 0.5};
  for (int64_t c = 0; c < n; ++c)
    for (int64_t r = 0; r < k; ++r) s[c * k + r] = col_level[c] * (1.0 + 0.01 * r);
  const auto mask = run_sparsity(problem(s, n, k, 3), 0.4, 0.4);  // 4 columns: 9, 1, 5, 3
  for (int64_t c = 0; c < n; ++c) {
    const bool pruned = c == 9 || c == 1 || c == 5 || c == 3;
    for (int64_t r = 0; r < k; ++r) REQUIRE(mask[c * k + r] == (pruned ? 0 : 1));
  }
}

TEST_CASE("tile_mask_by_sparsity: ties are deterministic", "[mask]") {
  std::vector<double> s(8 * 6, 1.0);
  // one tile: the higher row indices go first
  const auto one = run_sparsity(problem(s, 8, 6, 8), 0.5, 0.0);
  for (int64_t c = 0; c < 8; ++c)
    for (int64_t r = 0; r < 6; ++r) REQUIRE(one[c * 6 + r] == (r < 3 ? 1 : 0));
  // equal columns: the lower indices go first
  const auto cols = run_sparsity(problem(s, 8, 6, 4), 0.25, 0.25);
  for (int64_t c = 0; c < 8; ++c) REQUIRE(std::count(cols.begin() + c * 6, cols.begin() + c * 6 + 6, 1) == (c < 2 ? 0 : 6));
  // and the same inputs give the same mask
  REQUIRE(run_sparsity(problem(s, 8, 6, 4, 2), 0.6, 0.2) == run_sparsity(problem(s, 8, 6, 4, 2), 0.6, 0.2));
}

TEST_CASE("tile_mask_by_sparsity: degenerate problems", "[mask]") {
  std::vector<double> s = random_scores(5, 7, 3);
  CHECK(count_kept(run_sparsity(problem(s, 5, 7, 2), 0.0, 0.0)) == 35);
  CHECK(count_kept(run_sparsity(problem(s, 5, 7, 2, 3), 0.0, 0.0)) == 35);
  std::vector<double> empty;
  CHECK(run_sparsity(problem(empty, 0, 7, 2), 0.5, 0.2).empty());
  CHECK(run_sparsity(problem(empty, 5, 0, 2), 0.5, 0.2).empty());
  // k_align > k: every tile keeps all rows or none
  const auto m = run_sparsity(problem(s, 5, 7, 2, 16), 0.5, 0.0);
  for (int64_t c = 0; c < 5; ++c) {
    const auto kept = std::count(m.begin() + c * 7, m.begin() + c * 7 + 7, 1);
    REQUIRE((kept == 0 || kept == 7));
  }
}

TEST_CASE("tile_mask_by_sparsity: invalid arguments throw", "[mask]") {
  std::vector<double> s = random_scores(4, 4, 1);
  bool m[16];
  const auto p = problem(s, 4, 4, 2);
  CHECK_THROWS_WITH(tile_mask_by_sparsity(p, 1.0, 0.0, m), Catch::Contains("sparsity must be in [0, 1)"));
  CHECK_THROWS_WITH(tile_mask_by_sparsity(p, -0.1, 0.0, m), Catch::Contains("sparsity must be in [0, 1)"));
  CHECK_THROWS_AS(tile_mask_by_sparsity(p, std::nan(""), 0.0, m), std::invalid_argument);
  CHECK_THROWS_WITH(tile_mask_by_sparsity(p, 0.3, 0.5, m), Catch::Contains("col_sparsity must be in [0, sparsity]"));
  CHECK_THROWS_WITH(tile_mask_by_sparsity(p, 0.3, -0.5, m), Catch::Contains("col_sparsity"));
  CHECK_THROWS_WITH(tile_mask_by_sparsity(problem(s, 4, 4, 0), 0.3, 0.0, m), Catch::Contains("tile must be positive"));
  CHECK_THROWS_WITH(tile_mask_by_sparsity(problem(s, 4, 4, 2, 0), 0.3, 0.0, m),
                    Catch::Contains("k_align must be positive"));
  CHECK_THROWS_WITH(tile_mask_by_threshold(problem(s, 4, 4, 0), 0.3, false, 0.0, m),
                    Catch::Contains("tile must be positive"));
}

TEST_CASE("tile_mask_by_threshold keeps segment iff score >= threshold", "[mask]") {
  std::mt19937_64 rng(7);
  for (int iter = 0; iter < 100; ++iter) {
    const int64_t n = 1 + rng() % 30, k = 1 + rng() % 16, tile = 1 + rng() % 8;
    const auto s = random_scores(n, k, rng());
    const auto p = problem(s, n, k, tile);
    const bool two_d = rng() % 2;
    std::vector<int64_t> cols;
    const double col_thr = std::uniform_real_distribution<double>(0.0, 0.5)(rng) / std::sqrt(double(k));
    for (int64_t c = 0; c < n; ++c)
      if (!two_d || col_score(s, c, k) >= col_thr) cols.push_back(c);
    // a threshold between segment scores: the median of the survivors' segments
    auto seg = segment_scores(p, cols);
    std::vector<double> sorted = seg;
    std::sort(sorted.begin(), sorted.end());
    const double thr = sorted.empty() ? 0.0 : sorted[sorted.size() / 2];
    const auto mask = run_threshold(p, thr, two_d, col_thr);
    std::vector<char> expected(n * k, 0);
    for (size_t j = 0; j < cols.size(); ++j)
      for (int64_t r = 0; r < k; ++r) {
        // segment score recomputed here for the regrouped tile j / tile
        const size_t t0 = j / tile * tile, t1 = std::min(cols.size(), t0 + tile);
        double ss = 0;
        for (size_t i = t0; i < t1; ++i) ss += s[cols[i] * k + r] * s[cols[i] * k + r];
        expected[cols[j] * k + r] = std::sqrt(ss) / double(t1 - t0) >= thr ? 1 : 0;
      }
    INFO("n=" << n << " k=" << k << " tile=" << tile << " two_d=" << two_d);
    REQUIRE(mask == expected);
  }
}

// ---------------------------------------------------------------------------
// unit: aligned runs of input features kept or pruned together
// ---------------------------------------------------------------------------
namespace {

MaskProblem unit_problem(const std::vector<double>& s, int64_t n, int64_t k, int64_t tile, int64_t k_align,
                         int64_t unit) {
  return MaskProblem{s.data(), n, k, tile, k_align, unit};
}

// Every output feature keeps each aligned run [u*unit, (u+1)*unit) whole or not at all.
bool runs_whole(const std::vector<char>& mask, int64_t n, int64_t k, int64_t unit) {
  for (int64_t c = 0; c < n; ++c)
    for (int64_t b = 0; b < k; b += unit) {
      const int64_t e = std::min(k, b + unit);
      const auto kept = std::count(mask.begin() + c * k + b, mask.begin() + c * k + e, 1);
      if (kept != 0 && kept != e - b) return false;
    }
  return true;
}

// Run score recomputed here from the raw scores of the tile's columns: the
// root mean square over the run's features of ||scores[cols, r]||_2 / width.
double run_score(const std::vector<double>& s, const std::vector<int64_t>& cols, int64_t k, int64_t r0,
                 int64_t r1) {
  double acc = 0;
  for (int64_t r = r0; r < r1; ++r) {
    double ss = 0;
    for (int64_t c : cols) ss += s[c * k + r] * s[c * k + r];
    const double seg = std::sqrt(ss) / static_cast<double>(cols.size());
    acc += seg * seg;
  }
  return std::sqrt(acc / static_cast<double>(r1 - r0));
}

}  // namespace

TEST_CASE("check_mask_problem rejects a bad unit and a unit that does not compose with k_align", "[mask][unit]") {
  std::vector<double> s(8, 1.0);
  CHECK_THAT(check_mask_problem(unit_problem(s, 2, 4, 2, 1, 0)), Catch::Contains("unit must be positive, got 0"));
  CHECK_THAT(check_mask_problem(unit_problem(s, 2, 4, 2, 1, -3)), Catch::Contains("unit must be positive, got -3"));
  CHECK_THAT(check_mask_problem(unit_problem(s, 2, 4, 2, 6, 4)),
             Catch::Contains("k_align and unit must divide one another, got k_align=6, unit=4"));
  CHECK(check_mask_problem(unit_problem(s, 2, 4, 2, 16, 8)).empty());  // k_align a multiple of unit
  CHECK(check_mask_problem(unit_problem(s, 2, 4, 2, 4, 8)).empty());   // k_align divides unit
  CHECK(check_mask_problem(unit_problem(s, 2, 4, 2, 1, 64)).empty());  // unit > k: one partial run
  bool m[8];
  CHECK_THROWS_WITH(tile_mask_by_sparsity(unit_problem(s, 2, 4, 2, 1, 0), 0.5, 0.0, m),
                    Catch::Contains("unit must be positive"));
  CHECK_THROWS_WITH(tile_mask_by_threshold(unit_problem(s, 2, 4, 2, 3, 2), 0.5, false, 0.0, m),
                    Catch::Contains("k_align and unit must divide one another"));
}

TEST_CASE("unit_scores is the RMS of each aligned run's segment scores, the last run partial", "[mask][unit]") {
  std::vector<double> s(10, 1.0);
  const auto p = unit_problem(s, 2, 5, 1, 1, 2);  // k = 5, runs {0,1} {2,3} {4}
  CHECK(num_units(p) == 3);
  const std::vector<double> seg{3, 4, 1, 1, 7,   // tile 0
                                0, 0, 6, 8, 2};  // tile 1
  const auto us = unit_scores(p, seg);
  REQUIRE(us.size() == 6);
  CHECK(us[0] == Approx(std::sqrt((9.0 + 16.0) / 2)));
  CHECK(us[1] == Approx(1.0));
  CHECK(us[2] == Approx(7.0));  // partial run: its own length
  CHECK(us[3] == 0.0);
  CHECK(us[4] == Approx(std::sqrt((36.0 + 64.0) / 2)));
  CHECK(us[5] == Approx(2.0));
  CHECK(unit_scores(unit_problem(s, 2, 5, 1, 1, 1), seg) == seg);  // unit 1: the segment scores exactly
  CHECK(num_units(unit_problem(s, 2, 5, 1, 1, 8)) == 1);
  CHECK(num_units(unit_problem(s, 2, 0, 1, 1, 8)) == 0);
}

TEST_CASE("keep_rows_by_count with unit prunes whole aligned runs, counting the partial run's length",
          "[mask][unit]") {
  // one tile of width 2, k = 7, unit = 3: runs {0,1,2} {3,4,5} {6}
  std::vector<double> s(14, 1.0);
  const auto p = unit_problem(s, 2, 7, 2, 1, 3);
  const std::vector<int64_t> cols{0, 1};
  // run scores: RMS(0.1, 0.9, 0.2) ~ 0.54, RMS(0.3, 0.3, 0.3) = 0.3, 0.05 (partial)
  const std::vector<double> seg{0.1, 0.9, 0.2, 0.3, 0.3, 0.3, 0.05};
  // target 2 elements: the partial run (1 feature x width 2) exactly
  CHECK(keep_rows_by_count(p, cols, seg, 2) == std::vector<uint8_t>{1, 1, 1, 1, 1, 1, 0});
  // target 8: partial run (2), then run {3,4,5} (6) -> 8; the best single feature 1 goes with its run
  CHECK(keep_rows_by_count(p, cols, seg, 8) == std::vector<uint8_t>{1, 1, 1, 0, 0, 0, 0});
  CHECK(keep_rows_by_count(p, cols, seg, 14) == std::vector<uint8_t>(7, 0));
  // with k_align = 6 = 2 runs: groups from the bottom are {partial} (3 % 2 = 1 run), then 2 runs
  const auto p6 = unit_problem(s, 2, 7, 2, 6, 3);
  CHECK(keep_rows_by_count(p6, cols, seg, 8) == std::vector<uint8_t>{1, 1, 1, 1, 1, 1, 0});
  CHECK(keep_rows_by_count(p6, cols, seg, 12) == std::vector<uint8_t>(7, 0));
  // threshold: keep runs whose score >= 0.3 (a tie is kept)
  CHECK(keep_rows_by_threshold(p, cols, seg, 0.3) == std::vector<uint8_t>{1, 1, 1, 1, 1, 1, 0});
  CHECK(keep_rows_by_threshold(p, cols, seg, 0.31) == std::vector<uint8_t>{1, 1, 1, 0, 0, 0, 0});
}

TEST_CASE("tile_mask_by_sparsity with unit: properties over random problems", "[mask][unit]") {
  std::mt19937_64 rng(4321);
  const int64_t units[] = {2, 3, 4, 8};
  int checked = 0;
  for (int iter = 0; iter < 300; ++iter) {
    const int64_t n = 1 + rng() % 40, k = 1 + rng() % 40, tile = 1 + rng() % 12, unit = units[rng() % 4];
    const int64_t k_align = (rng() % 3 == 0) ? unit * (1 + rng() % 3) : 1;
    const double sparsity = std::uniform_real_distribution<double>(0.0, 0.95)(rng);
    const double col_sparsity = (rng() % 3 == 0) ? sparsity * std::uniform_real_distribution<double>(0.0, 1.0)(rng) : 0.0;
    const auto s = random_scores(n, k, rng());
    const auto mask = run_sparsity(unit_problem(s, n, k, tile, k_align, unit), sparsity, col_sparsity);
    INFO("n=" << n << " k=" << k << " tile=" << tile << " unit=" << unit << " k_align=" << k_align
              << " sparsity=" << sparsity << " col_sparsity=" << col_sparsity);
    REQUIRE(is_tile_wise(mask, n, k, tile));
    REQUIRE(runs_whole(mask, n, k, unit));

    // kept runs per feature: 0, all, or a multiple of k_align / unit
    const int64_t U = (k + unit - 1) / unit, a = std::max<int64_t>(1, k_align / unit);
    std::vector<int64_t> kept_cols;
    for (int64_t c = 0; c < n; ++c) {
      int64_t runs = 0;
      for (int64_t b = 0; b < k; b += unit) runs += mask[c * k + b];
      REQUIRE((runs % a == 0 || runs == U));
      if (runs > 0) kept_cols.push_back(c);
    }

    // inside each tile of kept columns, every kept run outranks every pruned
    // one when groups are single runs (k_align <= unit)
    if (a == 1) {
      for (size_t t0 = 0; t0 < kept_cols.size(); t0 += tile) {
        const std::vector<int64_t> cols(kept_cols.begin() + t0,
                                        kept_cols.begin() + std::min(kept_cols.size(), t0 + tile));
        double min_kept = INFINITY, max_pruned = -INFINITY;
        for (int64_t b = 0; b < k; b += unit) {
          const double sc = run_score(s, cols, k, b, std::min(k, b + unit));
          if (mask[cols[0] * k + b]) min_kept = std::min(min_kept, sc);
          else max_pruned = std::max(max_pruned, sc);
        }
        REQUIRE(max_pruned <= min_kept * (1 + 1e-12));
      }
    }

    // achieved sparsity within half a group (widest tile x max(k_align, unit) features)
    const int64_t target = std::llround(sparsity * static_cast<double>(n * k));
    const int64_t n_prune = col_sparsity > 0 ? std::min<int64_t>(std::llround(col_sparsity * n), target / k) : 0;
    const int64_t pruned = n * k - count_kept(mask);
    const int64_t group = std::min(tile, n - n_prune) * std::min(std::max(k_align, unit), k);
    REQUIRE(2 * std::llabs(pruned - target) <= group);
    ++checked;
  }
  CHECK(checked == 300);
}

TEST_CASE("tile_mask_by_sparsity with unit keeps the best runs (1-D, full tiles and runs)", "[mask][unit]") {
  // every group has tile x unit elements: brute force = prune the P lowest
  // runs of all tiles, P the smallest count nearest the target.
  std::mt19937_64 rng(17);
  for (int iter = 0; iter < 100; ++iter) {
    const int64_t tile = 1 + rng() % 8, T = 1 + rng() % 5, n = tile * T, unit = 2 + rng() % 4, U = 1 + rng() % 6;
    const int64_t k = unit * U;
    const double sparsity = std::uniform_real_distribution<double>(0.0, 0.95)(rng);
    const auto s = random_scores(n, k, rng());
    const auto mask = run_sparsity(unit_problem(s, n, k, tile, 1, unit), sparsity, 0.0);
    std::vector<std::pair<double, int64_t>> runs;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int64_t> cols(tile);
      std::iota(cols.begin(), cols.end(), t * tile);
      for (int64_t u = 0; u < U; ++u) runs.push_back({run_score(s, cols, k, u * unit, (u + 1) * unit), t * U + u});
    }
    std::sort(runs.begin(), runs.end());
    const int64_t target = std::llround(sparsity * n * k), per = tile * unit;
    int64_t best = 0;
    for (int64_t P = 0; P <= T * U; ++P)
      if (std::llabs(P * per - target) < std::llabs(best * per - target)) best = P;
    std::vector<char> expected(n * k, 1);
    for (int64_t i = 0; i < best; ++i) {
      const int64_t t = runs[i].second / U, u = runs[i].second % U;
      for (int64_t j = 0; j < tile; ++j)
        for (int64_t r = u * unit; r < (u + 1) * unit; ++r) expected[(t * tile + j) * k + r] = 0;
    }
    INFO("n=" << n << " k=" << k << " tile=" << tile << " unit=" << unit << " sparsity=" << sparsity);
    REQUIRE(mask == expected);
  }
}

TEST_CASE("tile_mask_by_threshold with unit keeps a run iff its score >= threshold", "[mask][unit]") {
  std::mt19937_64 rng(23);
  for (int iter = 0; iter < 100; ++iter) {
    const int64_t n = 1 + rng() % 30, k = 1 + rng() % 30, tile = 1 + rng() % 8, unit = 2 + rng() % 7;
    const auto s = random_scores(n, k, rng());
    const auto p = unit_problem(s, n, k, tile, 1, unit);
    std::vector<int64_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    auto us = unit_scores(p, segment_scores(p, all));
    std::sort(us.begin(), us.end());
    const double thr = us[us.size() / 2];
    const auto mask = run_threshold(p, thr, false, 0.0);
    std::vector<char> expected(n * k, 0);
    for (int64_t t0 = 0; t0 < n; t0 += tile) {
      const std::vector<int64_t> cols(all.begin() + t0, all.begin() + std::min(n, t0 + tile));
      for (int64_t b = 0; b < k; b += unit) {
        const bool keep = run_score(s, cols, k, b, std::min(k, b + unit)) >= thr;
        for (int64_t c : cols)
          for (int64_t r = b; r < std::min(k, b + unit); ++r) expected[c * k + r] = keep;
      }
    }
    INFO("n=" << n << " k=" << k << " tile=" << tile << " unit=" << unit);
    REQUIRE(mask == expected);
  }
}

TEST_CASE("tile_mask_by_sparsity with unit > k keeps every tile whole or empty", "[mask][unit]") {
  const auto s = random_scores(12, 5, 9);
  const auto m = run_sparsity(unit_problem(s, 12, 5, 4, 1, 8), 0.5, 0.0);
  for (int64_t c = 0; c < 12; ++c) {
    const auto kept = std::count(m.begin() + c * 5, m.begin() + c * 5 + 5, 1);
    REQUIRE((kept == 0 || kept == 5));
  }
  // 3 tiles of 20 weights, target 30: pruning a second tile (40) gets no
  // closer than one (20), so one tile goes
  CHECK(count_kept(m) == 40);
}
