// Catch2 tests of the torch-free TEW residue kernels (csrc/core/csr_residue.h):
// forward, grad_input and grad_values against a naive dense loop written here,
// for row counts and sample counts that are not multiples of the 64-row and
// 64-sample blocks, no rows or no columns at all,
// empty rows, no entries at all, shuffled column order, and
// parallel loops split serially, into single iterations and over threads.
// The AVX2 float32 kernels (csr_residue_avx2.h) run the same cases against the
// same reference, plus sample counts at every 8-lane and 64-block edge; on a
// CPU without AVX2 a WARN says they were not tested. The AVX2 transposes (the
// feature-major copies and the forward's store) against index arithmetic. Also the CSR validation messages.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "core/csr_residue.h"
#include "core/csr_residue_avx2.h"

using namespace tilesparse::core;

namespace {

struct Csr {
  int64_t rows, cols;
  std::vector<int32_t> row_ptr, col;
  std::vector<double> dense;  // [rows, cols], 0 off the pattern
  std::vector<double> values;
  CsrView view() const {
    return CsrView{row_ptr.data(), col.data(), rows, cols, static_cast<int64_t>(col.size())};
  }
};

Csr random_csr(int64_t rows, int64_t cols, double density, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::normal_distribution<double> nd;
  Csr c{rows, cols, {0}, {}, std::vector<double>(rows * cols, 0.0), {}};
  for (int64_t n = 0; n < rows; ++n) {
    std::vector<int32_t> kept;
    if (n % 7 != 3)  // some rows empty
      for (int64_t k = 0; k < cols; ++k)
        if (u(rng) < density) kept.push_back(static_cast<int32_t>(k));
    std::shuffle(kept.begin(), kept.end(), rng);  // the kernels must not rely on column order
    for (int32_t k : kept) {
      const double v = nd(rng);
      c.col.push_back(k);
      c.values.push_back(v);
      c.dense[n * cols + k] = v;
    }
    c.row_ptr.push_back(static_cast<int32_t>(c.col.size()));
  }
  return c;
}

std::vector<double> randn(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd;
  std::vector<double> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// feature-major copy of a sample-major [M, F] matrix
std::vector<double> transpose(const std::vector<double>& a, int64_t m, int64_t f) {
  std::vector<double> t(a.size());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < f; ++j) t[j * m + i] = a[i * f + j];
  return t;
}

using Par = std::function<void(int64_t, int64_t, const std::function<void(int64_t, int64_t)>&)>;

std::vector<std::pair<const char*, Par>> splits() {
  return {
      {"serial", [](int64_t b, int64_t e, const std::function<void(int64_t, int64_t)>& f) { if (b < e) f(b, e); }},
      {"one iteration each",
       [](int64_t b, int64_t e, const std::function<void(int64_t, int64_t)>& f) {
         for (int64_t i = b; i < e; ++i) f(i, i + 1);
       }},
      {"three threads",
       [](int64_t b, int64_t e, const std::function<void(int64_t, int64_t)>& f) {
         std::vector<std::thread> ts;
         const int64_t n = e - b, per = (n + 2) / 3;
         for (int64_t s = b; s < e; s += per) ts.emplace_back([&, s] { f(s, std::min(e, s + per)); });
         for (auto& t : ts) t.join();
       }},
  };
}

struct Shape { int64_t rows, cols, m; double density; };

// y = x R^T, gx = g R and dR = the entries of g^T x, by dense loops.
struct Reference {
  std::vector<double> x, g, y, gx, dv;
  Reference(const Csr& c, int64_t M) : x(randn(M * c.cols, 11)), g(randn(M * c.rows, 12)) {
    const int64_t N = c.rows, K = c.cols;
    y.assign(M * N, 0.0);
    gx.assign(M * K, 0.0);
    dv.assign(c.col.size(), 0.0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          y[m * N + n] += x[m * K + k] * c.dense[n * K + k];
          gx[m * K + k] += g[m * N + n] * c.dense[n * K + k];
        }
    for (int64_t n = 0; n < N; ++n)
      for (int32_t j = c.row_ptr[n]; j < c.row_ptr[n + 1]; ++j)
        for (int64_t m = 0; m < M; ++m) dv[j] += g[m * N + n] * x[m * K + c.col[j]];
  }
};

std::vector<float> to_float(const std::vector<double>& a) { return std::vector<float>(a.begin(), a.end()); }

}  // namespace

TEST_CASE("csr residue kernels match a dense reference", "[csr]") {
  const Shape shape = GENERATE(Shape{13, 10, 5, 0.3}, Shape{130, 70, 63, 0.05}, Shape{70, 200, 130, 0.02},
                               Shape{9, 7, 4, 0.0}, Shape{65, 64, 64, 0.5}, Shape{1, 1, 1, 1.0}, Shape{20, 12, 0, 0.4},
                               Shape{6, 0, 3, 0.5}, Shape{0, 5, 3, 0.5});
  const Csr c = random_csr(shape.rows, shape.cols, shape.density, 7u + static_cast<uint32_t>(shape.rows));
  const int64_t M = shape.m, N = c.rows, K = c.cols;
  const Reference ref(c, M);
  const std::vector<double> xt = transpose(ref.x, M, K), gt = transpose(ref.g, M, N);

  for (auto& [name, par] : splits()) {
    CAPTURE(name, N, K, M);
    std::vector<double> y(M * N, -1.0), gx(M * K, -1.0), dv(c.col.size(), -1.0);
    csr_forward(xt.data(), M, c.values.data(), c.view(), y.data(), par);
    csr_grad_input(gt.data(), M, c.values.data(), c.view(), gx.data(), par);
    csr_grad_values_t(gt.data(), xt.data(), M, c.view(), dv.data(), par);
    for (int64_t i = 0; i < M * N; ++i) REQUIRE(y[i] == Approx(ref.y[i]).margin(1e-12));
    for (int64_t i = 0; i < M * K; ++i) REQUIRE(gx[i] == Approx(ref.gx[i]).margin(1e-12));
    for (size_t j = 0; j < dv.size(); ++j) REQUIRE(dv[j] == Approx(ref.dv[j]).margin(1e-12));
  }
}

TEST_CASE("AVX2 csr residue kernels match a dense reference", "[csr][avx2]") {
  if (!avx2::available()) {
    WARN("this CPU lacks avx2+fma: the AVX2 csr residue kernels were NOT tested (skipped)");
    return;
  }
  // M around every 8-lane and 64-sample block edge; the shapes of the generic case
  const Shape shape = GENERATE(Shape{13, 10, 5, 0.3}, Shape{130, 70, 63, 0.05}, Shape{70, 200, 130, 0.02},
                               Shape{9, 7, 4, 0.0}, Shape{65, 64, 64, 0.5}, Shape{1, 1, 1, 1.0},
                               Shape{20, 12, 0, 0.4}, Shape{6, 0, 3, 0.5}, Shape{0, 5, 3, 0.5},
                               Shape{17, 33, 72, 0.2}, Shape{40, 24, 8, 0.3}, Shape{40, 24, 9, 0.3},
                               Shape{40, 24, 65, 0.3}, Shape{33, 31, 200, 0.1});
  const Csr c = random_csr(shape.rows, shape.cols, shape.density, 7u + static_cast<uint32_t>(shape.rows));
  const int64_t M = shape.m, N = c.rows, K = c.cols;
  const Reference ref(c, M);
  const std::vector<float> xt = to_float(transpose(ref.x, M, K)), gt = to_float(transpose(ref.g, M, N));
  const std::vector<float> values = to_float(c.values);
  // float32 against a float64 reference: the error of sums of this length
  const auto close = [](double got, double want) { return std::abs(got - want) <= 1e-4 * (1.0 + std::abs(want)); };
  for (auto& [name, par] : splits()) {
    CAPTURE(name, N, K, M);
    // guard floats around every output: a write outside the arrays shows up here
    constexpr int64_t kGuard = 16;
    std::vector<float> y(M * N + 2 * kGuard, -7.0f), gx(M * K + 2 * kGuard, -7.0f),
        dv(c.col.size() + 2 * kGuard, -7.0f);
    avx2::csr_forward(xt.data(), M, values.data(), c.view(), y.data() + kGuard, par);
    avx2::csr_grad_input(gt.data(), M, values.data(), c.view(), gx.data() + kGuard, par);
    avx2::csr_grad_values_t(gt.data(), xt.data(), M, c.view(), dv.data() + kGuard, par);
    for (auto* v : {&y, &gx, &dv}) {
      for (int64_t i = 0; i < kGuard; ++i) {
        REQUIRE((*v)[i] == -7.0f);
        REQUIRE((*v)[v->size() - 1 - i] == -7.0f);
      }
    }
    for (int64_t i = 0; i < M * N; ++i) REQUIRE(close(y[kGuard + i], ref.y[i]));
    for (int64_t i = 0; i < M * K; ++i) REQUIRE(close(gx[kGuard + i], ref.gx[i]));
    for (size_t j = 0; j < c.col.size(); ++j) REQUIRE(close(dv[kGuard + j], ref.dv[j]));
  }
}

TEST_CASE("csr validation names what is wrong", "[csr]") {
  Csr c = random_csr(6, 5, 0.6, 3);
  REQUIRE(validate_csr(c.view()).empty());
  REQUIRE(c.col.size() >= 2);
  SECTION("first row pointer") {
    c.row_ptr[0] = 1;
    REQUIRE(validate_csr(c.view()).find("row_ptr[0] must be 0") != std::string::npos);
  }
  SECTION("decreasing row pointers") {
    c.row_ptr[2] = c.row_ptr[3] + 1;
    REQUIRE(validate_csr(c.view()).find("non-decreasing") != std::string::npos);
  }
  SECTION("last row pointer") {
    c.row_ptr.back() -= 1;
    for (auto& p : c.row_ptr) p = std::min(p, c.row_ptr.back());
    REQUIRE(validate_csr(c.view()).find("must equal the number of entries") != std::string::npos);
  }
  SECTION("column out of range") {
    c.col[1] = 5;
    REQUIRE(validate_csr(c.view()) == "cols[1] = 5 is out of range [0, 5)");
  }
}

TEST_CASE("AVX2 transposes: 8 x 8 blocks and scalar edges, strided, no writes outside", "[csr][avx2]") {
  if (!avx2::available()) {
    WARN("this CPU lacks avx2+fma: the AVX2 transposes were NOT tested (skipped)");
    return;
  }
  struct Dims { int64_t rows, cols; };
  const Dims d = GENERATE(Dims{1, 1}, Dims{7, 9}, Dims{8, 8}, Dims{16, 24}, Dims{13, 70}, Dims{64, 3}, Dims{3, 64},
                          Dims{65, 130}, Dims{0, 5}, Dims{5, 0});
  CAPTURE(d.rows, d.cols);
  const int64_t lda = d.cols + 3, ldo = d.rows + 5;  // padded rows: the padding must stay untouched
  std::vector<float> a(std::max<int64_t>(1, d.rows * lda));
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
  std::vector<float> out(std::max<int64_t>(1, d.cols * ldo), -7.0f);
  avx2::transpose(a.data(), d.rows, d.cols, lda, out.data(), ldo);
  for (int64_t c = 0; c < d.cols; ++c)
    for (int64_t j = 0; j < ldo; ++j) REQUIRE(out[c * ldo + j] == (j < d.rows ? a[j * lda + c] : -7.0f));

  // feature_major: [M, F] -> [F, M] over blocks of kBlockM samples, every split of the parallel loop
  const int64_t M = d.rows * 2 + 1, F = d.cols;  // M = 3 .. 131: partial blocks of 64
  std::vector<float> x(M * F);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i) * 0.5f;
  for (auto& [name, par] : splits()) {
    CAPTURE(name, M, F);
    std::vector<float> xt(M * F + 1, -7.0f);
    avx2::feature_major(x.data(), M, F, xt.data(), par);
    for (int64_t f = 0; f < F; ++f)
      for (int64_t m = 0; m < M; ++m) REQUIRE(xt[f * M + m] == x[m * F + f]);
    REQUIRE(xt[M * F] == -7.0f);
  }
}
