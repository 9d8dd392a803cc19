// The CUDA backward of tw_linear (grad_input, grad_values), run in the host
// emulation through the real launch plans of tw_bwd_launch.cuh, against
// float64 references of the packed format (emu_testing.h).
#include "emu_cuda.h"  // first: the emulated CUDA runtime and PTX

#include <catch2/catch.hpp>

#include "cuda/tw_bwd_launch.cuh"
#include "emu_testing.h"

using namespace tilesparse;
using namespace tilesparse::emu_testing;

namespace {

const cuda::DeviceCaps kH100{227 * 1024, 132};
const cuda::DeviceCaps kOneSm{227 * 1024, 1};
const cuda::DeviceCaps kSmallSmem{cuda::gv_v2_smem_bytes(128) - 1024, 8};  // too little for v2, enough for v1

using cuda::GradValuesKernel;
constexpr GradValuesKernel kAnyGv = static_cast<GradValuesKernel>(-1);

struct BwdCase {
  std::string name;
  ProblemSpec spec;
  int64_t m;
  cuda::DeviceCaps caps;
  int expect_splits = 0;                 // grad_values: 0 any, 1 exactly one, 2 more than one
  GradValuesKernel expect_gv = kAnyGv;   // the kernel plan_grad_values must pick for fp16/bf16
  int expect_passes = 0;                 // v2: 0 any, 2: some block needs more than one pass
  bool grad_input = true;                // false: the device is too small for grad_input's ring
};

std::vector<BwdCase> cases() {
  const auto v2 = GradValuesKernel::kV2;
  return {
      {"1-D TW 75%, tile 128, M not a multiple of 128, two x chunks (the second partial)",
       {256, 640, 128, 0.25, 1.0, 8, -1, 31}, 200, kOneSm, 1, v2},
      {"2-D TW, tile 64, unpadded kept counts, a tile keeping nothing, K % 8 != 0 (x rows unaligned: v1)",
       {200, 300, 64, 0.35, 0.6, 1, 1, 32}, 77, kH100, 0, GradValuesKernel::kMma64},
      {"2-D TW, tile 64: gathered gy columns, M not a multiple of 32", {256, 320, 64, 0.3, 0.6, 8, 2, 36}, 150, kH100, 0,
       v2},
      {"M = 1, tile 80 (partial panels: v1)", {170, 96, 80, 0.5, 1.0, 8, -1, 33}, 1, kH100, 0,
       GradValuesKernel::kMma128},
      {"long M: M-splits of grad_values", {64, 160, 64, 0.4, 1.0, 8, -1, 34}, 1100, kH100, 2, v2},
      {"dense tiles, 90% sparse tiles", {128, 512, 64, 0.1, 1.0, 8, -1, 35}, 96, kH100, 0, v2},
      // 100 rows: 4 stages, so the last stage of a pass sits in the slot the next pass fills first
      {"one dense tile among 90% sparse ones: a block needs two passes", {512, 1024, 64, 0.1, 1.0, 8, -1, 37, 5}, 100,
       kH100, 0, v2, 2},
      {"2-D TW with one dense tile: two passes, gathered gy columns", {512, 512, 64, 0.1, 0.7, 8, -1, 39, 1}, 100,
       kH100, 0, v2, 2},
      {"tile 128, a device with too little shared memory for v2 (v1)", {256, 256, 128, 0.3, 1.0, 8, -1, 38}, 64,
       kSmallSmem, 0, GradValuesKernel::kMma128, 0, false},
  };
}

// Most items (64 kept positions of a 64-output slice in one x chunk) any v2
// block of the plan has, in units of its 8 warps: the passes it runs.
int64_t v2_max_passes(const Problem& p, const cuda::GradValuesPlan& plan) {
  const auto& ro = p.layout.row_offsets;
  const int64_t slices_per_tile = p.tile / 64, num_tiles = static_cast<int64_t>(ro.size()) - 1;
  const int64_t num_cols = static_cast<int64_t>(p.layout.cols.size());
  int64_t most = 0;
  for (int64_t g = 0; g < plan.groups; ++g)
    for (int c = 0; c < plan.nchunks; ++c) {
      int64_t items = 0;
      for (int64_t sl = 4 * g; sl < 4 * g + 4 && sl < num_tiles * slices_per_tile; ++sl) {
        const int64_t t = sl / slices_per_tile;
        if ((sl % slices_per_tile) * 64 >= num_cols - t * p.tile) continue;
        int64_t kept = 0;
        for (int32_t i = ro[t]; i < ro[t + 1]; ++i)
          kept += p.layout.rows[i] >= int64_t(c) * plan.kc && p.layout.rows[i] < int64_t(c + 1) * plan.kc;
        items += (kept + 63) / 64;
      }
      most = std::max(most, (items + 7) / 8);
    }
  return most;
}

template <typename T>
void run_case(const BwdCase& bc) {
  using E = Elem<T>;
  using Acc = std::conditional_t<E::is_half, float, T>;
  INFO(bc.name << " (" << E::name << ")");
  const Problem p = make_problem(bc.spec);
  std::mt19937_64 rng(bc.spec.seed * 13 + 5);
  const int64_t m = bc.m, n = p.n, k = p.k;
  DeviceBuffer<T> gy = random_buffer<T>(m * n, rng), x = random_buffer<T>(m * k, rng);
  DeviceBuffer<T> values = random_values<T>(p, rng);  // NaN padding: must be ignored
  const std::vector<double> gyd = gy.as_double(), xd = x.as_double(), vd = values.as_double();
  const std::vector<double> w = dense_weight(p, vd), wa = abs_of(w);

  // ---- grad_input: gx = gy @ W
  if (bc.grad_input) {
    const cuda::GradInputPlan plan = cuda::plan_grad_input(k, p.layout.rows.size(), p.dev().num_tiles, E::is_half, bc.caps);
    REQUIRE(plan.kc > 0);
    DeviceBuffer<T> gx(m * k);
    gx.fill_garbage();
    cuda::GradInputParams<T, Acc> prm{};
    prm.gy = gy.data();
    prm.ldg = n;
    prm.values = values.data();
    prm.nv = values.size();
    prm.m = m;
    prm.n = n;
    prm.k = k;
    prm.layout = p.dev();
    prm.gx = gx.data();
    prm.ldx = k;
    prm.gy_vec = aligned16(prm.gy) && n % 8 == 0;
    prm.v_vec = aligned16(prm.values);
    prm.gx_vec = aligned16(prm.gx) && k % 8 == 0;
    DeviceBuffer<int32_t> bounds(plan.bounds_count);
    cuda::run_grad_input(plan, prm, bounds.data(), EmuLaunch{});
    std::vector<double> ref(m * k, 0.0), mag(m * k, 0.0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < n; ++c)
        for (int64_t q = 0; q < k; ++q) {
          ref[i * k + q] += gyd[i * n + c] * w[c * k + q];
          mag[i * k + q] += std::fabs(gyd[i * n + c]) * wa[c * k + q];
        }
    check_close(gx, ref, mag, "gx");
    SUCCEED("grad_input " << cuda::grad_input_kernel_name(plan.kernel) << " kc=" << plan.kc << " ok");
  }
  // ---- grad_values: gV = packed(gy^T @ x), zero in padding; the plan's kernel,
  // and v1 as well where the plan picked v2 (both stay reachable)
  int64_t max_rows = 0;
  for (size_t t = 0; t + 1 < p.layout.row_offsets.size(); ++t)
    max_rows = std::max<int64_t>(max_rows, p.layout.row_offsets[t + 1] - p.layout.row_offsets[t]);
  const int64_t nv = values.size();
  const bool x_vec = aligned16(x.data()) && k % 8 == 0;
  const cuda::GradValuesShape shape{m, k, p.tile, p.dev().num_tiles, static_cast<int64_t>(p.layout.rows.size()),
                                    max_rows, nv, E::is_half, x_vec};
  const auto [ref, mag] = reference_grad_values(p, m, gyd, n, xd, k);
  auto run_gv = [&](const GradValuesKernel* force) {
    const cuda::GradValuesPlan plan = cuda::plan_grad_values(shape, bc.caps, force);
    INFO("grad_values plan: " << cuda::grad_values_kernel_name(plan.kernel) << " splits=" << plan.splits
                              << " kc=" << plan.kc);
    DeviceBuffer<T> gv(nv);
    gv.fill_garbage();  // every slot must be written (padding: zero)
    DeviceBuffer<Acc> ws(plan.ws_count);
    DeviceBuffer<int32_t> bounds(plan.bounds_count);
    cuda::GradValuesParams<T, Acc> prm{};
    prm.gy = gy.data();
    prm.ldg = n;
    prm.x = x.data();
    prm.ldx = k;
    prm.m = m;
    prm.n = n;
    prm.k = k;
    prm.layout = p.dev();
    prm.nv = nv;
    prm.out = gv.data();
    prm.gy_vec = aligned16(prm.gy) && n % 8 == 0;
    prm.x_vec = x_vec;
    cuda::run_grad_values(plan, prm, bounds.data(), ws.data(), EmuLaunch{});
    check_close(gv, ref, mag, "gV");
    SUCCEED("grad_values " << cuda::grad_values_kernel_name(plan.kernel) << " splits=" << plan.splits << " ok");
    return plan;
  };
  const cuda::GradValuesPlan plan = run_gv(nullptr);
  if (bc.expect_splits == 1) CHECK(plan.splits == 1);
  if (bc.expect_splits == 2) CHECK(plan.splits > 1);
  if (E::is_half && bc.expect_gv != kAnyGv) CHECK(plan.kernel == bc.expect_gv);
  if (plan.kernel == GradValuesKernel::kV2) {
    if (bc.expect_passes == 2) CHECK(v2_max_passes(p, plan) >= 2);
    const GradValuesKernel v1 = GradValuesKernel::kMma128;  // the plan maps it to the tile's v1 kernel
    CHECK(run_gv(&v1).kernel != GradValuesKernel::kV2);
  }
}

}  // namespace

TEST_CASE("emulated CUDA backward, bf16: grad_input (mma) and grad_values (v2, and v1 with BMJ 64/128)",
          "[cuda-emulation][backward]") {
  for (const BwdCase& c : cases()) run_case<__nv_bfloat16>(c);
}

TEST_CASE("emulated CUDA backward, fp16", "[cuda-emulation][backward]") {
  for (const BwdCase& c : cases()) run_case<__half>(c);
}

TEST_CASE("emulated CUDA backward, fp32 and fp64: SIMT kernels", "[cuda-emulation][backward]") {
  const auto all = cases();
  for (size_t i : {size_t(1), size_t(3)}) {
    run_case<float>(all[i]);
    run_case<double>(all[i]);
  }
}

TEST_CASE("emulated CUDA backward: malformed layouts stay in bounds", "[cuda-emulation][backward][bounds]") {
  for (int variant = 0; variant < 4; ++variant) {
    Problem p = make_problem({128, 256, 64, 0.3, 1.0, 8, -1, 40});
    auto& l = p.layout;
    if (variant == 0) l.cols.back() = 100000;
    if (variant == 1) l.rows[3] = -5, l.rows[l.rows.size() - 1] = 1 << 30;
    if (variant == 2) l.row_offsets[1] = static_cast<int32_t>(l.rows.size() + 50);
    const int64_t nv_claimed = core::num_values(p.view());
    const int64_t nv = variant == 3 ? nv_claimed / 2 : nv_claimed;
    const int64_t m = 70;
    std::mt19937_64 rng(variant);
    DeviceBuffer<__nv_bfloat16> gy = random_buffer<__nv_bfloat16>(m * p.n, rng), x = random_buffer<__nv_bfloat16>(m * p.k, rng);
    DeviceBuffer<__nv_bfloat16> values = random_buffer<__nv_bfloat16>(std::max<int64_t>(nv, 1), rng);
    DeviceBuffer<__nv_bfloat16> gx(m * p.k), gv(std::max<int64_t>(nv, 1));
    const cuda::GradInputPlan gip = cuda::plan_grad_input(p.k, l.rows.size(), p.dev().num_tiles, true, kH100);
    DeviceBuffer<int32_t> bounds(gip.bounds_count);
    cuda::GradInputParams<__nv_bfloat16, float> gi{};
    gi.gy = gy.data(), gi.ldg = p.n, gi.values = values.data(), gi.nv = nv, gi.m = m, gi.n = p.n, gi.k = p.k;
    gi.layout = p.dev(), gi.gx = gx.data(), gi.ldx = p.k, gi.gy_vec = gi.v_vec = gi.gx_vec = true;
    CHECK_NOTHROW(cuda::run_grad_input(gip, gi, bounds.data(), EmuLaunch{}));
    const cuda::GradValuesShape shape{m, p.k, p.tile, p.dev().num_tiles, static_cast<int64_t>(l.rows.size()), p.k, nv,
                                      true, true};
    for (const auto kernel : {GradValuesKernel::kV2, GradValuesKernel::kMma64}) {
      const cuda::GradValuesPlan gvp = cuda::plan_grad_values(shape, kH100, &kernel);
      REQUIRE(gvp.kernel == kernel);
      DeviceBuffer<float> ws(gvp.ws_count);
      DeviceBuffer<int32_t> gvb(gvp.bounds_count);
      cuda::GradValuesParams<__nv_bfloat16, float> g{};
      g.gy = gy.data(), g.ldg = p.n, g.x = x.data(), g.ldx = p.k, g.m = m, g.n = p.n, g.k = p.k, g.layout = p.dev();
      g.nv = nv, g.out = gv.data(), g.gy_vec = g.x_vec = true;
      CHECK_NOTHROW(cuda::run_grad_values(gvp, g, gvb.data(), ws.data(), EmuLaunch{}));
    }
  }
}

// The dense fallback's rule (prefer_dense_backward) on the shapes where perf_model.py's mirror of it picks
// (test_perf_model.py checks the mirror against the full model): cuBLAS on the dense weight where the sparse
// kernel's sustained rate loses by more than 10% -- an H100 at 50% and M large enough to hide the unpack; never at
// small M (the sparse kernels stream only the kept weights) nor on an A100 at 50%.
TEST_CASE("dense fallback rule of the backward: the perf model's picks (H100 / A100, 25-75%, small and large M)",
          "[cuda-emulation][backward][plan]") {
  using cuda::BackwardOp;
  struct Row {
    int cc;
    int64_t m, k, n;
    double s;
    bool gi, gv;  // dense for grad_input, grad_values
  };
  const Row rows[] = {
      {9, 16384, 4096, 14336, 0.5, true, true},   {9, 16384, 4096, 14336, 0.75, false, false},
      {9, 64, 4096, 14336, 0.5, false, false},    {9, 1024, 4096, 14336, 0.5, true, false},
      {9, 4096, 768, 768, 0.5, true, true},       {9, 16384, 768, 768, 0.75, false, false},
      {9, 16384, 768, 768, 0.6, true, false},     {9, 16384, 4096, 14336, 0.25, true, true},
      {8, 16384, 4096, 14336, 0.5, false, false}, {8, 16384, 4096, 14336, 0.75, false, false},
      {8, 64, 4096, 14336, 0.5, false, false},    {8, 16384, 4096, 14336, 0.25, true, false},
  };
  for (const Row& r : rows) {
    INFO("cc " << r.cc << ", M " << r.m << ", " << r.k << " -> " << r.n << " at " << r.s);
    const int64_t nv = static_cast<int64_t>((1.0 - r.s) * static_cast<double>(r.n * r.k));
    CHECK(cuda::prefer_dense_backward(BackwardOp::kGradInput, r.cc, r.m, r.n, r.k, nv) == r.gi);
    CHECK(cuda::prefer_dense_backward(BackwardOp::kGradValues, r.cc, r.m, r.n, r.k, nv) == r.gv);
  }
  // degenerate problems never take it
  CHECK_FALSE(cuda::prefer_dense_backward(BackwardOp::kGradInput, 9, 0, 4096, 4096, 100));
  CHECK_FALSE(cuda::prefer_dense_backward(BackwardOp::kGradValues, 9, 16384, 4096, 4096, 0));
}
