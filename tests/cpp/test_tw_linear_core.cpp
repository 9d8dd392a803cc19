// Catch2 tests of the torch-free CPU tile GEMM orchestration
// (csrc/core/tw_linear_cpu.h, and the AVX-512 and AVX2 kernels of
// csrc/core/tw_linear_avx512.h / tw_linear_avx2.h, each when the CPU has it;
// a kernel the CPU lacks is reported by a WARN naming it): forward, grad_input and
// grad_values against naive dense masked loops written here, for 1-D and 2-D
// layouts, tiles keeping no or all rows, M not a multiple of the block, and
// several ways of splitting the parallel loop.
//
// Everything that depends on the kernels' signatures lives in this one file
// (they are being optimised); the references only use the packed format.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/tile_layout.h"
#include "core/tw_linear_avx2.h"
#include "core/tw_linear_avx512.h"
#include "core/tw_linear_cpu.h"
#include "core/tw_linear_fused.h"
#include "format_reference.h"

using namespace tilesparse::core;

namespace {

// ---------------------------------------------------------------------------
// Problems and references
// ---------------------------------------------------------------------------
struct Problem {
  std::string name;
  int64_t n, k, tile;
  OwnedLayout layout;
  LayoutView view() const { return layout.view(tile); }
};

// A random tile-wise layout built from a mask: kept features (col_density)
// regrouped into tiles, random rows per tile; tile 0 keeps every row (the
// kernels' no-gather path). With drop_tile >= 0 that tile's rows are removed
// afterwards (k_t = 0, which build_layout never produces).
// Layouts are padded to multiples of `pad` slots (docs/format.md) unless pad = 1.
Problem make_problem(const std::string& name, int64_t n, int64_t k, int64_t tile, double col_density,
                     double row_density, uint64_t seed, int64_t drop_tile = -1, int64_t pad = 8) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::unique_ptr<bool[]> mask(new bool[std::max<int64_t>(1, n * k)]());
  std::vector<int64_t> cols;
  for (int64_t c = 0; c < n; ++c)
    if (c == 0 || u(rng) < col_density) cols.push_back(c);
  for (size_t start = 0; start < cols.size(); start += tile) {
    std::vector<bool> keep(k);
    bool any = false;
    for (int64_t r = 0; r < k; ++r) any |= (keep[r] = start == 0 || u(rng) < row_density);
    if (!any) keep[rng() % k] = true;
    for (size_t j = start; j < std::min(cols.size(), start + tile); ++j)
      for (int64_t r = 0; r < k; ++r) mask[cols[j] * k + r] = keep[r];
  }
  Problem p{name, n, k, tile, {}};
  const std::string err = build_layout(mask.get(), n, k, tile, pad, p.layout);
  REQUIRE(err.empty());
  if (drop_tile >= 0 && drop_tile + 1 < static_cast<int64_t>(p.layout.row_offsets.size())) {
    auto& ro = p.layout.row_offsets;
    auto& rows = p.layout.rows;
    const int32_t lo = ro[drop_tile], hi = ro[drop_tile + 1];
    rows.erase(rows.begin() + lo, rows.begin() + hi);
    for (size_t t = drop_tile + 1; t < ro.size(); ++t) ro[t] -= hi - lo;
  }
  REQUIRE(validate_layout(p.view(), n, k).empty());
  return p;
}

std::vector<Problem> problems() {
  std::vector<Problem> out;
  out.push_back(make_problem("1d, N % tile != 0", 37, 19, 8, 1.0, 0.4, 1));
  out.push_back(make_problem("2d, non-contiguous tiles", 41, 23, 4, 0.6, 0.5, 2));
  out.push_back(make_problem("2d with a tile keeping no rows", 30, 12, 4, 0.7, 0.5, 3, /*drop_tile=*/1));
  out.push_back(make_problem("K = 1", 9, 1, 4, 0.8, 1.0, 4));
  out.push_back(make_problem("single partial tile", 5, 16, 8, 1.0, 0.5, 5));
  out.push_back(make_problem("dense", 12, 7, 4, 1.0, 1.0, 6));
  out.push_back(make_problem("tile 1", 10, 9, 1, 0.7, 0.3, 7));
  // large K: the row block shrinks to 32 rows for double
  out.push_back(make_problem("large K", 20, 3000, 8, 0.8, 0.3, 8));
  out.push_back(make_problem("unpadded layout (pad 1)", 33, 21, 8, 0.8, 0.45, 9, -1, /*pad=*/1));
  return out;
}

// The layout with every tile's kept rows padded to a multiple of `align` by
// repeating the tile's last kept feature (docs/format.md), built here by hand.
Problem padded(const Problem& p, int64_t align) {
  Problem out{p.name + ", rows padded to x" + std::to_string(align), p.n, p.k, p.tile, {}};
  out.layout.cols = p.layout.cols;
  out.layout.row_offsets = {0};
  for (size_t t = 0; t + 1 < p.layout.row_offsets.size(); ++t) {
    const int32_t lo = p.layout.row_offsets[t], hi = p.layout.row_offsets[t + 1];
    out.layout.rows.insert(out.layout.rows.end(), p.layout.rows.begin() + lo, p.layout.rows.begin() + hi);
    for (int32_t r = hi - lo; hi > lo && r % align != 0; ++r) out.layout.rows.push_back(p.layout.rows[hi - 1]);
    out.layout.row_offsets.push_back(static_cast<int32_t>(out.layout.rows.size()));
  }
  return out;
}

// Dense W[n, k] (zeros where pruned) from the packed values, by the format's
// definition (tests/common/format_reference.h); padding slots are not weights.
template <typename T>
std::vector<double> dense_weight(const Problem& p, const std::vector<T>& values) {
  return tilesparse::format_reference::dense_weight(p.layout, p.n, p.k, p.tile, values);
}

// Packed values of a dense [n, k] matrix, by the format's definition.
std::vector<double> packed(const Problem& p, const std::vector<double>& dense) {
  return tilesparse::format_reference::packed(p.layout, p.k, p.tile, dense);
}

template <typename T>
std::vector<T> random_vector(int64_t size, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<T> v(size);
  for (auto& x : v) x = static_cast<T>(normal(rng));
  return v;
}

template <typename T>
std::vector<double> as_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// |actual - expected| <= tol * (1 + |expected|) elementwise, NaN fails.
template <typename T>
void require_close(const std::vector<T>& actual, const std::vector<double>& expected, double tol,
                   const std::string& what) {
  REQUIRE(actual.size() == expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    const double a = static_cast<double>(actual[i]);
    if (!(std::fabs(a - expected[i]) <= tol * (1.0 + std::fabs(expected[i])))) {
      FAIL(what << "[" << i << "] = " << a << ", expected " << expected[i]);
    }
  }
}

// y = x @ W^T + bias, gx = gy @ W, gW = gy^T @ x with naive loops in double.
struct Reference {
  std::vector<double> y, gx, gv;
};

template <typename T>
Reference reference(const Problem& p, int64_t m, const std::vector<T>& x, const std::vector<T>& values,
                    const std::vector<T>* bias, const std::vector<T>& gy) {
  const auto w = dense_weight(p, values);
  Reference r;
  r.y.assign(m * p.n, 0.0);
  r.gx.assign(m * p.k, 0.0);
  std::vector<double> gw(p.n * p.k, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < p.n; ++c) {
      double acc = bias ? static_cast<double>((*bias)[c]) : 0.0;
      for (int64_t q = 0; q < p.k; ++q) acc += static_cast<double>(x[i * p.k + q]) * w[c * p.k + q];
      r.y[i * p.n + c] = acc;
      const double g = static_cast<double>(gy[i * p.n + c]);
      for (int64_t q = 0; q < p.k; ++q) {
        r.gx[i * p.k + q] += g * w[c * p.k + q];
        gw[c * p.k + q] += g * static_cast<double>(x[i * p.k + q]);
      }
    }
  r.gv = packed(p, gw);
  return r;
}

// ---------------------------------------------------------------------------
// The ways of running the parallel loop
// ---------------------------------------------------------------------------
// The serial loop the header documents for tests.
const auto serial_for = [](int64_t b, int64_t e, auto&& f) { f(b, e); };
// One call per index, last index first: what several workers taking one chunk
// each, finishing in any order, look like.
const auto chunked_for = [](int64_t b, int64_t e, auto&& f) {
  for (int64_t i = e - 1; i >= b; --i) f(i, i + 1);
};

template <typename T>
double tolerance() {
  return std::is_same<T, double>::value ? 1e-10 : 2e-4;
}

template <typename T>
void run_generic(const Problem& p, int64_t m, bool with_bias, int64_t workers, bool chunked, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t nv = num_values(p.view());
  const auto x = random_vector<T>(m * p.k, rng);
  const auto values = random_vector<T>(nv, rng);
  const auto bias = random_vector<T>(p.n, rng);
  const auto gy = random_vector<T>(m * p.n, rng);
  const Reference ref = reference<T>(p, m, x, values, with_bias ? &bias : nullptr, gy);
  const T nan = std::numeric_limits<T>::quiet_NaN();  // outputs must be fully written
  std::vector<T> y(m * p.n, nan), gx(m * p.k, nan), gv(nv, nan);
  const LayoutView l = p.view();
  auto gemm = naive_gemm<T>;
  if (chunked) {
    tw_linear_forward<T>(l, x.data(), m, p.k, values.data(), with_bias ? bias.data() : nullptr, y.data(), p.n,
                         workers, gemm, chunked_for);
    tw_linear_grad_input<T>(l, gy.data(), m, p.n, values.data(), gx.data(), p.k, workers, gemm, chunked_for);
    tw_linear_grad_values<T>(l, gy.data(), x.data(), m, p.n, p.k, gv.data(), workers, gemm, chunked_for);
  } else {
    tw_linear_forward<T>(l, x.data(), m, p.k, values.data(), with_bias ? bias.data() : nullptr, y.data(), p.n,
                         workers, gemm, serial_for);
    tw_linear_grad_input<T>(l, gy.data(), m, p.n, values.data(), gx.data(), p.k, workers, gemm, serial_for);
    tw_linear_grad_values<T>(l, gy.data(), x.data(), m, p.n, p.k, gv.data(), workers, gemm, serial_for);
  }
  const double tol = tolerance<T>() * std::sqrt(static_cast<double>(std::max<int64_t>({p.k, p.n, m, 1})));
  require_close(y, ref.y, tol, "y");
  require_close(gx, ref.gx, tol, "grad_input");
  require_close(gv, ref.gv, tol, "grad_values");
}

}  // namespace

// ---------------------------------------------------------------------------
// Generic path (tw_linear_cpu.h) with naive_gemm
// ---------------------------------------------------------------------------
TEST_CASE("naive_gemm implements the documented Gemm contract", "[tw_linear]") {
  // A [2, 3], B [3, 2] (row-major), C = A @ B + beta * C, with transposed storage.
  const double a[6] = {1, 2, 3, 4, 5, 6}, at[6] = {1, 4, 2, 5, 3, 6};
  const double b[6] = {1, 0, 0, 1, 1, 1}, bt[6] = {1, 0, 1, 0, 1, 1};
  const double expected[4] = {4, 5, 10, 11};
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      double c[4] = {1, 1, 1, 1};
      naive_gemm<double>(ta, tb, 2, 2, 3, ta ? at : a, ta ? 2 : 3, tb ? bt : b, tb ? 3 : 2, 0.0, c, 2);
      for (int i = 0; i < 4; ++i) CHECK(c[i] == expected[i]);
      naive_gemm<double>(ta, tb, 2, 2, 3, ta ? at : a, ta ? 2 : 3, tb ? bt : b, tb ? 3 : 2, 1.0, c, 2);
      for (int i = 0; i < 4; ++i) CHECK(c[i] == 2 * expected[i]);
    }
}

TEST_CASE("m_block_size stays within [1, 256] and splits M across workers", "[tw_linear]") {
  for (int64_t m : {1, 2, 15, 17, 100, 255, 256, 257, 1000, 100000})
    for (int64_t k : {1, 64, 768, 3000, 100000})
      for (int64_t workers : {1, 2, 3, 8, 64}) {
        const int64_t mb = m_block_size(m, k, 8, workers);
        INFO("m=" << m << " k=" << k << " workers=" << workers << " block=" << mb);
        CHECK(mb >= 1);
        CHECK(mb <= 256);
        CHECK(mb <= (m + workers - 1) / workers);
      }
}

TEST_CASE("generic tile GEMM matches the dense masked reference", "[tw_linear]") {
  auto all = problems();
  for (const Problem& p : problems()) all.push_back(padded(p, 8));
  for (const Problem& p : all) {
    for (int64_t m : {0, 1, 17, 300}) {
      if (p.k > 1000 && m > 100) continue;  // keep the naive reference cheap
      for (int64_t workers : {1, 3}) {
        for (bool with_bias : {true, false}) {
          for (bool chunked : {false, true}) {
            INFO(p.name << ": m=" << m << " workers=" << workers << " bias=" << with_bias << " chunked=" << chunked);
            run_generic<double>(p, m, with_bias, workers, chunked, 1000 + m + workers);
            run_generic<float>(p, m, with_bias, workers, chunked, 2000 + m + workers);
          }
        }
      }
    }
  }
}

TEST_CASE("generic tile GEMM: M not a multiple of small row blocks (large K)", "[tw_linear]") {
  // k = 3000 doubles: 32-row blocks, so m = 100 is 3 full blocks and a 4-row one
  const Problem p = make_problem("large K", 16, 3000, 4, 0.7, 0.2, 9);
  REQUIRE(m_block_size(100, 3000, sizeof(double), 1) == 32);
  for (bool chunked : {false, true}) run_generic<double>(p, 100, true, 1, chunked, 11);
  run_generic<double>(p, 100, true, 5, true, 12);
}

TEST_CASE("generic tile GEMM on the empty layout writes bias or zeros", "[tw_linear]") {
  Problem p{"empty", 6, 5, 4, {}};
  p.layout.row_offsets = {0};
  run_generic<double>(p, 7, true, 2, false, 3);
  run_generic<double>(p, 7, false, 2, true, 4);
}

// ---------------------------------------------------------------------------
// Fused float32 kernels (AVX-512, AVX2), each when the CPU has it
// ---------------------------------------------------------------------------
namespace {

using Pf = std::function<void(int64_t, int64_t, const std::function<void(int64_t, int64_t)>&)>;

// One ISA's kernels behind one signature (avx512 and avx2 share ParallelFn).
struct FusedKernels {
  const char* name;
  bool (*available)();
  void (*forward)(const LayoutView&, const float*, int64_t, int64_t, const float*, const float*, float*, int64_t,
                  int64_t, const Pf&);
  void (*grad_input)(const LayoutView&, const float*, int64_t, int64_t, const float*, float*, int64_t, int64_t,
                     const Pf&);
  std::function<void(const LayoutView&, const float*, const float*, int64_t, int64_t, int64_t, float*, int64_t,
                     const Pf&)>
      grad_values;
};

const FusedKernels kAvx512{"avx512", &avx512::available, &avx512::forward, &avx512::grad_input,
                           &avx512::grad_values};
const FusedKernels kAvx2{"avx2", &avx2::available, &avx2::forward, &avx2::grad_input, &avx2::grad_values};

// Problems for the fused kernels: the shared ones, their padded forms, and
// shapes that reach the kernels' panel, chunk and edge cases.
std::vector<Problem> fused_problems() {
  auto all = problems();
  for (const Problem& p : problems())
    if (p.k <= 1000) all.push_back(padded(p, 8));
  all.push_back(make_problem("wide tiles", 70, 40, 16, 0.7, 0.3, 21));
  // > 1024 kept rows per tile (several reduction chunks) and tiles wider than
  // one output panel, with and without regrouped (non-contiguous) outputs
  all.push_back(make_problem("long tiles, 1d", 150, 2600, 80, 1.0, 0.6, 22));
  all.push_back(make_problem("long tiles, 2d", 150, 2600, 80, 0.9, 0.6, 23));
  all.push_back(padded(make_problem("long tiles, 2d", 150, 2600, 80, 0.9, 0.6, 24), 8));
  // tile 64: whole 16-output panels; 37 kept rows per tile group: remainder of 6
  all.push_back(make_problem("tile 64, 1d", 192, 100, 64, 1.0, 0.37, 25));
  return all;
}

// One problem through the three kernels, against the float64 reference.
void check_fused_case(const FusedKernels& kern, const Problem& p, int64_t m, int64_t workers, bool with_bias,
                      const Pf& pf, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t nv = num_values(p.view());
  const auto x = random_vector<float>(m * p.k, rng);
  const auto values = random_vector<float>(nv, rng);
  const auto bias = random_vector<float>(p.n, rng);
  const auto gy = random_vector<float>(m * p.n, rng);
  const Reference ref = reference<float>(p, m, x, values, with_bias ? &bias : nullptr, gy);
  const float nan = std::numeric_limits<float>::quiet_NaN();  // outputs must be fully written
  std::vector<float> y(m * p.n, nan), gx(m * p.k, nan), gv(nv, nan);
  const LayoutView l = p.view();
  kern.forward(l, x.data(), m, p.k, values.data(), with_bias ? bias.data() : nullptr, y.data(), p.n,
               workers, pf);
  kern.grad_input(l, gy.data(), m, p.n, values.data(), gx.data(), p.k, workers, pf);
  kern.grad_values(l, gy.data(), x.data(), m, p.n, p.k, gv.data(), workers, pf);
  const double tol = 2e-4 * std::sqrt(static_cast<double>(std::max<int64_t>({p.k, p.n, m, 1})));
  require_close(y, ref.y, tol, "y");
  require_close(gx, ref.gx, tol, "grad_input");
  require_close(gv, ref.gv, tol, "grad_values");
}

void run_fused(const FusedKernels& kern) {
  if (!kern.available()) {
    WARN("this CPU lacks " << kern.name << ": the " << kern.name << " kernels were NOT tested (skipped)");
    return;
  }
  const Pf serial = [](int64_t b, int64_t e, const std::function<void(int64_t, int64_t)>& f) { f(b, e); };
  const Pf chunked = [](int64_t b, int64_t e, const std::function<void(int64_t, int64_t)>& f) {
    for (int64_t i = e - 1; i >= b; --i) f(i, i + 1);
  };
  int64_t runs = 0;
  for (const Problem& p : fused_problems()) {
    for (int64_t m : {0, 1, 13, 300}) {
      if (p.k > 1000 && m > 100) continue;
      for (int64_t workers : {1, 3}) {
        for (bool with_bias : {true, false}) {
          for (const Pf* pf : {&serial, &chunked}) {
            INFO(kern.name << ": " << p.name << ": m=" << m << " workers=" << workers << " bias=" << with_bias
                           << " chunked=" << (pf == &chunked));
            check_fused_case(kern, p, m, workers, with_bias, *pf, 3000 + m + workers);
            ++runs;
          }
        }
      }
    }
  }
  SUCCEED(kern.name << " kernels ran on this CPU: " << runs << " cases matched the float64 reference");
}

}  // namespace

TEST_CASE("AVX-512 kernels match the dense masked reference", "[tw_linear][avx512]") { run_fused(kAvx512); }

TEST_CASE("AVX2 kernels match the dense masked reference", "[tw_linear][avx2]") { run_fused(kAvx2); }

// A layer large enough that the weight packs run through parallel_for
// (fused::kSerialPackElems), with every task of a parallel_for on its own
// thread at once, so the on-demand work split (fused::dynamic_for) races for
// real; and a 3-tile 384x384 layer (fewer tiles than grad_values wants items).
TEST_CASE("fused kernels: parallel packing and concurrent workers", "[tw_linear][avx2][avx512]") {
  const Pf threads = [](int64_t b, int64_t e, const std::function<void(int64_t, int64_t)>& f) {
    std::vector<std::thread> pool;
    for (int64_t i = b; i < e; ++i) pool.emplace_back([&f, i] { f(i, i + 1); });
    for (auto& t : pool) t.join();
  };
  const Problem big = make_problem("large, 1d", 640, 600, 128, 1.0, 0.7, 31);
  const Problem big2d = padded(make_problem("large, 2d", 640, 600, 64, 0.8, 0.7, 32), 8);
  const Problem attn = make_problem("384x384, 3 tiles", 384, 384, 128, 1.0, 0.25, 33);
  REQUIRE(num_values(big.view()) >= fused::kSerialPackElems);
  for (const FusedKernels* kern : {&kAvx512, &kAvx2}) {
    if (!kern->available()) {
      WARN("this CPU lacks " << kern->name << ": skipped");
      continue;
    }
    for (const Problem* p : {&big, &big2d, &attn})
      for (int64_t workers : {2, 3}) {
        INFO(kern->name << ": " << p->name << ": workers=" << workers);
        check_fused_case(*kern, *p, 23, workers, true, threads, 4000 + workers);
        check_fused_case(*kern, *p, 401, workers, false, threads, 5000 + workers);
      }
  }
}

// The inference cache's path (pack_forward once, forward_packed per call) against the packing forward.
template <typename Pack, typename Packed, typename Forward>
void check_packed_forward(const char* name, bool available, Pack pack, Packed packed, Forward forward) {
  if (!available) {
    WARN("this CPU lacks " << name << ": the " << name << " packed forward was NOT tested (skipped)");
    return;
  }
  const Pf serial = [](int64_t b, int64_t e, const std::function<void(int64_t, int64_t)>& f) { f(b, e); };
  const Problem p = make_problem("2d", 90, 50, 32, 0.8, 0.4, 31);
  std::mt19937_64 rng(5);
  const int64_t m = 20;
  const auto x = random_vector<float>(m * p.k, rng);
  const auto values = random_vector<float>(num_values(p.view()), rng);
  ForwardPanels panels;
  pack(p.view(), values.data(), panels, serial);
  std::vector<float> a(m * p.n), b(m * p.n);
  forward(p.view(), x.data(), m, p.k, values.data(), nullptr, a.data(), p.n, 1, serial);
  packed(p.view(), panels, x.data(), m, p.k, nullptr, b.data(), p.n, 1, serial);
  CHECK(a == b);
  CHECK(panels.bytes() >= static_cast<int64_t>(sizeof(float)) * num_values(p.view()));
}

TEST_CASE("AVX2 forward from cached panels equals the packing forward", "[tw_linear][avx2]") {
  check_packed_forward("avx2", avx2::available(), avx2::pack_forward, avx2::forward_packed, avx2::forward);
}

TEST_CASE("AVX-512 forward from cached panels equals the packing forward", "[tw_linear][avx512]") {
  check_packed_forward("avx512", avx512::available(), avx512::pack_forward, avx512::forward_packed, avx512::forward);
}

TEST_CASE("is_dense_layout recognises only the identity layout", "[tw_linear]") {
  const Problem dense = make_problem("dense", 12, 7, 4, 1.0, 1.0, 6, -1, /*pad=*/1);
  CHECK(is_dense_layout(dense.view(), 12, 7));
  // every feature kept but padded to 8 slots: not W's layout (values has padding)
  CHECK_FALSE(is_dense_layout(make_problem("dense, padded", 12, 7, 4, 1.0, 1.0, 6).view(), 12, 7));
  // k entries per tile that repeat a feature: as many values as W, but not W
  Problem dup = dense;
  dup.layout.rows[5] = 4;
  CHECK_FALSE(is_dense_layout(dup.view(), 12, 7));
  CHECK_FALSE(keeps_all_rows(dup.view(), 0, 7));
  CHECK_FALSE(is_dense_layout(make_problem("1d", 37, 19, 8, 1.0, 0.4, 1).view(), 37, 19));
}
