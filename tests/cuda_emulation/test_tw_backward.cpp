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

struct BwdCase {
  std::string name;
  ProblemSpec spec;
  int64_t m;
  cuda::DeviceCaps caps;
  int expect_splits = 0;  // grad_values: 0 any, 1 exactly one, 2 more than one
};

std::vector<BwdCase> cases() {
  return {
      {"1-D TW 75%, tile 128, M not a multiple of 128", {256, 640, 128, 0.25, 1.0, 8, -1, 31}, 200, kOneSm, 1},
      {"2-D TW, tile 64, unpadded kept counts, a tile keeping nothing", {200, 300, 64, 0.35, 0.6, 1, 1, 32}, 77, kH100},
      {"M = 1, tile 80 (partial panels)", {170, 96, 80, 0.5, 1.0, 8, -1, 33}, 1, kH100},
      {"long M: M-splits of grad_values", {64, 160, 64, 0.4, 1.0, 8, -1, 34}, 1100, kH100, 2},
      {"dense tiles, 90% sparse tiles", {128, 512, 64, 0.1, 1.0, 8, -1, 35}, 96, kH100},
  };
}

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
  {
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
  // ---- grad_values: gV = packed(gy^T @ x), zero in padding
  {
    int64_t max_rows = 0;
    for (size_t t = 0; t + 1 < p.layout.row_offsets.size(); ++t)
      max_rows = std::max<int64_t>(max_rows, p.layout.row_offsets[t + 1] - p.layout.row_offsets[t]);
    const int64_t nv = values.size();
    const cuda::GradValuesPlan plan = cuda::plan_grad_values(m, p.tile, p.dev().num_tiles, p.layout.rows.size(),
                                                             max_rows, nv, E::is_half, bc.caps);
    INFO("grad_values plan: " << cuda::grad_values_kernel_name(plan.kernel) << " splits=" << plan.splits);
    if (bc.expect_splits == 1) REQUIRE(plan.splits == 1);
    if (bc.expect_splits == 2) REQUIRE(plan.splits > 1);
    DeviceBuffer<T> gv(nv);
    gv.fill_garbage();  // every slot must be written (padding: zero)
    DeviceBuffer<Acc> ws(plan.ws_count);
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
    prm.x_vec = aligned16(prm.x) && k % 8 == 0;
    cuda::run_grad_values(plan, prm, ws.data(), EmuLaunch{});
    std::vector<double> gw(n * k, 0.0), gwa(n * k, 0.0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < n; ++c)
        for (int64_t q = 0; q < k; ++q) {
          gw[c * k + q] += gyd[i * n + c] * xd[i * k + q];
          gwa[c * k + q] += std::fabs(gyd[i * n + c] * xd[i * k + q]);
        }
    check_close(gv, packed(p, gw), packed(p, gwa), "gV");
    SUCCEED("grad_values " << cuda::grad_values_kernel_name(plan.kernel) << " splits=" << plan.splits << " ok");
  }
}

}  // namespace

TEST_CASE("emulated CUDA backward, bf16: grad_input (mma) and grad_values (mma, BMJ 64/128)",
          "[cuda-emulation][backward]") {
  for (const BwdCase& c : cases()) run_case<__nv_bfloat16>(c);
}

TEST_CASE("emulated CUDA backward, fp16", "[cuda-emulation][backward]") {
  for (const BwdCase& c : cases()) run_case<__half>(c);
}

TEST_CASE("emulated CUDA backward, fp32 and fp64: SIMT kernels", "[cuda-emulation][backward]") {
  const auto all = cases();
  for (size_t i : {size_t(1), size_t(2)}) {
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
    const cuda::GradValuesPlan gvp = cuda::plan_grad_values(m, p.tile, p.dev().num_tiles, l.rows.size(), p.k, nv, true, kH100);
    DeviceBuffer<float> ws(gvp.ws_count);
    cuda::GradValuesParams<__nv_bfloat16, float> g{};
    g.gy = gy.data(), g.ldg = p.n, g.x = x.data(), g.ldx = p.k, g.m = m, g.n = p.n, g.k = p.k, g.layout = p.dev();
    g.nv = nv, g.out = gv.data(), g.gy_vec = g.x_vec = true;
    CHECK_NOTHROW(cuda::run_grad_values(gvp, g, ws.data(), EmuLaunch{}));
  }
}
