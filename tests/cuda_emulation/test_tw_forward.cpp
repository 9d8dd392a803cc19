// The CUDA forward of tw_linear, run in the host emulation: the real kernel
// sources (csrc/cuda/tw_fwd_*.cuh) through the real launch plan
// (plan_fwd / run_fwd of tw_fwd_launch.cuh), against a float64 reference of
// the packed format written here. Each case names the kernel the plan must
// pick, so every variant a launcher can select runs.
#include "emu_cuda.h"  // first: the emulated CUDA runtime and PTX

#include <catch2/catch.hpp>

#include "cuda/tw_fwd_launch.cuh"
#include "emu_testing.h"

using namespace tilesparse;
using namespace tilesparse::emu_testing;
using cuda::FwdKernel;

namespace {

const cuda::DeviceCaps kH100{227 * 1024, 132};
const cuda::DeviceCaps kOneSm{227 * 1024, 1};   // no K-split: one block per SM is plenty
const cuda::DeviceCaps kSmall{100 * 1024, 46};  // too little shared memory for the 128-row v2 block

struct FwdCase {
  std::string name;
  ProblemSpec spec;
  int64_t m;
  cuda::DeviceCaps caps;
  FwdKernel expect;
  bool bias = true;
  int64_t ldx_extra = 0;           // x rows padded by this many elements
  const FwdKernel* force = nullptr;
  int expect_splits = 0;           // 0: any; 1: exactly one; 2: more than one
};

template <typename T>
void run_case(const FwdCase& fc) {
  using E = Elem<T>;
  INFO(fc.name << " (" << E::name << ")");
  const Problem p = make_problem(fc.spec);
  std::mt19937_64 rng(fc.spec.seed * 7 + 1);
  const int64_t m = fc.m, ldx = p.k + fc.ldx_extra;
  DeviceBuffer<T> x = random_buffer<T>(m * ldx, rng);
  DeviceBuffer<T> values = random_values<T>(p, rng);  // NaN in padding slots: they must be ignored
  DeviceBuffer<T> bias = random_buffer<T>(p.n, rng);
  DeviceBuffer<T> y(m * p.n);
  y.fill_garbage();  // every output must be written

  cuda::FwdArgs<T> a;
  a.x = x.data();
  a.ldx = ldx;
  a.m = m;
  a.k = p.k;
  a.values = values.data();
  a.nv = values.size();
  a.bias = fc.bias ? bias.data() : nullptr;
  a.y = y.data();
  a.ldy = p.n;
  a.n = p.n;
  a.layout = p.dev();
  a.x_vec16 = aligned16(a.x) && ldx % 8 == 0;
  a.v_vec16 = aligned16(a.values);
  a.v_vec8 = reinterpret_cast<uintptr_t>(a.values) % 8 == 0;
  a.y_vec16 = aligned16(a.y) && p.n % 8 == 0;
  const cuda::FwdShape shape{m, p.k, p.n, p.tile, a.layout.num_tiles, a.layout.num_cols, E::is_half, a.x_vec16};
  const cuda::FwdPlan plan = cuda::plan_fwd(shape, fc.caps, fc.force);
  INFO("plan: " << cuda::fwd_kernel_name(plan.kernel) << " bm=" << plan.bm << " splits=" << plan.splits);
  REQUIRE(plan.kernel == fc.expect);
  if (fc.expect_splits == 1) REQUIRE(plan.splits == 1);
  if (fc.expect_splits == 2) REQUIRE(plan.splits > 1);

  DeviceBuffer<int32_t> bounds(plan.bounds_count);
  DeviceBuffer<float> ws(plan.ws_floats);
  DeviceBuffer<uint8_t> covered(plan.covered_bytes);
  cuda::run_fwd<T>(plan, a, cuda::FwdWorkspace{bounds.data(), ws.data(), covered.data()}, EmuLaunch{});

  const std::vector<double> xd = x.as_double(), vd = values.as_double(), bd = bias.as_double();
  const std::vector<double> ref = reference_forward(p, m, xd, ldx, vd, fc.bias ? &bd : nullptr);
  const std::vector<double> mag = reference_forward(p, m, abs_of(xd), ldx, abs_of(vd), fc.bias ? &bd : nullptr);
  std::vector<double> got = y.as_double();
  if (plan.bounds_count > 0) {  // the operator's second call: cached chunk bounds, no bounds kernel
    y.fill_garbage();
    cuda::run_fwd<T>(plan, a, cuda::FwdWorkspace{bounds.data(), ws.data(), covered.data(), true}, EmuLaunch{});
    const std::vector<double> again = y.as_double();
    for (int64_t i = 0; i < m * p.n; ++i)
      if (!(again[i] == got[i] || (std::isnan(again[i]) && std::isnan(got[i])))) FAIL("cached-bounds run differs at " << i);
  }
  for (int64_t i = 0; i < m * p.n; ++i) {
    // one rounding of the fp32 sum to T, plus fp32 accumulation error
    const double tol = E::rel_tol * std::fabs(ref[i]) + 1e-5 * std::fabs(mag[i]) + 1e-30;
    if (!(std::fabs(got[i] - ref[i]) <= tol))
      FAIL("y[" << i / p.n << ", " << i % p.n << "] = " << got[i] << ", expected " << ref[i] << " (tol " << tol << ")");
  }
  SUCCEED(cuda::fwd_kernel_name(plan.kernel) << ": " << m << " x " << p.k << " -> " << p.n << " ok");
}

const FwdKernel kForceV1 = FwdKernel::kMmaV1;

std::vector<FwdCase> half_cases() {
  std::vector<FwdCase> c;
  // name, {n, k, tile, row_density, col_density, pad, drop_tile, seed}, m, caps, kernel
  c.push_back({"v2: 1-D TW 75%, M not a multiple of 128, 5 K-chunks", {256, 640, 128, 0.25, 1.0, 8, -1, 1}, 200, kOneSm,
               FwdKernel::kV2, true, 0, nullptr, 1});
  c.push_back({"v2 K-split: 2-D TW (pruned outputs), tile 64, 50%", {200, 384, 64, 0.5, 0.6, 8, -1, 2}, 130, kH100,
               FwdKernel::kV2, true, 0, nullptr, 2});
  c.push_back({"v2: kept counts not multiples of 8 (unpadded), a tile keeping nothing", {192, 520, 64, 0.3, 1.0, 1, 1, 3},
               140, kOneSm, FwdKernel::kV2, true, 0, nullptr, 1});
  c.push_back({"v2: 95% sparse, steps that run past the resident chunks", {128, 1024, 128, 0.04, 1.0, 8, -1, 4}, 129,
               kOneSm, FwdKernel::kV2, false});
  c.push_back({"v2: tiles keeping every feature, strided x", {128, 256, 64, 1.0, 1.0, 8, -1, 5}, 131, kH100,
               FwdKernel::kV2, true, 8});
  c.push_back({"small M: M = 1 (16-row block), K with a partial chunk", {256, 1000, 128, 0.25, 1.0, 8, -1, 6}, 1, kH100,
               FwdKernel::kV2Small, true, 0, nullptr, 2});
  c.push_back({"small M: M = 17 (32-row block), 2-D TW", {320, 264, 64, 0.4, 0.7, 8, -1, 7}, 17, kH100,
               FwdKernel::kV2Small});
  c.push_back({"small M: M = 64 (64-row block), no K-split", {512, 512, 64, 0.25, 1.0, 8, -1, 8}, 64, kOneSm,
               FwdKernel::kV2Small, true, 0, nullptr, 1});
  c.push_back({"v1: tile 80 (not a multiple of 64), partial last tile", {200, 96, 80, 0.45, 1.0, 8, -1, 9}, 70, kH100,
               FwdKernel::kMmaV1});
  c.push_back({"v1: K % 8 != 0 (x rows not 16-byte aligned)", {96, 203, 64, 0.5, 1.0, 8, -1, 10}, 50, kH100,
               FwdKernel::kMmaV1});
  c.push_back({"v1 forced on a v2 shape: 1-D TW with an empty tile", {192, 256, 64, 0.3, 1.0, 8, 2, 11}, 150, kH100,
               FwdKernel::kMmaV1, true, 0, &kForceV1});
  c.push_back({"v1: device without the shared memory of the 128-row v2 block", {128, 256, 128, 0.25, 1.0, 8, -1, 12},
               300, kSmall, FwdKernel::kMmaV1});
  return c;
}

}  // namespace

TEST_CASE("emulated CUDA forward, bf16: every kernel the plan picks", "[cuda-emulation][forward]") {
  for (const FwdCase& c : half_cases()) run_case<__nv_bfloat16>(c);
}

TEST_CASE("emulated CUDA forward, fp16: every kernel the plan picks", "[cuda-emulation][forward]") {
  for (const FwdCase& c : half_cases()) run_case<__half>(c);
}

TEST_CASE("emulated CUDA forward, fp32 and fp64: SIMT kernel", "[cuda-emulation][forward]") {
  const FwdCase c{"simt: 2-D TW, tile 48, M = 70", {150, 90, 48, 0.4, 0.8, 8, 1, 13}, 70, kH100, FwdKernel::kSimt};
  run_case<float>(c);
  run_case<double>(c);
}

TEST_CASE("emulated CUDA forward: malformed layouts stay in bounds", "[cuda-emulation][forward][bounds]") {
  // Indices out of range, offsets past the rows, values shorter than the
  // layout claims: the kernels clamp every index (tw_device.cuh); AddressSanitizer
  // fails the test on any access outside the exactly sized buffers.
  for (FwdKernel kind : {FwdKernel::kV2, FwdKernel::kV2Small, FwdKernel::kMmaV1}) {
    for (int variant = 0; variant < 4; ++variant) {
      Problem p = make_problem({128, 256, 64, 0.3, 1.0, 8, -1, 20});
      auto& l = p.layout;
      if (variant == 0) l.cols.back() = 100000;                        // column past n
      if (variant == 1) l.rows[3] = -5, l.rows[l.rows.size() - 1] = 1 << 30;  // rows out of range
      if (variant == 2) l.row_offsets[1] = static_cast<int32_t>(l.rows.size() + 50);  // offset past rows
      const int64_t nv_claimed = core::num_values(p.view());
      const int64_t nv = variant == 3 ? nv_claimed / 2 : nv_claimed;  // values too short
      const int64_t m = kind == FwdKernel::kV2Small ? 5 : 140;
      std::mt19937_64 rng(variant);
      DeviceBuffer<__nv_bfloat16> x = random_buffer<__nv_bfloat16>(m * p.k, rng);
      DeviceBuffer<__nv_bfloat16> values = random_buffer<__nv_bfloat16>(std::max<int64_t>(nv, 1), rng);
      DeviceBuffer<__nv_bfloat16> y(m * p.n);
      cuda::FwdArgs<__nv_bfloat16> a{x.data(), p.k, m, p.k, values.data(), nv, nullptr, y.data(), p.n, p.n, p.dev(),
                                     true, true, true, true};
      const cuda::FwdShape shape{m, p.k, p.n, p.tile, a.layout.num_tiles, a.layout.num_cols, true, true};
      const cuda::FwdPlan plan = cuda::plan_fwd(shape, kH100, &kind);
      REQUIRE(plan.kernel == kind);
      DeviceBuffer<int32_t> bounds(plan.bounds_count);
      DeviceBuffer<float> ws(plan.ws_floats);
      DeviceBuffer<uint8_t> covered(plan.covered_bytes);
      CHECK_NOTHROW(cuda::run_fwd<__nv_bfloat16>(plan, a, cuda::FwdWorkspace{bounds.data(), ws.data(), covered.data()},
                                                 EmuLaunch{}));
    }
  }
}
