// grad_values of tw_linear on sm_90a (csrc/cuda/tw_gv_sm90u_kernels.cuh) in
// the host emulation: the real kernel source through the real plan and
// launch code (plan_grad_values / run_grad_values of tw_bwd_launch.cuh) and
// the host helpers the CUDA operator caches with the layout (sm90_layout.cuh),
// against a float64 reference of gV = packed(gy^T x). Every case runs under
// several schedule seeds; the results must be bit-identical across them (the
// M-split partials are added in a fixed order).
#include "emu_cuda.h"  // first: the emulated CUDA runtime and PTX (sm90 included)

#include <catch2/catch.hpp>

#include <algorithm>

#include "cuda/sm90_layout.cuh"
#include "cuda/tw_bwd_launch.cuh"
#include "emu_testing.h"

using namespace tilesparse;
using namespace tilesparse::emu_testing;
using cuda::GradValuesKernel;

namespace {

const cuda::DeviceCaps kH100{227 * 1024, 132, 9, 0};
const cuda::DeviceCaps kH100FewSms{227 * 1024, 8, 9, 0};  // persistent: several items per cluster; M-splits
const cuda::DeviceCaps kH100x16{227 * 1024, 16, 9, 0};    // a 16-SM Hopper (the plan cases)
const cuda::DeviceCaps kHopper2{227 * 1024, 2, 9, 0};      // a 2-SM Hopper: the cases' few CTAs fill it
const cuda::DeviceCaps kA100{163 * 1024, 108, 8, 0};

const uint64_t kScheduleSeeds[] = {1, 2, 3};

struct GvCase {
  std::string name;
  Sm90Spec spec;
  int64_t m;
  cuda::DeviceCaps caps;
  GradValuesKernel expect;
  int cluster = 0;        // forced cluster size (0: sm90_gv_cluster's)
  int expect_cluster = 0; // 0: any
  int expect_splits = 0;  // 0: any; 1: exactly one; 2: more than one
  int64_t ldx_extra = 0;  // x rows padded by this many elements
  int64_t ldg_extra = 0;  // gy rows padded
  int64_t min_items_per_cluster = 0;
  const GradValuesKernel* force = nullptr;
};

template <typename T>
void run_gv_case(const GvCase& gc) {
  using E = Elem<T>;
  INFO(gc.name << " (" << E::name << ")");
  const Problem p = make_sm90_problem(gc.spec);
  std::mt19937_64 rng(gc.spec.seed * 11 + 3);
  const int64_t m = gc.m, n = p.n, k = p.k, ldx = k + gc.ldx_extra, ldg = n + gc.ldg_extra;
  DeviceBuffer<T> x = random_buffer<T>(m * ldx, rng), gy = random_buffer<T>(m * ldg, rng);

  // The host side, as the operator caches it with the layout.
  const auto& ro = p.layout.row_offsets;
  const int64_t nt = static_cast<int64_t>(ro.size()) - 1, nc = static_cast<int64_t>(p.layout.cols.size());
  const std::vector<int32_t> kept = cuda::sm90_kept_counts(ro.data(), p.layout.rows.data(), nt);
  std::vector<int32_t> slots(static_cast<size_t>(nt));
  for (int64_t t = 0; t < nt; ++t) slots[t] = ro[t + 1] - ro[t];
  const std::vector<int32_t> table = cuda::sm90_slice_table(kept.data(), nt, p.tile, nc);
  const bool sm90_layout = cuda::sm90_unit16_runs(ro.data(), p.layout.rows.data(), kept.data(), nt) &&
                           cuda::sm90_slots_aligned(ro.data(), nt) &&
                           cuda::sm90_slice_cols_runs(p.layout.cols.data(), nc, p.tile) && !table.empty();
  const int cluster = gc.cluster > 0 ? gc.cluster : cuda::sm90_gv_cluster(slots.data(), table, p.tile);
  const std::vector<int32_t> entries = cuda::sm90_gv_item_table(slots.data(), table, p.tile, cluster);
  DeviceBuffer<int32_t> slices_dev(static_cast<int64_t>(table.size())), entries_dev(static_cast<int64_t>(entries.size()));
  std::copy(table.begin(), table.end(), slices_dev.data());
  std::copy(entries.begin(), entries.end(), entries_dev.data());

  int64_t max_rows = 0;
  for (int64_t t = 0; t < nt; ++t) max_rows = std::max<int64_t>(max_rows, slots[t]);
  const int64_t nv = core::num_values(p.view());
  cuda::GradValuesShape shape{m, k, p.tile, nt, static_cast<int64_t>(p.layout.rows.size()), max_rows, nv, E::is_half,
                              aligned16(x.data()) && ldx % 8 == 0};
  shape.gy_vec = aligned16(gy.data()) && ldg % 8 == 0;
  shape.sm90_layout = sm90_layout;
  shape.sm90_cluster = cluster;
  shape.sm90_entries = static_cast<int64_t>(entries.size()) / 2;
  const cuda::GradValuesPlan plan = cuda::plan_grad_values(shape, gc.caps, gc.force);
  INFO("plan: " << cuda::grad_values_kernel_name(plan.kernel) << " cluster=" << plan.cluster << " splits=" << plan.splits
                << " items=" << plan.items << " grid=" << plan.grid << " entries=" << shape.sm90_entries
                << " sm90_layout=" << sm90_layout);
  REQUIRE(plan.kernel == gc.expect);
  if (gc.expect_cluster > 0) REQUIRE(plan.cluster == gc.expect_cluster);
  if (gc.expect_splits == 1) REQUIRE(plan.splits == 1);
  if (gc.expect_splits == 2) REQUIRE(plan.splits > 1);
  if (gc.min_items_per_cluster > 0) REQUIRE(plan.items >= gc.min_items_per_cluster * (plan.grid / plan.cluster));

  // reference: gV = packed(gy^T x) (padding slots zero)
  const std::vector<double> gyd = gy.as_double(), xd = x.as_double();
  const auto [ref, mag] = reference_grad_values(p, m, gyd, ldg, xd, ldx);

  cuda::GradValuesParams<T, float> prm{};
  prm.gy = gy.data();
  prm.ldg = ldg;
  prm.x = x.data();
  prm.ldx = ldx;
  prm.m = m;
  prm.n = n;
  prm.k = k;
  prm.layout = p.dev();
  prm.nv = nv;
  prm.gy_vec = shape.gy_vec;
  prm.x_vec = shape.x_vec;
  prm.sm90_slices = slices_dev.data();
  prm.sm90_num_slices = slices_dev.size();
  prm.sm90_entries = entries_dev.data();
  prm.sm90_num_entries = shape.sm90_entries;
  DeviceBuffer<T> gv(nv);
  DeviceBuffer<float> ws(plan.ws_count);
  DeviceBuffer<int32_t> bounds(plan.bounds_count);
  prm.out = gv.data();

  std::vector<double> first;
  for (uint64_t seed : kScheduleSeeds) {
    INFO("schedule seed " << seed);
    emu::set_schedule_seed(seed);
    emu::reset_stats();
    gv.fill_garbage();  // every slot must be written (padding: zero)
    cuda::run_grad_values(plan, prm, bounds.data(), ws.data(), EmuLaunch{});
    const emu::Stats st = emu::stats();
    if (plan.kernel == GradValuesKernel::kSm90U) {  // both operands by TMA straight to wgmma: no thread touches one
      CHECK(st.wgmma > 0);
      CHECK(st.clusters > 0);
      CHECK(st.ldmatrix == 0);
      if (plan.cluster > 1) CHECK(st.tma_multicast > 0);
    }
    const std::vector<double> got = gv.as_double();
    if (first.empty()) {
      first = got;
      check_close(gv, ref, mag, "gV");
    } else {
      for (int64_t i = 0; i < nv; ++i)
        if (std::memcmp(&got[i], &first[i], sizeof(double)) != 0)
          FAIL("run under schedule seed " << seed << " differs from the first at " << i << ": " << got[i] << " vs "
                                          << first[i]);
    }
  }
  emu::set_schedule_seed(0);
  SUCCEED(cuda::grad_values_kernel_name(plan.kernel) << ": M " << m << ", " << k << " -> " << n << " ok");
}

void run_both(const GvCase& c) {
  run_gv_case<__nv_bfloat16>(c);
  run_gv_case<__half>(c);
}

const GradValuesKernel kForceV2 = GradValuesKernel::kV2;
const GradValuesKernel kForceSm90 = GradValuesKernel::kSm90U;

}  // namespace

// name, {n, k, tile, row_density, col_density, unit, pad, seed, drop, dense, sparse, tew}, m, caps, kernel,
//       cluster, expect_cluster, expect_splits, ldx_extra, ldg_extra, items per cluster, force

TEST_CASE("sm90 gv: unit 16, one 256-slot block per slice (cluster 1) / M tail / strided x and gy",
          "[cuda-emulation][grad_values][sm90][sm90u]") {
  run_both({"sm90 gv cluster 1", {256, 400, 128, 0.4, 1.0, 16, 8, 201}, 300, kHopper2, GradValuesKernel::kSm90U, 0, 1, 1,
            8, 16});
}

TEST_CASE("sm90 gv: clusters of 4 (gy multicast over 4 position blocks) / a partial last group",
          "[cuda-emulation][grad_values][sm90][sm90u]") {
  run_both({"sm90 gv cluster 4", {256, 2048, 128, 0.45, 1.0, 16, 8, 202}, 256, kHopper2, GradValuesKernel::kSm90U, 0, 4, 1});
}

TEST_CASE("sm90 gv: clusters of 2 / tile 256 (two slices per tile) / N tail (a partial last slice)",
          "[cuda-emulation][grad_values][sm90][sm90u]") {
  run_both({"sm90 gv cluster 2", {400, 1024, 256, 0.5, 1.0, 16, 8, 203}, 260, kHopper2, GradValuesKernel::kSm90U, 2, 2, 1});
}

TEST_CASE("sm90 gv: M-splits (fp32 partials, fixed-order reduction) / persistent: several items per cluster",
          "[cuda-emulation][grad_values][sm90][sm90u]") {
  run_both({"sm90 gv splits", {640, 512, 128, 0.5, 1.0, 16, 8, 204}, 1100, kH100FewSms, GradValuesKernel::kSm90U, 2, 2, 2,
            0, 0, 2});
}

TEST_CASE("sm90 gv: an empty tile / skewed kept counts (dense tile, one-run tile) / padding slots (pad 32)",
          "[cuda-emulation][grad_values][sm90][sm90u]") {
  run_both({"sm90 gv empty/skewed/pad", {640, 768, 128, 0.3, 1.0, 16, 32, 205, 1, 0, 2}, 257, kHopper2,
            GradValuesKernel::kSm90U, 0, 0, 0, 0, 0, 1});
}

TEST_CASE("sm90 gv: TEW-derived layout (uneven kept counts) / cluster 4 forced on short tiles",
          "[cuda-emulation][grad_values][sm90][sm90u]") {
  run_both({"sm90 gv TEW", {512, 512, 128, 0.35, 1.0, 16, 8, 206, -1, -1, -1, true}, 320, kHopper2, GradValuesKernel::kSm90U,
            4, 4});
}

TEST_CASE("sm90 gv plan: where sm90u does not apply, v2 (2-D TW columns, unit 8, small M, few entries, A100, forced v2)",
          "[cuda-emulation][grad_values][sm90]") {
  run_gv_case<__nv_bfloat16>({"2-D TW: slices are not column runs", {600, 256, 128, 0.5, 0.8, 16, 8, 207}, 256, kH100x16,
                              GradValuesKernel::kV2});
  run_gv_case<__nv_bfloat16>({"unit 8", {256, 256, 128, 0.5, 1.0, 8, 8, 208}, 256, kH100x16, GradValuesKernel::kV2});
  run_gv_case<__nv_bfloat16>({"M = 200", {256, 256, 128, 0.5, 1.0, 16, 8, 209}, 200, kH100x16, GradValuesKernel::kV2});
  run_gv_case<__nv_bfloat16>({"2 entries at M = 256 on a 132-SM H100 (too few CTAs)", {256, 256, 128, 0.5, 1.0, 16, 8, 213},
                              256, kH100, GradValuesKernel::kV2});
  run_gv_case<__nv_bfloat16>({"A100", {256, 256, 128, 0.5, 1.0, 16, 8, 210}, 256, kA100, GradValuesKernel::kV2});
  run_gv_case<__nv_bfloat16>({"forced v2", {256, 256, 128, 0.5, 1.0, 16, 8, 211}, 256, kH100x16, GradValuesKernel::kV2, 0,
                              0, 0, 0, 0, 0, &kForceV2});
  run_gv_case<__nv_bfloat16>({"forced sm90 where it applies", {256, 256, 128, 0.5, 1.0, 16, 8, 212}, 256, kH100x16,
                              GradValuesKernel::kSm90U, 0, 0, 0, 0, 0, 0, &kForceSm90});
}

// The rule that decides between sm90u and v2 on a 132-SM H100, on the shapes of perf_model.py's gv_plan
// (whose predictions it follows): CTAs at the most M-ranges, entries x cluster x min(16, M / 512), fill the SMs.
TEST_CASE("sm90 gv plan: sm90u where its CTAs fill an H100, v2 where they cannot (perf_model gv_plan's shapes)",
          "[cuda-emulation][grad_values][sm90]") {
  struct Row {
    const char* name;
    int64_t m, k, n, entries;
    int cluster;
    GradValuesKernel expect;
  };
  const Row rows[] = {
      {"768 x 768 at 75%, M = 16384: 6 entries x 1 x 16 = 96 CTAs", 16384, 768, 768, 6, 1, GradValuesKernel::kV2},
      {"768 x 768 at 50%, M = 16384: 6 x 2 x 16 = 192", 16384, 768, 768, 6, 2, GradValuesKernel::kSm90U},
      {"768 x 768 at 50%, M = 4096: 6 x 2 x 8 = 96", 4096, 768, 768, 6, 2, GradValuesKernel::kV2},
      {"4096 -> 1024 at 75%, M = 16384: 8 x 4 x 16 = 512", 16384, 4096, 1024, 8, 4, GradValuesKernel::kSm90U},
      {"4096 -> 14336 at 75%, M = 16384", 16384, 4096, 14336, 112, 4, GradValuesKernel::kSm90U},
      {"M = 300: one range, 16 entries x 4 = 64", 300, 4096, 1024, 16, 4, GradValuesKernel::kV2},
  };
  for (const Row& r : rows) {
    INFO(r.name);
    const int64_t tiles = r.n / 128, kept = r.k / 4;
    cuda::GradValuesShape shape{r.m, r.k, 128, tiles, tiles * kept, kept, tiles * 128 * kept, true, true};
    shape.gy_vec = true;
    shape.sm90_layout = true;
    shape.sm90_cluster = r.cluster;
    shape.sm90_entries = r.entries;
    const cuda::GradValuesPlan plan = cuda::plan_grad_values(shape, kH100);
    CHECK(plan.kernel == r.expect);
    if (plan.kernel == GradValuesKernel::kSm90U) {
      CHECK(plan.cluster == r.cluster);
      CHECK(plan.splits >= 1);
      CHECK(plan.splits <= cuda::gv_sm90u_max_splits(r.m));
      CHECK(plan.grid <= 132);
      CHECK(plan.grid % r.cluster == 0);
    }
  }
}
