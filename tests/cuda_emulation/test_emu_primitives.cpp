// Catch2 tests of the host emulation's primitives (emu_cuda.h): 16-bit float
// conversions, mma.sync and ldmatrix against the PTX ISA's definitions
// (fragments built here, lane by lane, from the ISA's per-lane formulas),
// cp.async deferral / zero-fill / wait_group counting, __syncthreads with
// early exit, shuffles, the failure checks, and one smoke test of the real
// forward kernel (tw_fwd_mma_kernel) against a float64 reference.
#include "emu_cuda.h"
// The kernel sources, compiled as host C++ (after emu_cuda.h).
#include "cuda/layout_kernels.cuh"
#include "cuda/tw_fwd_kernels.cuh"

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

using namespace tilesparse::cuda;

namespace {

// ---------------------------------------------------------------------------
// 16-bit floats
// ---------------------------------------------------------------------------
uint16_t f16_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }
uint16_t bf16_bits(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
float f16_val(uint16_t h) { return __half2float(__ushort_as_half(h)); }
float bf16_val(uint16_t h) { return __bfloat162float(__ushort_as_bfloat16(h)); }
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Nearest of two neighbouring encodings lo < hi (value-wise, same sign), ties to the even one.
uint16_t nearest(double x, uint16_t lo, double vlo, uint16_t hi, double vhi) {
  const double dl = std::fabs(x - vlo), dh = std::fabs(vhi - x);
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) == 0 ? lo : hi;
}

}  // namespace

TEST_CASE("fp16 conversions: every half round-trips, float->half rounds to nearest even", "[emu][fp16]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_val(static_cast<uint16_t>(h));
    const bool nan = ((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff) != 0;
    if (nan) {
      REQUIRE(std::isnan(f));
      REQUIRE(std::isnan(f16_val(f16_bits(f))));
    } else {
      REQUIRE(f16_bits(f) == h);
    }
  }
  // Known values: ties to even, overflow threshold, subnormals, zero sign.
  CHECK(f16_bits(1.0f) == 0x3c00);
  CHECK(f16_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie -> even (1.0)
  CHECK(f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie -> even (up)
  CHECK(f16_bits(65504.0f) == 0x7bff);
  CHECK(f16_bits(65519.99f) == 0x7bff);
  CHECK(f16_bits(65520.0f) == 0x7c00);
  CHECK(f16_bits(-1e30f) == 0xfc00);
  CHECK(f16_bits(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(f16_bits(std::ldexp(1.0f, -25)) == 0x0000);                 // tie -> even (zero)
  CHECK(f16_bits(std::ldexp(1.0f, -25) * 1.0001f) == 0x0001);
  CHECK(f16_bits(std::ldexp(3.0f, -25)) == 0x0002);                 // 1.5 units -> 2
  CHECK(f16_bits(std::ldexp(5.0f, -25)) == 0x0002);                 // 2.5 units -> 2
  CHECK(f16_bits(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)) == 0x0400);  // rounds up into the normals
  CHECK(f16_bits(-0.0f) == 0x8000);
  CHECK(f16_bits(std::ldexp(1.0f, -30)) == 0x0000);
  CHECK(std::isnan(f16_val(f16_bits(std::nanf("")))));
  CHECK(std::isinf(f16_val(0x7c00)));
  CHECK(f16_val(0x0001) == std::ldexp(1.0f, -24));

  // Random floats over the half range against a nearest-neighbour search.
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits(0, 0xffffffffu);
  int checked = 0;
  while (checked < 20000) {
    const float f = from_bits(bits(rng));
    if (!std::isfinite(f) || std::fabs(f) >= 65520.0f || std::fabs(f) < 1e-9f) continue;
    const uint16_t h = f16_bits(f);
    // The candidates around f: h and its neighbours with the same sign.
    const uint16_t sign = h & 0x8000, mag = h & 0x7fff;
    uint16_t best = h;
    double best_d = std::fabs(static_cast<double>(f) - f16_val(h));
    for (int d : {-1, 1}) {
      const int m = mag + d;
      if (m < 0 || m > 0x7bff) continue;
      const uint16_t c = static_cast<uint16_t>(sign | m);
      const double dist = std::fabs(static_cast<double>(f) - f16_val(c));
      if (dist < best_d || (dist == best_d && (c & 1) == 0)) {
        best = c;
        best_d = dist;
      }
    }
    REQUIRE(best == h);
    ++checked;
  }
}

TEST_CASE("bf16 conversions: round to nearest even, NaN stays NaN", "[emu][bf16]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_val(static_cast<uint16_t>(h));
    if (std::isnan(f)) REQUIRE(std::isnan(bf16_val(bf16_bits(f))));
    else REQUIRE(bf16_bits(f) == h);
  }
  CHECK(bf16_bits(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);      // tie -> even
  CHECK(bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);  // tie -> even (up)
  CHECK(bf16_bits(3.3895e38f) == 0x7f7f);                       // the largest finite bf16
  CHECK(bf16_bits(3.4e38f) == 0x7f80);                          // past the midpoint: inf
  CHECK(std::isnan(bf16_val(bf16_bits(std::nanf("")))));
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits(0, 0xffffffffu);
  for (int i = 0; i < 20000; ++i) {
    const uint32_t u = bits(rng);
    const float f = from_bits(u);
    if (!std::isfinite(f) || std::fabs(f) > 3.38e38f) continue;
    const uint16_t lo = static_cast<uint16_t>(u >> 16), hi = static_cast<uint16_t>(lo + 1);  // same sign, |hi| > |lo|
    const uint16_t want = nearest(std::fabs(static_cast<double>(f)), lo, std::fabs(bf16_val(lo)), hi,
                                  std::fabs(static_cast<double>(bf16_val(hi))));
    REQUIRE(bf16_bits(f) == want);
  }
}

// ---------------------------------------------------------------------------
// mma.sync
// ---------------------------------------------------------------------------
namespace {

template <typename T>
__global__ void mma_k16_kernel(const uint32_t* af, const uint32_t* bf, float* d) {
  const int lane = threadIdx.x;
  uint32_t a[4] = {af[lane * 4], af[lane * 4 + 1], af[lane * 4 + 2], af[lane * 4 + 3]};
  uint32_t b[2] = {bf[lane * 2], bf[lane * 2 + 1]};
  float acc[4] = {d[lane * 4], d[lane * 4 + 1], d[lane * 4 + 2], d[lane * 4 + 3]};
  Half16<T>::mma(acc, a, b);
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}

__global__ void mma_k8_kernel(const uint32_t* af, const uint32_t* bf, float* d, bool bf16) {
  const int lane = threadIdx.x;
  uint32_t a[2] = {af[lane * 2], af[lane * 2 + 1]};
  float acc[4] = {d[lane * 4], d[lane * 4 + 1], d[lane * 4 + 2], d[lane * 4 + 3]};
  if (bf16) mma_m16n8k8_bf16(acc, a, bf[lane]);
  else mma_m16n8k8_f16(acc, a, bf[lane]);
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}

struct MmaCase {
  int k;
  std::vector<uint16_t> A;  // [16][k]
  std::vector<uint16_t> B;  // [k][8]
  std::vector<float> C;     // [16][8]
};

MmaCase make_mma_case(int k, bool bf16, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  MmaCase c{k, std::vector<uint16_t>(16 * k), std::vector<uint16_t>(k * 8), std::vector<float>(16 * 8)};
  for (auto& v : c.A) v = bf16 ? bf16_bits(u(rng)) : f16_bits(u(rng));
  for (auto& v : c.B) v = bf16 ? bf16_bits(u(rng)) : f16_bits(u(rng));
  for (auto& v : c.C) v = u(rng);
  return c;
}

// Fragments per the PTX ISA ("Matrix Fragments for mma.m16n8k16 / m16n8k8
// with floating point type"), written lane -> element: groupID = lane >> 2,
// threadID_in_group = lane % 4; A element a_i (two per register):
// row = groupID (+8 for i in {2,3,6,7}), col = 2*tig + (i & 1) (+8 for i >= 4);
// B element b_i: row = 2*tig + (i & 1) (+8 for i >= 2), col = groupID;
// C/D element c_i: row = groupID (+8 for i >= 2), col = 2*tig + (i & 1).
void build_fragments(const MmaCase& c, std::vector<uint32_t>& af, std::vector<uint32_t>& bf) {
  const int na = c.k / 4, nb = c.k / 8;  // registers per lane
  af.assign(32 * na, 0);
  bf.assign(32 * nb, 0);
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane % 4;
    for (int i = 0; i < 2 * na; ++i) {
      const int row = g + ((i & 2) ? 8 : 0), col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      af[lane * na + i / 2] |= static_cast<uint32_t>(c.A[row * c.k + col]) << (16 * (i & 1));
    }
    for (int i = 0; i < 2 * nb; ++i) {
      const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0), col = g;
      bf[lane * nb + i / 2] |= static_cast<uint32_t>(c.B[row * 8 + col]) << (16 * (i & 1));
    }
  }
}

void check_mma(int k, bool bf16, uint32_t seed) {
  const MmaCase c = make_mma_case(k, bf16, seed);
  std::vector<uint32_t> af, bf;
  build_fragments(c, af, bf);
  std::vector<float> d(32 * 4);
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) d[lane * 4 + i] = c.C[((lane >> 2) + (i >= 2 ? 8 : 0)) * 8 + 2 * (lane % 4) + (i & 1)];
  const uint64_t mma_before = emu::stats().mma;
  if (k == 16) {
    if (bf16) emu::launch(mma_k16_kernel<__nv_bfloat16>, dim3(1), dim3(32), 0, af.data(), bf.data(), d.data());
    else emu::launch(mma_k16_kernel<__half>, dim3(1), dim3(32), 0, af.data(), bf.data(), d.data());
  } else {
    emu::launch(mma_k8_kernel, dim3(1), dim3(32), 0, af.data(), bf.data(), d.data(), bf16);
  }
  CHECK(emu::stats().mma - mma_before == 1);
  auto val = [&](uint16_t h) { return static_cast<double>(bf16 ? bf16_val(h) : f16_val(h)); };
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const int row = (lane >> 2) + (i >= 2 ? 8 : 0), col = 2 * (lane % 4) + (i & 1);
      double ref = c.C[row * 8 + col], mag = std::fabs(ref);
      for (int kk = 0; kk < k; ++kk) {
        const double p = val(c.A[row * k + kk]) * val(c.B[kk * 8 + col]);
        ref += p;
        mag += std::fabs(p);
      }
      INFO("k=" << k << " bf16=" << bf16 << " lane " << lane << " d[" << i << "] = D(" << row << "," << col << ")");
      REQUIRE(std::fabs(d[lane * 4 + i] - ref) <= 1e-6 * mag + 1e-30);
    }
}

}  // namespace

TEST_CASE("mma.sync m16n8k16 / m16n8k8 (bf16, f16) equal the float64 product of the fragments' matrices",
          "[emu][mma]") {
  for (uint32_t seed : {1u, 2u, 3u}) {
    check_mma(16, true, seed);
    check_mma(16, false, seed);
    check_mma(8, true, seed);
    check_mma(8, false, seed);
  }
}

// ---------------------------------------------------------------------------
// ldmatrix
// ---------------------------------------------------------------------------
namespace {

// 64 rows of 8 b16 elements (16 bytes) in dynamic shared memory; lane l gives
// the address of row perm[l]. Row r holds r * 8 + c + 1 in column c.
__global__ void ldmatrix_kernel(const int* perm, uint32_t* out, int variant) {
  uint16_t* s = reinterpret_cast<uint16_t*>(dynamic_smem());
  const int lane = threadIdx.x;
  for (int i = lane; i < 64 * 8; i += 32) s[i] = static_cast<uint16_t>(i + 1);
  __syncthreads();
  // Lanes whose address ldmatrix does not use pass a bogus one.
  const void* p = perm[lane] >= 0 ? static_cast<const void*>(s + perm[lane] * 8) : static_cast<const void*>(out);
  uint32_t r[4] = {0, 0, 0, 0};
  switch (variant) {
    case 0: ldmatrix_x4(r, p); break;
    case 1: ldmatrix_x4_trans(r, p); break;
    case 2: ldmatrix_x2(reinterpret_cast<uint32_t(&)[2]>(r), p); break;
    default: ldmatrix_x2_trans(reinterpret_cast<uint32_t(&)[2]>(r), p); break;
  }
  for (int j = 0; j < 4; ++j) out[lane * 4 + j] = r[j];
}

}  // namespace

TEST_CASE("ldmatrix x4 / x2, with and without .trans, follow per-lane row addresses", "[emu][ldmatrix]") {
  std::vector<int> perm(32);
  std::mt19937 rng(5);
  std::vector<int> rows(64);
  for (int i = 0; i < 64; ++i) rows[i] = i;
  std::shuffle(rows.begin(), rows.end(), rng);
  for (int l = 0; l < 32; ++l) perm[l] = rows[l];
  auto elem = [&](int matrix, int row, int col) {  // element (row, col) of matrix `matrix`
    return static_cast<uint32_t>(perm[8 * matrix + row] * 8 + col + 1);
  };
  for (int variant = 0; variant < 4; ++variant) {
    const bool trans = variant % 2 == 1;
    const int num = variant < 2 ? 4 : 2;
    std::vector<int> p = perm;
    for (int l = 8 * num; l < 32; ++l) p[l] = -1;  // unused addresses: not checked
    std::vector<uint32_t> out(32 * 4);
    emu::launch(ldmatrix_kernel, dim3(1), dim3(32), 64 * 16, p.data(), out.data(), variant);
    for (int l = 0; l < 32; ++l)
      for (int j = 0; j < num; ++j) {
        // Lane l receives row l/4, columns 2(l%4), 2(l%4)+1 of matrix j (of its transpose with .trans).
        const int r = l / 4, c = 2 * (l % 4);
        const uint32_t lo = trans ? elem(j, c, r) : elem(j, r, c);
        const uint32_t hi = trans ? elem(j, c + 1, r) : elem(j, r, c + 1);
        INFO("variant " << variant << " lane " << l << " matrix " << j);
        REQUIRE(out[l * 4 + j] == (lo | (hi << 16)));
      }
  }
}

namespace {
__global__ void ldmatrix_bad_kernel(int mode) {
  unsigned char* s = dynamic_smem();
  uint32_t r[4];
  if (mode == 0) ldmatrix_x4(r, s + (threadIdx.x == 3 ? 8 : 16 * threadIdx.x));  // lane 3 misaligned
  if (mode == 1) ldmatrix_x4(r, s + 16 * 64);                                      // past the dynamic buffer
  static int global_row[4];
  if (mode == 2) ldmatrix_x4(r, global_row);  // global memory
}
}  // namespace

TEST_CASE("ldmatrix rejects misaligned or non-shared row addresses", "[emu][ldmatrix]") {
  CHECK_THROWS_WITH(emu::launch(ldmatrix_bad_kernel, dim3(1), dim3(32), 1024, 0),
                    Catch::Contains("not 16-byte aligned"));
  CHECK_THROWS_WITH(emu::launch(ldmatrix_bad_kernel, dim3(1), dim3(32), 1024, 1),
                    Catch::Contains("not in shared memory"));
  CHECK_THROWS_WITH(emu::launch(ldmatrix_bad_kernel, dim3(1), dim3(32), 1024, 2),
                    Catch::Contains("not in shared memory"));
}

// The kernels' fragment loaders (tw_device.cuh) + ldmatrix + mma compute a
// 16 x 16 x 32 product, for both storage orders of A and B.
namespace {
template <bool kTransposed>
__global__ void loader_mma_kernel(const uint16_t* a, const uint16_t* b, float* d) {
  constexpr int LD = 40;  // 32 + 8 elements: 16-byte aligned rows
  uint16_t* As = reinterpret_cast<uint16_t*>(dynamic_smem());
  uint16_t* Bs = As + 32 * LD;
  const int lane = threadIdx.x;
  // a is [16 (m)][32 (k)], b is [16 (n)][32 (k)]; stored k-major (s[m][k]) or m/n-major (s[k][m]).
  for (int i = lane; i < 16 * 32; i += 32) {
    const int r = i / 32, k = i % 32;
    if (kTransposed) {
      As[k * LD + r] = a[i];
      Bs[k * LD + r] = b[i];
    } else {
      As[r * LD + k] = a[i];
      Bs[r * LD + k] = b[i];
    }
  }
  __syncthreads();
  float acc[2][4] = {};
  for (int k0 = 0; k0 < 32; k0 += 16) {
    uint32_t af[4], br[4];
    if (kTransposed) {
      load_a_mmajor(af, As, LD, 0, k0, lane);
      load_b_nmajor(br, Bs, LD, 0, k0, lane);
    } else {
      load_a_kmajor(af, As, LD, 0, k0, lane);
      load_b_kmajor(br, Bs, LD, 0, k0, lane);
    }
    const uint32_t b0[2] = {br[0], br[1]}, b1[2] = {br[2], br[3]};
    Half16<__nv_bfloat16>::mma(acc[0], af, b0);
    Half16<__nv_bfloat16>::mma(acc[1], af, b1);
  }
  for (int j = 0; j < 2; ++j)
    for (int i = 0; i < 4; ++i) {
      const int row = (lane >> 2) + (i >= 2 ? 8 : 0), col = j * 8 + 2 * (lane & 3) + (i & 1);
      d[row * 16 + col] = acc[j][i];
    }
}
}  // namespace

TEST_CASE("fragment loaders of tw_device.cuh with ldmatrix and mma give A @ B^T", "[emu][ldmatrix][mma]") {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<uint16_t> a(16 * 32), b(16 * 32);
  for (auto& v : a) v = bf16_bits(u(rng));
  for (auto& v : b) v = bf16_bits(u(rng));
  for (bool transposed : {false, true}) {
    std::vector<float> d(16 * 16, -1.f);
    auto kernel = transposed ? loader_mma_kernel<true> : loader_mma_kernel<false>;
    emu::launch(kernel, dim3(1), dim3(32), 2 * 32 * 40 * 2, a.data(), b.data(), d.data());
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        double ref = 0, mag = 0;
        for (int k = 0; k < 32; ++k) {
          const double p = static_cast<double>(bf16_val(a[m * 32 + k])) * bf16_val(b[n * 32 + k]);
          ref += p;
          mag += std::fabs(p);
        }
        INFO("transposed " << transposed << " m " << m << " n " << n);
        REQUIRE(std::fabs(d[m * 16 + n] - ref) <= 1e-5 * mag + 1e-30);
      }
  }
}

// ---------------------------------------------------------------------------
// cp.async
// ---------------------------------------------------------------------------
namespace {

// Thread 0 issues three groups of copies into shared memory and records what
// shared memory holds after each step; out[step * 48 + i] = smem byte i.
__global__ void cp_async_kernel(const unsigned char* src, unsigned char* out) {
  unsigned char* s = dynamic_smem();
  auto snap = [&](int step) {
    for (int i = 0; i < 64; ++i) out[step * 64 + i] = s[i];
  };
  if (threadIdx.x != 0) return;
  cp_async16(s + 0, src + 0, 16);  // group 0: full copy
  cp_async_commit();
  cp_async16(s + 16, src + 16, 5);  // group 1: 5 bytes + zero fill
  cp_async_commit();
  cp_async16(s + 32, nullptr, 0);  // group 2: zero fill, reads nothing
  cp_async_commit();
  cp_async16(s + 48, src + 48, 16);  // open group, never committed before the waits
  snap(0);                           // nothing landed yet
  cp_async_wait<2>();
  snap(1);  // group 0
  cp_async_wait<1>();
  snap(2);  // groups 0, 1
  cp_async_wait<0>();
  snap(3);  // groups 0-2; the open group is not waited for
  cp_async_commit();
  cp_async_wait<0>();
  snap(4);  // everything
}

__global__ void cp_async_bad_kernel(const unsigned char* src, int mode) {
  unsigned char* s = dynamic_smem();
  static unsigned char global_dst[32];
  if (mode == 0) cp_async16(s + 8, src, 16);            // misaligned destination
  if (mode == 1) cp_async16(global_dst, src, 16);       // destination not in shared memory
  if (mode == 2) cp_async16(s, src, 17);                // src_bytes > 16
  if (mode == 3) cp_async16(s + 16 * 4, src, 16);       // past the 64-byte dynamic buffer
  if (mode == 4) cp_async16(s, src + 4, 16);            // misaligned source
}

}  // namespace

TEST_CASE("cp.async copies are deferred until wait_group, zero-fill past src_bytes", "[emu][cp.async]") {
  alignas(16) unsigned char src[64];
  for (int i = 0; i < 64; ++i) src[i] = static_cast<unsigned char>(i + 1);
  std::vector<unsigned char> out(5 * 64);
  const emu::Stats before = emu::stats();
  emu::launch(cp_async_kernel, dim3(1), dim3(64), 64, src, out.data());
  CHECK(emu::stats().cp_async - before.cp_async == 4);
  CHECK(emu::stats().cp_async_bytes - before.cp_async_bytes == 16 + 5 + 0 + 16);
  CHECK(emu::stats().cp_async_zfill - before.cp_async_zfill == 11 + 16);
  auto expect = [&](int i, int groups_done, bool open_done) -> int {
    if (i < 16) return groups_done >= 1 ? src[i] : 0xff;  // garbage pattern until landed
    if (i < 32) return groups_done >= 2 ? (i < 21 ? src[i] : 0) : 0xff;
    if (i < 48) return groups_done >= 3 ? 0 : 0xff;
    return open_done ? src[i] : 0xff;
  };
  const int done[5] = {0, 1, 2, 3, 3};
  for (int step = 0; step < 5; ++step)
    for (int i = 0; i < 64; ++i) {
      INFO("step " << step << " byte " << i);
      REQUIRE(static_cast<int>(out[step * 64 + i]) == expect(i, done[step], step == 4));
    }
}

TEST_CASE("cp.async rejects bad destinations, sources and sizes", "[emu][cp.async]") {
  alignas(16) unsigned char src[32] = {};
  CHECK_THROWS_WITH(emu::launch(cp_async_bad_kernel, dim3(1), dim3(1), 64, src, 0),
                    Catch::Contains("not 16-byte aligned"));
  CHECK_THROWS_WITH(emu::launch(cp_async_bad_kernel, dim3(1), dim3(1), 64, src, 1),
                    Catch::Contains("not in shared memory"));
  CHECK_THROWS_WITH(emu::launch(cp_async_bad_kernel, dim3(1), dim3(1), 64, src, 2),
                    Catch::Contains("src_bytes 17"));
  CHECK_THROWS_WITH(emu::launch(cp_async_bad_kernel, dim3(1), dim3(1), 64, src, 3),
                    Catch::Contains("not in shared memory"));
  CHECK_THROWS_WITH(emu::launch(cp_async_bad_kernel, dim3(1), dim3(1), 64, src, 4),
                    Catch::Contains("source") && Catch::Contains("not 16-byte aligned"));
}

// ---------------------------------------------------------------------------
// Barriers, shuffles, failures
// ---------------------------------------------------------------------------
namespace {

// Threads with tid % 3 == 0 leave at once; the others pass three barriers,
// each time reading what another live thread wrote before it.
__global__ void early_exit_kernel(int* out) {
  __shared__ int s[256];
  const int tid = threadIdx.x, n = blockDim.x;
  if (tid % 3 == 0) return;
  int v = tid;
  for (int round = 0; round < 3; ++round) {
    s[tid] = v;
    __syncthreads();
    int other = (tid + 1) % n;
    while (other % 3 == 0) other = (other + 1) % n;
    v = s[other] + 1000;
    __syncthreads();  // s is rewritten in the next round
  }
  out[blockIdx.x * n + tid] = v;
}

__global__ void shfl_kernel(const int* in, int* out) {
  const int lane = threadIdx.x & 31;
  const int v = in[threadIdx.x];
  const float fv = static_cast<float>(v) * 0.5f;
  int* o = out + threadIdx.x * 8;
  o[0] = __shfl_sync(0xffffffffu, v, 7);                       // broadcast
  o[1] = __shfl_xor_sync(0xffffffffu, v, 5);                   // butterfly
  o[2] = __shfl_down_sync(0xffffffffu, v, 3);                  // shift down
  o[3] = __shfl_up_sync(0xffffffffu, v, 2);                    // shift up
  o[4] = __shfl_down_sync(0xffffffffu, v, 3, 8);               // within groups of 8
  o[5] = __shfl_sync(0xffffffffu, v, lane + 1, 16);            // rotate within groups of 16
  int s = v;                                                   // warp sum
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  o[6] = s;
  o[7] = static_cast<int>(2.f * __shfl_sync(0xffffffffu, fv, 31 - lane));
  if (lane < 16) {  // a shuffle among lanes 0-15 only
    const uint32_t u = __shfl_xor_sync(0x0000ffffu, static_cast<uint32_t>(v), 1);
    if (static_cast<int>(u) != in[threadIdx.x ^ 1]) o[7] = -12345;
  }
}

}  // namespace

TEST_CASE("__syncthreads waits only for threads that have not exited", "[emu][sync]") {
  const int n = 256, blocks = 3;
  std::vector<int> out(n * blocks, -1);
  emu::launch(early_exit_kernel, dim3(blocks), dim3(n), 0, out.data());
  auto next = [&](int t) {
    int o = (t + 1) % n;
    while (o % 3 == 0) o = (o + 1) % n;
    return o;
  };
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < n; ++t) {
      if (t % 3 == 0) {
        REQUIRE(out[b * n + t] == -1);
        continue;
      }
      const int want = next(next(next(t))) + 3000;
      REQUIRE(out[b * n + t] == want);
    }
}

namespace {
__global__ void vote_kernel(int* out) {
  const int tid = threadIdx.x, lane = tid & 31;
  if (tid >= 90) return;  // exited threads do not count in __syncthreads_count
  int* o = out + tid * 6;
  o[0] = __syncthreads_count(tid % 4 == 1);
  o[1] = __syncthreads_or(tid == 77);
  o[2] = __syncthreads_and(tid < 89);
  if (tid < 64) {  // full warps only: the third warp has exited lanes
    o[3] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
    o[4] = __any_sync(0xffffffffu, lane == 31 && tid >= 32);
    if (lane < 16) o[5] = __all_sync(0x0000ffffu, tid < 32 || lane < 8);
  }
}
}  // namespace

TEST_CASE("__syncthreads_count/or/and and warp votes", "[emu][sync]") {
  std::vector<int> out(96 * 6, -7);
  emu::launch(vote_kernel, dim3(1), dim3(96), 0, out.data());
  unsigned every_third = 0;
  for (int l = 0; l < 32; l += 3) every_third |= 1u << l;
  for (int t = 0; t < 96; ++t) {
    const int* o = out.data() + t * 6;
    INFO("thread " << t);
    if (t >= 90) {
      CHECK(o[0] == -7);
      continue;
    }
    CHECK(o[0] == 23);  // tids 1, 5, ..., 89
    CHECK(o[1] == 1);
    CHECK(o[2] == 0);  // tid 89 says no
    if (t < 64) {
      CHECK(static_cast<unsigned>(o[3]) == every_third);
      CHECK(o[4] == (t >= 32 ? 1 : 0));
      CHECK(o[5] == ((t & 31) < 16 ? (t < 32 ? 1 : 0) : -7));
    }
  }
}

TEST_CASE("shuffles exchange values between the lanes of a warp", "[emu][shfl]") {
  const int n = 64;
  std::vector<int> in(n), out(n * 8);
  std::mt19937 rng(3);
  for (auto& v : in) v = static_cast<int>(rng() % 1000);
  emu::launch(shfl_kernel, dim3(1), dim3(n), 0, in.data(), out.data());
  for (int t = 0; t < n; ++t) {
    const int w = t & ~31, l = t & 31;
    const int* o = out.data() + t * 8;
    INFO("thread " << t);
    CHECK(o[0] == in[w + 7]);
    CHECK(o[1] == in[w + (l ^ 5)]);
    CHECK(o[2] == (l + 3 < 32 ? in[t + 3] : in[t]));
    CHECK(o[3] == (l >= 2 ? in[t - 2] : in[t]));
    CHECK(o[4] == ((l % 8) + 3 < 8 ? in[t + 3] : in[t]));
    CHECK(o[5] == in[w + (l & ~15) + ((l + 1) & 15)]);
    int sum = 0;
    for (int i = 0; i < 32; ++i) sum += in[w + i];
    CHECK(o[6] == sum);
    CHECK(o[7] == in[w + 31 - l]);
  }
}

namespace {
__global__ void misuse_kernel(int mode) {
  const int lane = threadIdx.x & 31;
  if (mode == 0) {  // a lane of the warp has exited before a full-warp shuffle
    if (lane == 5) return;
    (void)__shfl_sync(0xffffffffu, lane, 0);
  } else if (mode == 1) {  // different collectives in one warp
    if (lane < 16) (void)__shfl_sync(0xffffffffu, lane, 0);
    else __syncwarp();
  } else if (mode == 2) {  // a lane waits at __syncthreads while its warp shuffles
    if (lane == 0) __syncthreads();
    else (void)__shfl_xor_sync(0xffffffffu, lane, 1);
  } else if (mode == 3) {  // mma in a partial warp (block of 48 threads)
    float d[4] = {};
    const uint32_t a[4] = {}, b[2] = {};
    mma_m16n8k16_bf16(d, a, b);
  } else if (mode == 4) {
    throw std::runtime_error("kernel failure");
  }
}
__global__ void garbage_kernel(unsigned char* out) {
  if (threadIdx.x == 0) out[0] = dynamic_smem()[17];
}
__global__ void nothing_kernel() {}
// Every thread of a 3-D grid of 3-D blocks records its coordinates and its lane (via a shuffle).
__global__ void coords_kernel(int* out) {
  const int linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int lane_of_0 = __shfl_sync(0xffffffffu, linear, 0);  // warps are 32 consecutive linear ids
  int* o = out + (block * blockDim.x * blockDim.y * blockDim.z + linear) * 3;
  o[0] = static_cast<int>(threadIdx.x * 10000 + threadIdx.y * 100 + threadIdx.z);
  o[1] = static_cast<int>(blockIdx.x * 10000 + blockIdx.y * 100 + blockIdx.z);
  o[2] = linear - lane_of_0;
}
}  // namespace

TEST_CASE("misused collectives and kernel exceptions fail the launch with a message", "[emu][errors]") {
  CHECK_THROWS_WITH(emu::launch(misuse_kernel, dim3(1), dim3(32), 0, 0), Catch::Contains("exited"));
  CHECK_THROWS_WITH(emu::launch(misuse_kernel, dim3(1), dim3(32), 0, 1), Catch::Contains("different collectives"));
  CHECK_THROWS_AS(emu::launch(misuse_kernel, dim3(1), dim3(32), 0, 2), emu::Error);
  CHECK_THROWS_WITH(emu::launch(misuse_kernel, dim3(1), dim3(48), 0, 3), Catch::Contains("do not exist"));
  CHECK_THROWS_WITH(emu::launch(misuse_kernel, dim3(2), dim3(64), 0, 4), Catch::Contains("kernel failure"));
  // The emulation is usable again after a failed launch.
  int dummy = 0;
  emu::launch(misuse_kernel, dim3(1), dim3(32), 0, 99);
  (void)dummy;
}

TEST_CASE("launch checks: block size, shared memory limit, garbage-filled shared memory", "[emu][launch]") {
  CHECK_THROWS_WITH(emu::launch(nothing_kernel, dim3(1), dim3(1025), 0), Catch::Contains("invalid block"));
  CHECK_THROWS_WITH(emu::launch(nothing_kernel, dim3(0), dim3(32), 0), Catch::Contains("invalid grid"));
  CHECK_THROWS_WITH(emu::launch(nothing_kernel, dim3(1), dim3(32), 227 * 1024 + 1), Catch::Contains("exceed"));
  emu::set_smem_limit(48 * 1024);
  CHECK_THROWS(emu::launch(nothing_kernel, dim3(1), dim3(32), 48 * 1024 + 16));
  emu::set_smem_limit(227 * 1024);
  emu::launch(nothing_kernel, dim3(1), dim3(32), 227 * 1024);
  unsigned char b = 0;
  emu::launch(garbage_kernel, dim3(1), dim3(32), 64, &b);
  CHECK(b == 0xff);
  std::vector<int> out(2 * 3 * 1 * 64 * 3, -1);
  emu::launch(coords_kernel, dim3(2, 3, 1), dim3(4, 4, 4), 0, out.data());
  for (int bz = 0, i = 0; bz < 1; ++bz)
    for (int by = 0; by < 3; ++by)
      for (int bx = 0; bx < 2; ++bx)
        for (int tz = 0; tz < 4; ++tz)
          for (int ty = 0; ty < 4; ++ty)
            for (int tx = 0; tx < 4; ++tx, ++i) {
              REQUIRE(out[i * 3] == tx * 10000 + ty * 100 + tz);
              REQUIRE(out[i * 3 + 1] == bx * 10000 + by * 100 + bz);
              REQUIRE(out[i * 3 + 2] == (i % 64) % 32);
            }
  const emu::Stats before = emu::stats();
  emu::launch(nothing_kernel, dim3(3, 2), dim3(8, 4), 0);
  CHECK(emu::stats().launches - before.launches == 1);
  CHECK(emu::stats().blocks - before.blocks == 6);
  CHECK(emu::stats().threads - before.threads == 6 * 32);
}

namespace {
// Static __shared__: garbage before the first write, a valid cp.async target,
// placed before the dynamic buffer in the shared window.
__global__ void static_smem_kernel(const unsigned char* src, int* out) {
  __shared__ __align__(16) unsigned char buf[64];
  __shared__ int flag;
  if (threadIdx.x == 0) {
    out[0] = flag;
    cp_async16(buf + 16, src, 16);
    cp_async_commit();
    cp_async_wait<0>();
    out[1] = buf[16] + 256 * buf[31];
    out[2] = smem_addr(buf) < smem_addr(dynamic_smem()) ? 1 : 0;
    flag = 7;
  }
}

// Each thread publishes a value and reads one written by a thread two warps
// away; without the barrier the read races with the write.
__global__ void race_kernel(int* out, bool barrier) {
  __shared__ int s[256];
  s[threadIdx.x] = static_cast<int>(blockIdx.x * 1000 + threadIdx.x);
  if (barrier) __syncthreads();
  out[blockIdx.x * 256 + threadIdx.x] = s[(threadIdx.x + 64) % 256];
}
}  // namespace

TEST_CASE("static __shared__ variables are block-shared, garbage-filled and cp.async targets", "[emu][smem]") {
  alignas(16) unsigned char src[16];
  for (int i = 0; i < 16; ++i) src[i] = static_cast<unsigned char>(10 + i);
  for (int round = 0; round < 2; ++round) {  // refilled for every block, also after a previous launch wrote it
    int out[3] = {0, 0, 0};
    emu::launch(static_smem_kernel, dim3(1), dim3(32), 16, src, out);
    CHECK(out[0] == -1);
    CHECK(out[1] == 10 + 256 * 25);
    CHECK(out[2] == 1);
  }
}

TEST_CASE("a missing __syncthreads shows as stale shared memory", "[emu][sync]") {
  std::vector<int> out(4 * 256);
  auto wrong = [&] {
    int n = 0;
    for (int b = 0; b < 4; ++b)
      for (int t = 0; t < 256; ++t) n += out[b * 256 + t] != b * 1000 + (t + 64) % 256;
    return n;
  };
  emu::launch(race_kernel, dim3(4), dim3(256), 0, out.data(), true);
  CHECK(wrong() == 0);
  emu::launch(race_kernel, dim3(4), dim3(256), 0, out.data(), false);
  CHECK(wrong() > 0);
}

namespace {
// Block 0 publishes a value for block 1 (which runs after it: blocks run in order under emu::launch):
// st_global_for_peers, with or without this thread's __threadfence before the flag.
__global__ void publish_kernel(float2* data, int* flag, float2* seen, int fence) {
  if (threadIdx.x != 0) return;
  if (blockIdx.x == 0) {
    tilesparse::cuda::st_global_for_peers(data, make_float2(1.5f, 2.5f));
    if (fence) __threadfence();
    atomicAdd(flag, 1);
  } else if (atomicAdd(flag, 0) == 1) {
    __threadfence();
    *seen = *data;
  }
}
}  // namespace

TEST_CASE("st_global_for_peers: held back until the storer's __threadfence, visible at the launch's end",
          "[emu][fence]") {
  for (int fence : {1, 0}) {
    INFO("fence " << fence);
    float2 data = make_float2(0.f, 0.f), seen = make_float2(-1.f, -1.f);
    int flag = 0;
    emu::reset_stats();
    emu::launch(publish_kernel, dim3(2), dim3(32), 0, &data, &flag, &seen, fence);
    CHECK(emu::stats().held_stores == 1);
    // the peer saw the value only where the storer fenced before its arrival
    CHECK(seen.x == (fence ? 1.5f : 0.f));
    CHECK(seen.y == (fence ? 2.5f : 0.f));
    CHECK(data.x == 1.5f);  // and at the launch's end it is there either way
    CHECK(data.y == 2.5f);
  }
}

TEST_CASE("atomics of layout_kernels.cuh: validate_offsets_kernel flags and sums", "[emu][atomics]") {
  // 3 tiles of 4 columns over n = 12, k = 10; row counts 3, 0, 5 (+3 padding
  // slots repeating 9 in the last tile: 8 slots, 5 kept).
  std::vector<int32_t> cols = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  std::vector<int32_t> offs = {0, 3, 3, 11};
  std::vector<int32_t> rows = {1, 2, 3, 0, 4, 5, 6, 9, 9, 9, 9};
  DevLayout l{cols.data(), offs.data(), rows.data(), 12, 3, 11, 4};
  unsigned long long out[4] = {0, 0, 0, 0};
  emu::launch(validate_offsets_kernel, dim3(2), dim3(64), 0, l, int64_t{12}, int64_t{10}, out);
  CHECK(out[kErr] == 0);
  CHECK(out[kNumValues] == 4 * 3 + 4 * 8);
  CHECK(out[kMaxRows] == 8);
  CHECK(out[kNumKept] == 4 * 3 + 4 * 5);
  offs[2] = 2;  // decreasing offsets
  cols[5] = 4;  // not strictly increasing
  unsigned long long bad[4] = {0, 0, 0, 0};
  emu::launch(validate_offsets_kernel, dim3(1), dim3(32), 0, l, int64_t{12}, int64_t{10}, bad);
  CHECK((bad[kErr] & 2) != 0);
  CHECK((bad[kErr] & 4) != 0);
}

TEST_CASE("validate_rows_kernel: padding only at a tile's end, repeating its last kept feature", "[emu][atomics]") {
  // one tile of 2 columns, k = 10: rows {1, 4, 9, 9, 9} (2 padding slots) is valid
  std::vector<int32_t> cols = {0, 1};
  std::vector<int32_t> offs = {0, 5};
  std::vector<int32_t> rows = {1, 4, 9, 9, 9};
  DevLayout l{cols.data(), offs.data(), rows.data(), 2, 1, 5, 4};
  unsigned long long ok[4] = {0, 0, 0, 0};
  emu::launch(validate_rows_kernel, dim3(1), dim3(32), 0, l, int64_t{10}, ok);
  CHECK(ok[kErr] == 0);
  for (const std::vector<int32_t>& bad_rows : {std::vector<int32_t>{1, 4, 4, 9, 9},    // a repeat, then a new feature
                                              std::vector<int32_t>{1, 9, 4, 4, 4},    // decreasing
                                              std::vector<int32_t>{1, 4, 9, 9, 10}}) {  // out of range
    rows = bad_rows;
    unsigned long long bad[4] = {0, 0, 0, 0};
    emu::launch(validate_rows_kernel, dim3(1), dim3(32), 0, l, int64_t{10}, bad);
    CHECK((bad[kErr] & 8) != 0);
  }
}

// ---------------------------------------------------------------------------
// Smoke test: the real v1 forward kernel on a tiny 2-D TW problem.
// ---------------------------------------------------------------------------
namespace {

template <typename T>
void fwd_smoke(bool bf16) {
  constexpr int BM = 128, BN = 64, BK = 32, WM = 4, WN = 2, STAGES = 3;  // the launcher's tile <= 64 config
  const int64_t M = 150, K = 72, N = 100, tile = 64;
  std::mt19937 rng(bf16 ? 21 : 22);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  auto enc = [&](float f) { return bf16 ? bf16_bits(f) : f16_bits(f); };
  auto dec = [&](uint16_t h) { return static_cast<double>(bf16 ? bf16_val(h) : f16_val(h)); };
  // 2-D TW: output features c % 7 == 3 pruned; tile 0 keeps 40 scattered
  // input features (scalar gathers), tile 1 the aligned run [16, 64) (16-byte cp.async).
  std::vector<int32_t> cols;
  for (int c = 0; c < N; ++c)
    if (c % 7 != 3) cols.push_back(c);
  const int64_t nc = static_cast<int64_t>(cols.size()), tiles = (nc + tile - 1) / tile;
  REQUIRE(tiles == 2);
  std::vector<int32_t> all(K);
  for (int i = 0; i < K; ++i) all[i] = i;
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int32_t> r0(all.begin(), all.begin() + 40);
  std::sort(r0.begin(), r0.end());
  std::vector<int32_t> rows = r0;
  for (int r = 16; r < 64; ++r) rows.push_back(r);
  std::vector<int32_t> offs = {0, 40, static_cast<int32_t>(rows.size())};
  int64_t nv = 0;
  for (int64_t t = 0; t < tiles; ++t) nv += std::min(tile, nc - t * tile) * (offs[t + 1] - offs[t]);
  alignas(16) static uint16_t x[150 * 72];
  std::vector<uint16_t> values(nv), bias(N), y(M * N, 0x1234);
  for (auto& v : x) v = enc(u(rng));
  for (auto& v : values) v = enc(u(rng));
  for (auto& v : bias) v = enc(u(rng));

  FwdParams<T> p;
  p.x = reinterpret_cast<const T*>(x);
  p.ldx = K;
  p.m = M;
  p.k = K;
  p.values = reinterpret_cast<const T*>(values.data());
  p.nv = nv;
  p.bias = reinterpret_cast<const T*>(bias.data());
  p.y = reinterpret_cast<T*>(y.data());
  p.ldy = N;
  p.n = N;
  p.layout = DevLayout{cols.data(), offs.data(), rows.data(), nc, tiles, static_cast<int64_t>(rows.size()), tile};
  p.jchunks = static_cast<int32_t>((tile + BN - 1) / BN);
  p.mblock_offset = 0;
  p.x_vec = true;  // x is 16-byte aligned, K % 8 == 0
  p.v_vec = reinterpret_cast<uintptr_t>(values.data()) % 16 == 0;
  p.y_vec = reinterpret_cast<uintptr_t>(y.data()) % 16 == 0 && N % 8 == 0;
  const emu::Stats before = emu::stats();
  emu::launch(tw_fwd_mma_kernel<T, BM, BN, BK, WM, WN, STAGES>, dim3(static_cast<unsigned>(tiles * p.jchunks), 2),
              dim3(WM * WN * 32), fwd_mma_smem_bytes<BM, BN, BK, STAGES>(), p);
  CHECK(emu::stats().blocks - before.blocks == 4);
  CHECK(emu::stats().mma > before.mma);
  CHECK(emu::stats().cp_async_bytes > before.cp_async_bytes);  // tile 1's x run goes through cp.async

  std::vector<int> owner(N, -1);
  for (int64_t i = 0; i < nc; ++i) owner[cols[i]] = static_cast<int>(i);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < N; ++c) {
      const uint16_t got = y[m * N + c];
      INFO("m " << m << " c " << c);
      if (owner[c] < 0) {  // uncovered: the kernel does not touch it
        REQUIRE(got == 0x1234);
        continue;
      }
      const int64_t t = owner[c] / tile, j = owner[c] % tile, kt = offs[t + 1] - offs[t];
      const int64_t voff = tile * offs[t];
      double ref = dec(bias[c]), mag = std::fabs(ref);
      for (int64_t q = 0; q < kt; ++q) {
        const double pr = dec(x[m * K + rows[offs[t] + q]]) * dec(values[voff + j * kt + q]);
        ref += pr;
        mag += std::fabs(pr);
      }
      REQUIRE(std::fabs(dec(got) - ref) <= (bf16 ? 1.0 / 128 : 1.0 / 1024) * (std::fabs(ref) + 1e-3) + 1e-6 * mag);
    }
}

}  // namespace

TEST_CASE("smoke: tw_fwd_mma_kernel (bf16, fp16) on a tiny 2-D TW problem matches float64", "[emu][kernel]") {
  fwd_smoke<__nv_bfloat16>(true);
  fwd_smoke<__half>(false);
}

TEST_CASE("speed: 50 blocks of 256 threads with barriers and shuffles", "[emu][speed]") {
  const int n = 256, blocks = 50;
  std::vector<int> out(n * blocks, -1);
  const auto t0 = std::chrono::steady_clock::now();
  emu::launch(early_exit_kernel, dim3(blocks), dim3(n), 0, out.data());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("50 x 256 threads, 6 barriers each: " << s << " s");
  CHECK(out[1] >= 0);
}
