// Shared helpers of the emulated kernel tests: element types, exactly sized
// 16-byte aligned buffers (AddressSanitizer sees every overrun), random
// tile-wise problems in the packed format, and the format's definition as a
// dense weight (the tests' independent reference). Include after emu_cuda.h.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/tile_layout.h"
#include "cuda/tw_device.cuh"
#include "format_reference.h"

namespace tilesparse::emu_testing {

// The launch callable of the torch-free launchers, running the emulation:
// plain launches, and cluster launches (the sm90 kernels) of `cluster_x`
// blocks along x, as the CUDA operator's cudaLaunchKernelEx.
struct EmuLaunch {
  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), dim3 grid, dim3 block, int smem, A&&... args) const {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    emu::launch(kernel, grid, block, static_cast<size_t>(smem), std::forward<A>(args)...);
  }
  template <typename... P, typename... A>
  void cluster(void (*kernel)(P...), dim3 grid, dim3 block, int cluster_x, int smem, A&&... args) const {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    emu::launch_cluster(kernel, grid, block, static_cast<unsigned>(cluster_x), static_cast<size_t>(smem),
                        std::forward<A>(args)...);
  }
};

template <typename T>
struct Elem;
template <>
struct Elem<__nv_bfloat16> {
  static constexpr const char* name = "bf16";
  static constexpr bool is_half = true;
  static constexpr double rel_tol = 1.0 / 128;  // one rounding to 8 significant bits, with margin
  static __nv_bfloat16 from(double v) { return __float2bfloat16_rn(static_cast<float>(v)); }
  static double to(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __nv_bfloat16 nan() { return __ushort_as_bfloat16(0x7fc0); }
};
template <>
struct Elem<__half> {
  static constexpr const char* name = "fp16";
  static constexpr bool is_half = true;
  static constexpr double rel_tol = 1.0 / 1024;
  static __half from(double v) { return __float2half_rn(static_cast<float>(v)); }
  static double to(__half v) { return __half2float(v); }
  static __half nan() { return __ushort_as_half(0x7e00); }
};
template <>
struct Elem<float> {
  static constexpr const char* name = "fp32";
  static constexpr bool is_half = false;
  static constexpr double rel_tol = 1e-6;
  static float from(double v) { return static_cast<float>(v); }
  static double to(float v) { return v; }
  static float nan() { return std::numeric_limits<float>::quiet_NaN(); }
};
template <>
struct Elem<double> {
  static constexpr const char* name = "fp64";
  static constexpr bool is_half = false;
  static constexpr double rel_tol = 1e-12;
  static double from(double v) { return v; }
  static double to(double v) { return v; }
  static double nan() { return std::numeric_limits<double>::quiet_NaN(); }
};

// "Device memory": exactly `count` elements, 16-byte aligned.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(int64_t count = 0) : n_(count) {
    if (n_ > 0) p_.reset(static_cast<T*>(::operator new[](sizeof(T) * n_, std::align_val_t(16))));
    if (n_ > 0) std::memset(static_cast<void*>(p_.get()), 0, sizeof(T) * n_);
  }
  T* data() { return p_.get(); }
  const T* data() const { return p_.get(); }
  int64_t size() const { return n_; }
  T& operator[](int64_t i) { return p_[i]; }
  const T& operator[](int64_t i) const { return p_[i]; }
  void fill_garbage() {
    for (int64_t i = 0; i < n_; ++i) p_[i] = Elem<T>::nan();
  }
  std::vector<double> as_double() const {
    std::vector<double> v(n_);
    for (int64_t i = 0; i < n_; ++i) v[i] = to_double(p_[i]);
    return v;
  }

 private:
  template <typename U>
  static double to_double(const U& u) {
    if constexpr (std::is_integral_v<U>) return static_cast<double>(u);
    else return Elem<U>::to(u);
  }
  struct Free {
    void operator()(T* p) const { ::operator delete[](p, std::align_val_t(16)); }
  };
  int64_t n_;
  std::unique_ptr<T[], Free> p_;
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
DeviceBuffer<T> random_buffer(int64_t count, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  DeviceBuffer<T> b(count);
  for (int64_t i = 0; i < count; ++i) b[i] = Elem<T>::from(normal(rng));
  return b;
}

inline std::vector<double> abs_of(std::vector<double> v) {
  for (double& e : v) e = std::fabs(e);
  return v;
}

// A random tile-wise problem: output features kept with col_density (2-D TW
// below 1), each tile keeping input features with row_density; padded to
// `pad` slots; drop_tile >= 0 empties that tile's rows afterwards (k_t = 0).
struct ProblemSpec {
  int64_t n, k, tile;
  double row_density, col_density;
  int64_t pad;
  int64_t drop_tile;
  uint64_t seed;
  int64_t dense_tile = -1;  // this tile keeps every input feature
};

struct Problem {
  int64_t n, k, tile;
  core::OwnedLayout layout;
  core::LayoutView view() const { return layout.view(tile); }
  cuda::DevLayout dev() const {
    return cuda::DevLayout{layout.cols.data(), layout.row_offsets.data(), layout.rows.data(),
                           static_cast<int64_t>(layout.cols.size()), static_cast<int64_t>(layout.row_offsets.size()) - 1,
                           static_cast<int64_t>(layout.rows.size()), tile};
  }
};

inline Problem make_problem(const ProblemSpec& s) {
  std::mt19937_64 rng(s.seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<uint8_t> mask8(std::max<int64_t>(1, s.n * s.k), 0);
  std::vector<int64_t> cols;
  for (int64_t c = 0; c < s.n; ++c)
    if (c == 0 || u(rng) < s.col_density) cols.push_back(c);
  for (size_t start = 0; start < cols.size(); start += s.tile) {
    std::vector<bool> keep(s.k);
    bool any = false;
    const bool dense = static_cast<int64_t>(start) / s.tile == s.dense_tile;
    for (int64_t r = 0; r < s.k; ++r) any |= (keep[r] = dense || u(rng) < s.row_density);
    if (!any && s.k > 0) keep[rng() % s.k] = true;
    for (size_t j = start; j < std::min(cols.size(), start + s.tile); ++j)
      for (int64_t r = 0; r < s.k; ++r) mask8[cols[j] * s.k + r] = keep[r];
  }
  std::unique_ptr<bool[]> mask(new bool[mask8.size()]);
  for (size_t i = 0; i < mask8.size(); ++i) mask[i] = mask8[i] != 0;
  Problem p{s.n, s.k, s.tile, {}};
  const std::string err = core::build_layout(mask.get(), s.n, s.k, s.tile, s.pad, p.layout);
  REQUIRE(err.empty());
  if (s.drop_tile >= 0 && s.drop_tile + 1 < static_cast<int64_t>(p.layout.row_offsets.size())) {
    auto& ro = p.layout.row_offsets;
    auto& rows = p.layout.rows;
    const int32_t lo = ro[s.drop_tile], hi = ro[s.drop_tile + 1];
    rows.erase(rows.begin() + lo, rows.begin() + hi);
    for (size_t t = s.drop_tile + 1; t < ro.size(); ++t) ro[t] -= hi - lo;
  }
  REQUIRE(core::validate_layout(p.view(), s.n, s.k).empty());
  return p;
}

// Random values with NaN in every padding slot (not weights: must be ignored).
template <typename T>
DeviceBuffer<T> random_values(const Problem& p, std::mt19937_64& rng) {
  DeviceBuffer<T> v = random_buffer<T>(core::num_values(p.view()), rng);
  format_reference::for_each_slot(p.layout, p.k, p.tile, [&](int64_t vi, int64_t, bool pad) {
    if (pad) v[vi] = Elem<T>::nan();
  });
  return v;
}

// Dense W[n, k] (zeros where pruned) of packed values, by the format's definition.
inline std::vector<double> dense_weight(const Problem& p, const std::vector<double>& values) {
  return format_reference::dense_weight(p.layout, p.n, p.k, p.tile, values);
}

// y = x @ W^T + bias in double, W from the packed values (padding ignored).
inline std::vector<double> reference_forward(const Problem& p, int64_t m, const std::vector<double>& x, int64_t ldx,
                                             const std::vector<double>& values, const std::vector<double>* bias) {
  const std::vector<double> w = dense_weight(p, values);
  std::vector<double> y(m * p.n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < p.n; ++c) {
      double acc = bias ? (*bias)[c] : 0.0;
      for (int64_t q = 0; q < p.k; ++q) acc += x[i * ldx + q] * w[c * p.k + q];
      y[i * p.n + c] = acc;
    }
  return y;
}

// Packed values of a dense [n, k] matrix (zero in padding slots).
inline std::vector<double> packed(const Problem& p, const std::vector<double>& dense) {
  return format_reference::packed(p.layout, p.k, p.tile, dense);
}

// gV = packed(gy^T x) in double, and packed(|gy|^T |x|) (the magnitude the tolerance scales with):
// gy [m, n] and x [m, k] with row strides ldg, ldx.
inline std::pair<std::vector<double>, std::vector<double>> reference_grad_values(const Problem& p, int64_t m,
                                                                                 const std::vector<double>& gy,
                                                                                 int64_t ldg,
                                                                                 const std::vector<double>& x,
                                                                                 int64_t ldx) {
  std::vector<double> gw(p.n * p.k, 0.0), gwa(p.n * p.k, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < p.n; ++c) {
      const double g = gy[i * ldg + c];
      if (g == 0.0) continue;
      for (int64_t q = 0; q < p.k; ++q) {
        gw[c * p.k + q] += g * x[i * ldx + q];
        gwa[c * p.k + q] += std::fabs(g * x[i * ldx + q]);
      }
    }
  return {packed(p, gw), packed(p, gwa)};
}

// Every element of `got` within Elem<T>'s relative tolerance of ref, plus 1e-5 of its magnitude.
template <typename T>
void check_close(const DeviceBuffer<T>& got, const std::vector<double>& ref, const std::vector<double>& mag,
                 const std::string& what) {
  using E = Elem<T>;
  REQUIRE(got.size() == static_cast<int64_t>(ref.size()));
  for (int64_t i = 0; i < got.size(); ++i) {
    const double g = E::to(got[i]);
    const double tol = E::rel_tol * std::fabs(ref[i]) + 1e-5 * mag[i] + 1e-30;
    if (!(std::fabs(g - ref[i]) <= tol)) FAIL(what << "[" << i << "] = " << g << ", expected " << ref[i]);
  }
}

// A tile-wise problem with the knobs the sm90 paths care about: kept runs of
// `unit` aligned features (unit >= 8: the ldmatrix gather), 2-D TW (pruned
// outputs), an empty tile, a tile keeping everything, one keeping one run,
// and the TEW-derived layout (the TW part of a TEW mask: runs ranked
// globally by score and pruned at the TW sparsity s + delta, which leaves
// uneven kept counts across tiles).
struct Sm90Spec {
  int64_t n, k, tile;
  double row_density;         // fraction of runs a tile keeps (TEW: 1 - (s + delta))
  double col_density = 1.0;   // below 1: 2-D TW
  int64_t unit = 1;
  int64_t pad = 8;
  uint64_t seed = 1;
  int64_t drop_tile = -1;    // keeps nothing (kpad_t = 0)
  int64_t dense_tile = -1;   // keeps every feature
  int64_t sparse_tile = -1;  // keeps one run
  bool tew = false;          // global ranking of runs by a random score (TEW's TW part)
};

inline Problem make_sm90_problem(const Sm90Spec& s) {
  std::mt19937_64 rng(s.seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<int64_t> cols;
  for (int64_t c = 0; c < s.n; ++c)
    if (c == 0 || u(rng) < s.col_density) cols.push_back(c);
  const int64_t nt = (static_cast<int64_t>(cols.size()) + s.tile - 1) / s.tile, nu = (s.k + s.unit - 1) / s.unit;
  std::vector<uint8_t> keep(nt * nu, 0);
  if (s.tew) {  // the best row_density of all (tile, run) pairs by score, kept
    std::vector<double> score(nt * nu);
    for (double& v : score) v = u(rng) * u(rng);
    std::vector<int64_t> order(nt * nu);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score[a] > score[b]; });
    for (int64_t i = 0; i < static_cast<int64_t>(s.row_density * nt * nu); ++i) keep[order[i]] = 1;
  } else {
    for (auto& v : keep) v = u(rng) < s.row_density;
  }
  for (int64_t t = 0; t < nt; ++t) {
    uint8_t* kt = &keep[t * nu];
    if (t == s.dense_tile) std::fill(kt, kt + nu, 1);
    if (t == s.sparse_tile) std::fill(kt, kt + nu, 0);
    if (std::find(kt, kt + nu, 1) == kt + nu) kt[rng() % nu] = 1;
  }
  std::unique_ptr<bool[]> mask(new bool[std::max<int64_t>(1, s.n * s.k)]());
  for (size_t j = 0; j < cols.size(); ++j)
    for (int64_t r = 0; r < s.k; ++r) mask[cols[j] * s.k + r] = keep[(j / s.tile) * nu + r / s.unit] != 0;
  Problem p{s.n, s.k, s.tile, {}};
  REQUIRE(core::build_layout(mask.get(), s.n, s.k, s.tile, s.pad, p.layout).empty());
  if (s.drop_tile >= 0 && s.drop_tile + 1 < static_cast<int64_t>(p.layout.row_offsets.size())) {
    auto& ro = p.layout.row_offsets;
    const int32_t lo = ro[s.drop_tile], hi = ro[s.drop_tile + 1];
    p.layout.rows.erase(p.layout.rows.begin() + lo, p.layout.rows.begin() + hi);
    for (size_t t = s.drop_tile + 1; t < ro.size(); ++t) ro[t] -= hi - lo;
  }
  REQUIRE(core::validate_layout(p.view(), s.n, s.k).empty());
  return p;
}

}  // namespace tilesparse::emu_testing
