// Catch2 tests of the torch-free packed format (csrc/core/tile_layout.h):
// build_layout, every error path of validate_layout, the LayoutView helpers,
// and pack/unpack against docs/format.md re-implemented here.
#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/tile_layout.h"

using namespace tilesparse::core;

namespace {

// Mask [n, k] as a bool array.
struct Mask {
  int64_t n, k;
  std::unique_ptr<bool[]> m;
  Mask(int64_t n_, int64_t k_) : n(n_), k(k_), m(new bool[std::max<int64_t>(1, n_ * k_)]()) {}
  bool& at(int64_t c, int64_t r) { return m[c * k + r]; }
};

// A random tile-wise mask built directly: random kept features regrouped into
// tiles, random kept rows per tile (at least one).
Mask random_tw_mask(int64_t n, int64_t k, int64_t tile, double col_density, double row_density, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Mask mask(n, k);
  std::vector<int64_t> cols;
  for (int64_t c = 0; c < n; ++c)
    if (u(rng) < col_density) cols.push_back(c);
  for (size_t start = 0; start < cols.size(); start += tile) {
    std::vector<bool> keep(k);
    bool any = false;
    for (int64_t r = 0; r < k; ++r) any |= (keep[r] = u(rng) < row_density);
    if (!any && k > 0) keep[rng() % k] = true;
    for (size_t j = start; j < std::min(cols.size(), start + tile); ++j)
      for (int64_t r = 0; r < k; ++r) mask.at(cols[j], r) = keep[r];
  }
  return mask;
}

OwnedLayout build(const Mask& mask, int64_t tile, int64_t pad = 1) {
  OwnedLayout l;
  const std::string err = build_layout(mask.m.get(), mask.n, mask.k, tile, pad, l);
  INFO(err);
  REQUIRE(err.empty());
  return l;
}

// A valid hand-written layout of a [10, 6] weight, tile 4: tile 0 = cols
// 0..3 keeps rows {0, 2, 5}; tile 1 = cols {4, 6, 7, 8} (non-contiguous)
// keeps {1}; tile 2 = col {9} (partial) keeps all six rows.
OwnedLayout sample() {
  OwnedLayout l;
  l.cols = {0, 1, 2, 3, 4, 6, 7, 8, 9};
  l.row_offsets = {0, 3, 4, 10};
  l.rows = {0, 2, 5, 1, 0, 1, 2, 3, 4, 5};
  return l;
}

}  // namespace

TEST_CASE("build_layout matches docs/format.md", "[layout]") {
  // 6 features, tile 2, k 4: feature 2 fully pruned (2-D regrouping)
  Mask mask(6, 4);
  for (int c : {0, 1})
    for (int r : {1, 3}) mask.at(c, r) = true;
  for (int c : {3, 4})
    for (int r : {0}) mask.at(c, r) = true;
  for (int r : {0, 1, 2, 3}) mask.at(5, r) = true;
  const OwnedLayout l = build(mask, 2);
  CHECK(l.cols == std::vector<int32_t>{0, 1, 3, 4, 5});
  CHECK(l.row_offsets == std::vector<int32_t>{0, 2, 3, 7});
  CHECK(l.rows == std::vector<int32_t>{1, 3, 0, 0, 1, 2, 3});
  const LayoutView v = l.view(2);
  CHECK(v.num_tiles == 3);
  CHECK(num_values(v) == 2 * 2 + 2 * 1 + 1 * 4);
  CHECK(validate_layout(v, 6, 4).empty());
}

TEST_CASE("build_layout of empty and full masks", "[layout]") {
  Mask empty(5, 3);
  const OwnedLayout e = build(empty, 2);
  CHECK(e.cols.empty());
  CHECK(e.rows.empty());
  CHECK(e.row_offsets == std::vector<int32_t>{0});
  CHECK(num_values(e.view(2)) == 0);
  CHECK(validate_layout(e.view(2), 5, 3).empty());

  Mask full(5, 3);
  for (int64_t i = 0; i < 15; ++i) full.m[i] = true;
  const OwnedLayout f = build(full, 2);
  CHECK(f.cols == std::vector<int32_t>{0, 1, 2, 3, 4});
  CHECK(f.row_offsets == std::vector<int32_t>{0, 3, 6, 9});
  CHECK(num_values(f.view(2)) == 15);
}

TEST_CASE("build_layout rejects bad input with a message", "[layout]") {
  Mask mask(4, 3);
  mask.at(0, 0) = mask.at(1, 1) = true;
  OwnedLayout l;
  CHECK_THAT(build_layout(mask.m.get(), 4, 3, 0, 1, l), Catch::Contains("tile must be positive, got 0"));
  CHECK_THAT(build_layout(mask.m.get(), 4, 3, -2, 1, l), Catch::Contains("tile must be positive, got -2"));
  CHECK_THAT(build_layout(mask.m.get(), 4, 3, 1, 0, l), Catch::Contains("pad must be positive, got 0"));
  const std::string err = build_layout(mask.m.get(), 4, 3, 2, 8, l);
  CHECK_THAT(err, Catch::Contains("not tile-wise for tile=2"));
  CHECK_THAT(err, Catch::Contains("output feature 1"));
  CHECK_THAT(err, Catch::Contains("output feature 0"));
  CHECK_THAT(err, Catch::Contains("first difference at input feature 0"));
  CHECK(build_layout(mask.m.get(), 4, 3, 1, 8, l).empty());  // tile 1: always tile-wise
}

TEST_CASE("build_layout round trip on random masks", "[layout]") {
  std::mt19937_64 rng(5);
  for (int iter = 0; iter < 200; ++iter) {
    const int64_t n = rng() % 30, k = 1 + rng() % 20, tile = 1 + rng() % 9;
    const Mask mask = random_tw_mask(n, k, tile, 0.3 + 0.7 * (rng() % 2), 0.5, rng());
    const int64_t pad = iter % 2 ? 8 : 1;
    const OwnedLayout l = build(mask, tile, pad);
    const LayoutView v = l.view(tile);
    REQUIRE(validate_layout(v, n, k).empty());
    // unpack of all-ones is the mask again (padding slots ignored)
    std::vector<uint8_t> ones(num_values(v), 1), dense(n * k, 0);
    unpack<uint8_t>(v, ones.data(), k, dense.data());
    int64_t kept = 0;
    for (int64_t i = 0; i < n * k; ++i) {
      REQUIRE(dense[i] == (mask.m[i] ? 1 : 0));
      kept += mask.m[i];
    }
    REQUIRE(num_kept(v) == kept);
    for (int64_t t = 0; t < v.num_tiles; ++t) {
      REQUIRE(v.tile_rows(t) % pad == 0);
      REQUIRE(v.tile_rows(t) - v.tile_kept(t) < pad);
    }
    if (pad == 1) REQUIRE(num_values(v) == kept);
  }
}

TEST_CASE("build_layout pads each tile to a multiple of pad with its last kept feature", "[layout]") {
  // [5, 20] weight, tile 2: tile 0 keeps {1, 4, 19} (3 -> 8 slots), tile 1
  // keeps 16 features (no padding), tile 2 keeps nothing but feature 4
  // is pruned entirely, so it has no tile.
  Mask mask(5, 20);
  for (int c : {0, 1})
    for (int r : {1, 4, 19}) mask.at(c, r) = true;
  for (int c : {2, 3})
    for (int r = 0; r < 16; ++r) mask.at(c, r) = true;
  const OwnedLayout l = build(mask, 2, 8);
  CHECK(l.cols == std::vector<int32_t>{0, 1, 2, 3});
  CHECK(l.row_offsets == std::vector<int32_t>{0, 8, 24});
  CHECK(std::vector<int32_t>(l.rows.begin(), l.rows.begin() + 8) == std::vector<int32_t>{1, 4, 19, 19, 19, 19, 19, 19});
  const LayoutView v = l.view(2);
  CHECK(v.tile_rows(0) == 8);
  CHECK(v.tile_kept(0) == 3);
  CHECK(v.tile_kept(1) == 16);
  CHECK(num_values(v) == 2 * 8 + 2 * 16);
  CHECK(num_kept(v) == 2 * 3 + 2 * 16);
  REQUIRE(validate_layout(v, 5, 20).empty());

  // pack writes zero into padding; unpack ignores it (even when non-zero)
  std::vector<float> w(5 * 20);
  for (size_t i = 0; i < w.size(); ++i) w[i] = 1.0f + static_cast<float>(i);
  std::vector<float> values(num_values(v), -7.f);
  pack<float>(v, w.data(), 20, values.data());
  for (int j = 0; j < 2; ++j) {
    CHECK(values[j * 8 + 0] == w[j * 20 + 1]);
    CHECK(values[j * 8 + 2] == w[j * 20 + 19]);
    for (int r = 3; r < 8; ++r) CHECK(values[j * 8 + r] == 0.f);
  }
  values[5] = 123.f;  // a padding slot
  std::vector<float> dense(5 * 20, 0.f);
  unpack<float>(v, values.data(), 20, dense.data());
  CHECK(dense[0 * 20 + 19] == w[19]);
  zero_padding<float>(v, values.data());
  CHECK(values[5] == 0.f);
  // a mask keeping all 20 features of a [1, 20] weight pads past k (24 slots): valid
  Mask all(1, 20);
  for (int r = 0; r < 20; ++r) all.at(0, r) = true;
  const OwnedLayout la = build(all, 4, 8);
  CHECK(la.rows.size() == 24);
  CHECK(validate_layout(la.view(4), 1, 20).empty());
  CHECK(la.view(4).tile_kept(0) == 20);
}

TEST_CASE("validate_layout: padding only at a tile's end, only repeating its last feature", "[layout]") {
  OwnedLayout l;
  l.cols = {0};
  l.row_offsets = {0, 5};
  l.rows = {1, 3, 3, 3, 3};
  CHECK(validate_layout(l.view(4), 1, 6).empty());
  l.rows = {1, 3, 3, 4, 4};  // a repeat, then a new feature
  CHECK_THAT(validate_layout(l.view(4), 1, 6), Catch::Contains("rows[2] = 3 repeats the entry before it"));
  l.rows = {1, 3, 2, 2, 2};
  CHECK_THAT(validate_layout(l.view(4), 1, 6), Catch::Contains("rows[2] = 2 follows 3"));
}

TEST_CASE("LayoutView helpers", "[layout]") {
  const OwnedLayout l = sample();
  const LayoutView v = l.view(4);
  REQUIRE(v.num_tiles == 3);
  CHECK(v.tile_width(0) == 4);
  CHECK(v.tile_width(2) == 1);
  CHECK(v.tile_rows(0) == 3);
  CHECK(v.tile_rows(1) == 1);
  CHECK(v.tile_rows(2) == 6);
  CHECK(v.value_offset(0) == 0);
  CHECK(v.value_offset(1) == 12);
  CHECK(v.value_offset(2) == 16);
  CHECK(v.cols_contiguous(0));
  CHECK_FALSE(v.cols_contiguous(1));  // {4, 6, 7, 8}
  CHECK(v.cols_contiguous(2));
  CHECK(num_values(v) == 4 * 3 + 4 * 1 + 1 * 6);
  CHECK(validate_layout(v, 10, 6).empty());
}

TEST_CASE("validate_layout: every error path", "[layout]") {
  auto check = [](OwnedLayout l, int64_t tile, int64_t n, int64_t k, const std::string& expected) {
    const std::string err = validate_layout(l.view(tile), n, k);
    INFO("expected: " << expected << "\nactual: " << err);
    CHECK_THAT(err, Catch::Contains(expected));
  };
  const OwnedLayout ok = sample();
  REQUIRE(validate_layout(ok.view(4), 10, 6).empty());
  check(ok, 0, 10, 6, "tile must be positive, got 0");
  check(ok, 4, 8, 6, "cols has 9 entries but out_features is 8");
  check(ok, 2, 10, 6, "row_offsets must have ceil(len(cols) / tile) + 1 = 6 entries, got 4");
  check(ok, 5, 10, 6, "row_offsets must have ceil(len(cols) / tile) + 1 = 3 entries, got 4");
  OwnedLayout l = ok;
  l.row_offsets[0] = 1;
  check(l, 4, 10, 6, "row_offsets[0] must be 0, got 1");
  l = ok;
  l.row_offsets.back() = 9;
  check(l, 4, 10, 6, "row_offsets[-1] must equal len(rows) = 10, got 9");
  l = ok;
  l.cols[8] = 10;
  check(l, 4, 10, 6, "cols[8] = 10 is out of range [0, 10)");
  l = ok;
  l.cols[0] = -1;
  check(l, 4, 10, 6, "cols[0] = -1 is out of range [0, 10)");
  l = ok;
  std::swap(l.cols[1], l.cols[2]);
  check(l, 4, 10, 6, "cols must be strictly increasing, but cols[2] = 1 follows 2");
  l = ok;
  l.cols[5] = l.cols[4];
  check(l, 4, 10, 6, "cols must be strictly increasing, but cols[5] = 4 follows 4");
  l = ok;
  l.row_offsets = {0, 4, 3, 10};
  check(l, 4, 10, 6, "row_offsets must be non-decreasing within [0, len(rows)], but row_offsets[1:3] = [4, 3]");
  l = ok;
  l.row_offsets = {0, 3, 11, 10};
  check(l, 4, 10, 6, "row_offsets must be non-decreasing within [0, len(rows)], but row_offsets[1:3] = [3, 11]");
  l = ok;
  l.row_offsets = {0, 3, 3, 10};
  l.rows = {0, 2, 5, 0, 1, 2, 3, 4, 5, 6};  // tile 2 would keep 7 rows > k = 6
  check(l, 4, 10, 6, "rows[9] = 6 is out of range [0, 6)");
  l = ok;
  l.rows[3] = 6;
  check(l, 4, 10, 6, "rows[3] = 6 is out of range [0, 6)");
  l = ok;
  l.rows[0] = -3;
  check(l, 4, 10, 6, "rows[0] = -3 is out of range [0, 6)");
  l = ok;
  std::swap(l.rows[0], l.rows[1]);
  check(l, 4, 10, 6, "rows must be strictly increasing within a tile, but rows[1] = 0 follows 2 in tile 0");
  l = ok;
  l.rows[5] = l.rows[4];
  check(l, 4, 10, 6, "rows must be strictly increasing within a tile, but rows[5] = 0 repeats the entry before it "
                     "and is followed by rows[6] = 2 in tile 2");
}

TEST_CASE("validate_layout accepts tiles that keep no rows and the empty layout", "[layout]") {
  OwnedLayout l = sample();
  l.row_offsets = {0, 3, 3, 9};
  l.rows = {0, 2, 5, 0, 1, 2, 3, 4, 5};
  CHECK(validate_layout(l.view(4), 10, 6).empty());
  CHECK(num_values(l.view(4)) == 12 + 0 + 6);
  OwnedLayout e;
  e.row_offsets = {0};
  CHECK(validate_layout(e.view(4), 0, 0).empty());
  CHECK(validate_layout(e.view(4), 10, 6).empty());
}

TEST_CASE("pack and unpack follow the block layout", "[layout]") {
  const OwnedLayout l = sample();
  const LayoutView v = l.view(4);
  std::vector<double> w(60);
  for (int i = 0; i < 60; ++i) w[i] = 100.0 + i;  // w[c, r] = 100 + 6c + r
  std::vector<double> values(num_values(v), -1.0);
  pack<double>(v, w.data(), 6, values.data());
  // expected, written out from docs/format.md
  std::vector<double> expected;
  for (int c : {0, 1, 2, 3})
    for (int r : {0, 2, 5}) expected.push_back(100 + 6 * c + r);
  for (int c : {4, 6, 7, 8}) expected.push_back(100 + 6 * c + 1);
  for (int r = 0; r < 6; ++r) expected.push_back(100 + 6 * 9 + r);
  CHECK(values == expected);

  std::vector<double> dense(60, 0.0);
  unpack<double>(v, values.data(), 6, dense.data());
  for (int c = 0; c < 10; ++c)
    for (int r = 0; r < 6; ++r) {
      const bool kept = (c <= 3 && (r == 0 || r == 2 || r == 5)) || ((c == 4 || c == 6 || c == 7 || c == 8) && r == 1) ||
                        c == 9;
      CHECK(dense[c * 6 + r] == (kept ? w[c * 6 + r] : 0.0));
    }
}

TEST_CASE("unpack(pack(w)) == w * mask on random layouts", "[layout]") {
  std::mt19937_64 rng(17);
  std::normal_distribution<float> normal;
  for (int iter = 0; iter < 100; ++iter) {
    const int64_t n = 1 + rng() % 40, k = 1 + rng() % 25, tile = 1 + rng() % 10;
    const Mask mask = random_tw_mask(n, k, tile, rng() % 2 ? 1.0 : 0.6, 0.4, rng());
    const OwnedLayout l = build(mask, tile);
    const LayoutView v = l.view(tile);
    std::vector<float> w(n * k);
    for (auto& x : w) x = normal(rng);
    std::vector<float> values(num_values(v));
    pack<float>(v, w.data(), k, values.data());
    // packed order = row-major order of the kept entries
    size_t i = 0;
    for (int64_t e = 0; e < n * k; ++e)
      if (mask.m[e]) REQUIRE(values[i++] == w[e]);
    REQUIRE(i == values.size());
    std::vector<float> dense(n * k, 0.0f);
    unpack<float>(v, values.data(), k, dense.data());
    for (int64_t e = 0; e < n * k; ++e) REQUIRE(dense[e] == (mask.m[e] ? w[e] : 0.0f));
  }
}
