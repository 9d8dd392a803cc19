// The sm_90a forward of tw_linear (csrc/cuda/tw_fwd_sm90_kernels.cuh) in the
// host emulation: the real kernel source, through the real plan and launch
// code (plan_fwd / run_fwd of tw_fwd_launch.cuh) and the same host helpers
// as the CUDA operator (kept counts, slice table, per-tile tensor maps),
// against a float64 reference of the packed format. Every case runs under
// several schedule seeds; the results must be bit-identical across them (the
// K-split reduction has a fixed order), and the K-split's arrival counters
// must be back to zero after every launch.
#include "emu_cuda.h"  // first: the emulated CUDA runtime and PTX (sm90 included)

#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>

#include "cuda/tw_fwd_launch.cuh"
#include "emu_testing.h"

using namespace tilesparse;
using namespace tilesparse::emu_testing;
using cuda::FwdKernel;

namespace {

// Hopper as the plan sees it: compute capability 9.0, 227 KiB opt-in.
const cuda::DeviceCaps kH100{227 * 1024, 132, 9, 0};
const cuda::DeviceCaps kH100FewSms{227 * 1024, 8, 9, 0};  // persistent: several items per cluster
const cuda::DeviceCaps kH100TwoSms{227 * 1024, 2, 9, 0};  // small M without K-split
const cuda::DeviceCaps kA100{163 * 1024, 108, 8, 0};      // not Hopper: v2

const uint64_t kScheduleSeeds[] = {1, 2, 3};

struct Sm90Case {
  std::string name;
  Sm90Spec spec;
  int64_t m;
  cuda::DeviceCaps caps;
  FwdKernel expect;
  int cluster = 0;        // forced cluster size (0: the plan's)
  int expect_cluster = 0; // 0: any
  int expect_splits = 0;  // 0: any; 1: exactly one; 2: more than one
  int ldmatrix = 0;       // 1: the ldmatrix gather must run, -1: must not, 0: either
  bool bias = true;
  int64_t ldx_extra = 0;  // x rows padded by this many elements
  int64_t min_items_per_cluster = 0;
  bool design_a = false;  // force design A (TILESPARSE_CUDA_FWD_KERNEL=sm90a) where design U would apply
  bool multi_panel = false;  // design U: more than one panel of slices
};

template <typename T>
void run_sm90_case(const Sm90Case& fc) {
  using E = Elem<T>;
  INFO(fc.name << " (" << E::name << ")");
  const Problem p = make_sm90_problem(fc.spec);
  std::mt19937_64 rng(fc.spec.seed * 7 + 1);
  const int64_t m = fc.m, ldx = p.k + fc.ldx_extra;
  DeviceBuffer<T> x = random_buffer<T>(m * ldx, rng);
  DeviceBuffer<T> values = random_values<T>(p, rng);  // NaN in padding slots: they must be ignored
  DeviceBuffer<T> bias = random_buffer<T>(p.n, rng);
  DeviceBuffer<T> y(m * p.n);

  // The host side of the sm90 path, as the operator caches it with the layout.
  const auto& ro = p.layout.row_offsets;
  const int64_t nt = static_cast<int64_t>(ro.size()) - 1, nc = static_cast<int64_t>(p.layout.cols.size());
  const std::vector<int32_t> kept = cuda::sm90_kept_counts(ro.data(), p.layout.rows.data(), nt);
  const std::vector<int32_t> table = cuda::sm90_slice_table(kept.data(), nt, p.tile, nc);
  const bool slots_aligned = cuda::sm90_slots_aligned(ro.data(), nt);
  const bool unit16 = cuda::sm90_unit16_runs(ro.data(), p.layout.rows.data(), kept.data(), nt);
  std::vector<CUtensorMap> maps(static_cast<size_t>(std::max<int64_t>(nt, 1)));
  if (slots_aligned)  // else the plan cannot pick sm90 (a TMA row stride is a multiple of 16 bytes)
    REQUIRE(cuda::sm90_encode_tile_maps(maps.data(), values.data(), values.size(), ro.data(), kept.data(), nt, p.tile, nc));
  DeviceBuffer<int32_t> slices(static_cast<int64_t>(table.size()));
  std::copy(table.begin(), table.end(), slices.data());

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
  a.sm90_slices = slices.data();
  a.sm90_num_slices = slices.size();
  a.sm90_tile_maps = maps.data();
  cuda::FwdShape shape{m, p.k, p.n, p.tile, nt, nc, E::is_half, a.x_vec16};
  shape.v_vec16 = a.v_vec16;
  shape.sm90_layout = slots_aligned;
  shape.num_slices = static_cast<int64_t>(table.size());
  shape.sm90_unit16 = unit16;
  shape.v_bytes = values.size() * 2;
  shape.max_kept = kept.empty() ? 0 : *std::max_element(kept.begin(), kept.end());
  const FwdKernel design_a = FwdKernel::kSm90;
  const cuda::FwdPlan plan = cuda::plan_fwd(shape, fc.caps, fc.design_a ? &design_a : nullptr, fc.cluster);
  INFO("plan: " << cuda::fwd_kernel_name(plan.kernel) << " bm=" << plan.bm << " cluster=" << plan.cluster
                << " splits=" << plan.splits << " items=" << plan.items << " grid=" << plan.grid
                << " slices=" << table.size() << " unit16=" << unit16 << " panel=" << plan.panel);
  REQUIRE(plan.kernel == fc.expect);
  if (fc.expect_cluster > 0) REQUIRE(plan.cluster == fc.expect_cluster);
  if (fc.expect_splits == 1) REQUIRE(plan.splits == 1);
  if (fc.expect_splits == 2) REQUIRE(plan.splits > 1);
  if (fc.min_items_per_cluster > 0) REQUIRE(plan.items >= fc.min_items_per_cluster * (plan.grid / plan.cluster));
  if (fc.multi_panel) REQUIRE((plan.panel > 0 && plan.panel < static_cast<int64_t>(table.size())));

  DeviceBuffer<int32_t> bounds(plan.bounds_count);
  DeviceBuffer<float> ws(plan.ws_floats);
  DeviceBuffer<uint8_t> covered(plan.covered_bytes);
  DeviceBuffer<int32_t> counters(plan.counters_count);  // zeroed
  const std::vector<double> xd = x.as_double(), vd = values.as_double(), bd = bias.as_double();
  const std::vector<double> ref = reference_forward(p, m, xd, ldx, vd, fc.bias ? &bd : nullptr);
  const std::vector<double> mag = reference_forward(p, m, abs_of(xd), ldx, abs_of(vd), fc.bias ? &bd : nullptr);

  std::vector<double> first;
  bool bounds_ready = false;
  for (uint64_t seed : kScheduleSeeds) {
    INFO("schedule seed " << seed);
    emu::set_schedule_seed(seed);
    emu::reset_stats();
    y.fill_garbage();  // every output must be written
    cuda::run_fwd<T>(plan, a, cuda::FwdWorkspace{bounds.data(), ws.data(), covered.data(), bounds_ready, counters.data()},
                     EmuLaunch{});
    bounds_ready = plan.bounds_count > 0;  // later runs: the cached chunk bounds (no bounds kernel), as the operator
    const emu::Stats st = emu::stats();
    if (plan.kernel == FwdKernel::kSm90U || plan.kernel == FwdKernel::kSm90USmall) {  // A by TMA boxes, both operands from shared memory: no gathers
      CHECK(st.wgmma > 0);
      CHECK(st.clusters > 0);
      CHECK(st.ldmatrix == 0);
      if (plan.cluster > 1) CHECK(st.tma_multicast > 0);
    }
    if (plan.kernel == FwdKernel::kSm90 || plan.kernel == FwdKernel::kSm90Small) {
      CHECK(st.wgmma > 0);
      CHECK(st.clusters > 0);
      if (plan.cluster > 1) CHECK(st.tma_multicast > 0);
      if (fc.ldmatrix > 0) CHECK(st.ldmatrix > 0);
      if (fc.ldmatrix < 0) CHECK(st.ldmatrix == 0);
    }
    for (int64_t g = 0; g < counters.size(); ++g) REQUIRE(counters[g] == 0);  // reset by the last CTA
    const std::vector<double> got = y.as_double();
    if (first.empty()) {
      first = got;
      for (int64_t i = 0; i < m * p.n; ++i) {
        // one rounding of the fp32 sum to T, plus fp32 accumulation error
        const double tol = E::rel_tol * std::fabs(ref[i]) + 1e-5 * std::fabs(mag[i]) + 1e-30;
        if (!(std::fabs(got[i] - ref[i]) <= tol))
          FAIL("y[" << i / p.n << ", " << i % p.n << "] = " << got[i] << ", expected " << ref[i] << " (tol " << tol << ")");
      }
    } else {
      for (int64_t i = 0; i < m * p.n; ++i)
        if (std::memcmp(&got[i], &first[i], sizeof(double)) != 0)
          FAIL("run under schedule seed " << seed << " differs from the first at " << i << ": " << got[i] << " vs " << first[i]);
    }
  }
  emu::set_schedule_seed(0);
  SUCCEED(cuda::fwd_kernel_name(plan.kernel) << ": " << m << " x " << p.k << " -> " << p.n << " ok");
}

void run_both(const Sm90Case& c) {
  run_sm90_case<__nv_bfloat16>(c);
  run_sm90_case<__half>(c);
}

}  // namespace

// name, {n, k, tile, row_density, col_density, unit, pad, seed, drop, dense, sparse, tew}, m, caps, kernel,
//       cluster, expect_cluster, expect_splits, ldmatrix, bias, ldx_extra, items per cluster

TEST_CASE("sm90: 1-D TW unit 1 (2-byte gather) / M tail / K tail (K % 64 != 0)", "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 unit 1", {256, 200, 128, 0.3, 1.0, 1, 8, 101}, 200, kH100, FwdKernel::kSm90, 0, 1, 1, -1});
}

TEST_CASE("sm90: unit 8 (ldmatrix gather) / cluster 2 / strided x", "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 unit 8", {512, 320, 128, 0.4, 1.0, 8, 8, 102}, 130, kH100, FwdKernel::kSm90, 2, 2, 1, 1, true, 8});
}

TEST_CASE("sm90: unit 16 / cluster 4 / 2-D TW (pruned outputs / partial last tile)", "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 unit 16 2-D", {1100, 256, 128, 0.35, 0.9, 16, 8, 103}, 150, kH100, FwdKernel::kSm90, 4, 4, 1, 1, true, 0,
            0, true});
}

TEST_CASE("sm90: 2-D TW / tile 256 (two slices per tile) / runs straddling chunks", "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 tile 256", {700, 264, 256, 0.5, 0.7, 8, 8, 104}, 129, kH100, FwdKernel::kSm90, 2});
}

TEST_CASE("sm90: TEW-derived layout (TW part at s + delta) / the plan picks clusters of 4",
          "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 TEW", {2048, 192, 128, 0.15, 1.0, 8, 8, 105, -1, -1, -1, true}, 70, kH100, FwdKernel::kSm90, 0, 4, 1});
}

TEST_CASE("sm90: an empty tile (kpad_t = 0) / skewed kept counts (dense tile / one-run tile)",
          "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 empty/skewed", {640, 384, 128, 0.3, 1.0, 1, 8, 106, 1, 0, 2}, 140, kH100, FwdKernel::kSm90, 2, 2, 1, 1});
}

TEST_CASE("sm90: without bias / unit 1 with a dense tile", "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 no bias", {384, 128, 128, 0.5, 1.0, 1, 8, 107, -1, 1}, 100, kH100, FwdKernel::kSm90, 1, 1, 1, 1, false});
}

TEST_CASE("sm90: 97% sparse / K = 2048 - every step spans several x chunks (chunk walk and release)",
          "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 multi-chunk steps", {256, 2048, 128, 0.03, 1.0, 1, 8, 113}, 130, kH100, FwdKernel::kSm90, 2, 2, 1, -1});
}

TEST_CASE("sm90 small M: M = 1 / split-K (several splits) / cluster 2", "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 M=1", {512, 512, 128, 0.3, 1.0, 1, 8, 108}, 1, kH100, FwdKernel::kSm90Small, 2, 2, 2});
}

TEST_CASE("sm90 small M: M = 16 / split-K / cluster 4 / unit 8 / K tail", "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 M=16", {1024, 456, 128, 0.4, 1.0, 8, 8, 109}, 16, kH100, FwdKernel::kSm90Small, 4, 4, 2, 1});
}

TEST_CASE("sm90 small M: M = 64 / no K-split (two SMs) / 2-D TW", "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 M=64 one split", {520, 256, 128, 0.4, 0.8, 1, 8, 110}, 64, kH100TwoSms, FwdKernel::kSm90Small, 1, 1, 1});
}

TEST_CASE("sm90 small M: M = 64 / split-K with an empty tile and no bias", "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 M=64 split", {512, 384, 128, 0.3, 1.0, 8, 8, 111, 2}, 64, kH100, FwdKernel::kSm90Small, 1, 1, 2, 0,
            false});
}

TEST_CASE("sm90 persistent: M = 4096 / several work items per cluster", "[cuda-emulation][forward][sm90]") {
  run_both({"sm90 M=4096", {512, 128, 128, 0.5, 1.0, 8, 8, 112}, 4096, kH100FewSms, FwdKernel::kSm90, 2, 2, 1, 1, true, 0, 4});
}

// Design U (csrc/cuda/tw_fwd_sm90u_kernels.cuh): unit-16 layouts, M > 64.
const cuda::DeviceCaps kH100SmallL2 = [] {  // an L2 that holds the V of 1-3 slices (of 8-24 KB)
  cuda::DeviceCaps c{227 * 1024, 4, 9, 0};
  c.l2_bytes = 40000;
  return c;
}();

TEST_CASE("sm90u: 1-D TW unit 16 / M tail (300: two M-blocks) / the plan's cluster of 2 / strided x",
          "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u unit 16", {512, 256, 128, 0.3, 1.0, 16, 8, 201}, 300, kH100, FwdKernel::kSm90U, 0, 2, 0, -1, true, 8});
}

TEST_CASE("sm90u: 2-D TW (pruned outputs, partial last tile) / cluster 4 with M-blocks past M",
          "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u 2-D", {1100, 320, 128, 0.35, 0.9, 16, 8, 202}, 200, kH100, FwdKernel::kSm90U, 4, 4});
}

TEST_CASE("sm90u: an empty tile / skewed kept counts (dense tile, one-run tile) / no bias",
          "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u empty/skewed", {640, 384, 128, 0.3, 1.0, 16, 8, 203, 1, 0, 2}, 130, kH100, FwdKernel::kSm90U, 1, 1, 0, 0,
            false});
}

TEST_CASE("sm90u: tile 256 (two slices per tile) / K % 64 != 0 / cluster 2", "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u tile 256", {700, 272, 256, 0.5, 0.7, 16, 8, 204}, 257, kH100, FwdKernel::kSm90U, 2, 2});
}

TEST_CASE("sm90u: TEW-derived layout (uneven kept counts) / M = 100", "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u TEW", {2048, 192, 128, 0.15, 1.0, 16, 8, 205, -1, -1, -1, true}, 100, kH100, FwdKernel::kSm90U});
}

TEST_CASE("sm90u persistent: M = 4096 / several items per cluster / several panels of slices",
          "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u M=4096", {640, 128, 128, 0.5, 1.0, 16, 8, 206}, 4096, kH100SmallL2, FwdKernel::kSm90U, 4, 4, 0, 0, true,
            0, 2, false, true});
}

TEST_CASE("sm90u small M: M = 1 / K-split over the kept steps (several splits)", "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u M=1", {512, 512, 128, 0.3, 1.0, 16, 8, 211}, 1, kH100, FwdKernel::kSm90USmall, 0, 1, 2});
}

TEST_CASE("sm90u small M: M = 16 / 2-D TW, an odd number of slices (one idle consumer) / K-split",
          "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u M=16", {1100, 448, 128, 0.4, 0.8, 16, 8, 212}, 16, kH100, FwdKernel::kSm90USmall, 0, 1, 2});
}

TEST_CASE("sm90u small M: M = 64 / no K-split (two SMs: several items per CTA)", "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u M=64 one split", {520, 256, 128, 0.4, 1.0, 16, 8, 213}, 64, kH100TwoSms, FwdKernel::kSm90USmall, 0, 1,
            1});
}

TEST_CASE("sm90u small M: M = 64 / K-split with an empty tile and a dense tile, no bias",
          "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u M=64 split", {512, 384, 128, 0.3, 1.0, 16, 8, 214, 2, 1}, 64, kH100, FwdKernel::kSm90USmall, 0, 1, 2, 0,
            false});
}

TEST_CASE("sm90u small M: M = 48 / K = 2048 - ~32 steps per item: the A ring (16) and B ring (4) wrap",
          "[cuda-emulation][forward][sm90][sm90u]") {
  run_both({"sm90u M=48 ring wrap", {256, 2048, 128, 0.5, 1.0, 16, 8, 215}, 48, kH100TwoSms, FwdKernel::kSm90USmall, 0, 1,
            2});
}

// The plan on Hopper: which kernel for which shape (the runs above check the
// kernels; here the choice, and that the fallbacks still compute y).
TEST_CASE("sm90 plan: kSm90 / kSm90Small on cc 9.x / v2 or v1 where sm90 does not apply",
          "[cuda-emulation][forward][sm90][plan]") {
  // M = 64 is small, 65 is not
  run_sm90_case<__nv_bfloat16>({"sm90 plan M=65", {256, 128, 128, 0.4, 1.0, 1, 8, 120}, 65, kH100, FwdKernel::kSm90});
  run_sm90_case<__nv_bfloat16>({"sm90 plan M=64", {256, 128, 128, 0.4, 1.0, 1, 8, 120}, 64, kH100, FwdKernel::kSm90Small});
  // tile % 128 != 0: v2
  run_sm90_case<__nv_bfloat16>({"sm90 plan tile 64", {256, 128, 64, 0.4, 1.0, 1, 8, 121}, 100, kH100, FwdKernel::kV2});
  // pad % 8 != 0 (slots not whole 16-byte rows): v2
  run_sm90_case<__half>({"sm90 plan pad 1", {256, 136, 128, 0.37, 1.0, 1, 1, 122}, 100, kH100, FwdKernel::kV2});
  // x rows not 16-byte aligned (K % 8 != 0): v1
  run_sm90_case<__half>({"sm90 plan K odd", {256, 131, 128, 0.4, 1.0, 1, 8, 123}, 100, kH100, FwdKernel::kMmaV1});
  // not Hopper: v2
  run_sm90_case<__half>({"sm90 plan cc 8.0", {256, 128, 128, 0.4, 1.0, 1, 8, 124}, 100, kA100, FwdKernel::kV2});
  // unit 16: design U for M > 64, design A at M <= 64 and where a run is cut short (K % 16 != 0, a dense tile)
  run_sm90_case<__half>({"sm90 plan unit 16 M=65", {256, 128, 128, 0.4, 1.0, 16, 8, 125}, 65, kH100, FwdKernel::kSm90U});
  run_sm90_case<__half>({"sm90 plan unit 16 M=64", {256, 128, 128, 0.4, 1.0, 16, 8, 125}, 64, kH100,
                         FwdKernel::kSm90USmall});
  run_sm90_case<__half>({"sm90 plan unit 16 M=64 sm90a", {256, 128, 128, 0.4, 1.0, 16, 8, 125}, 64, kH100,
                         FwdKernel::kSm90Small, 0, 0, 0, 0, true, 0, 0, true});
  run_sm90_case<__half>({"sm90 plan unit 16 K=200", {256, 200, 128, 0.4, 1.0, 16, 8, 126, -1, 0}, 100, kH100,
                         FwdKernel::kSm90});
  // forcing (TILESPARSE_CUDA_FWD_KERNEL): v2 on Hopper; sm90 where it does not apply falls back
  cuda::FwdShape s{100, 128, 256, 128, 2, 256, true, true};
  s.v_vec16 = true;
  s.sm90_layout = true;
  s.num_slices = 2;
  const FwdKernel v2 = FwdKernel::kV2, sm90 = FwdKernel::kSm90, v1 = FwdKernel::kMmaV1;
  CHECK(cuda::plan_fwd(s, kH100).kernel == FwdKernel::kSm90);
  CHECK(cuda::plan_fwd(s, kH100, &v2).kernel == FwdKernel::kV2);
  CHECK(cuda::plan_fwd(s, kH100, &v1).kernel == FwdKernel::kMmaV1);
  s.sm90_unit16 = true;  // design U unless design A is forced (sm90a); the family (sm90u) picks U
  const FwdKernel u = FwdKernel::kSm90U;
  CHECK(cuda::plan_fwd(s, kH100).kernel == FwdKernel::kSm90U);
  CHECK(cuda::plan_fwd(s, kH100, &sm90).kernel == FwdKernel::kSm90);
  CHECK(cuda::plan_fwd(s, kH100, &u).kernel == FwdKernel::kSm90U);
  CHECK(cuda::plan_fwd(s, kH100, &v2).kernel == FwdKernel::kV2);
  CHECK(cuda::plan_fwd(s, kA100, &u).kernel == FwdKernel::kV2);
  s.sm90_unit16 = false;
  CHECK(cuda::plan_fwd(s, kH100, &u).kernel == FwdKernel::kSm90);
  CHECK(cuda::plan_fwd(s, kA100, &sm90).kernel == FwdKernel::kV2);
  s.m = 10;
  CHECK(cuda::plan_fwd(s, kH100, &sm90).kernel == FwdKernel::kSm90Small);
  s.sm90_unit16 = true;  // small M: design U's small variant, design A when forced
  CHECK(cuda::plan_fwd(s, kH100).kernel == FwdKernel::kSm90USmall);
  CHECK(cuda::plan_fwd(s, kH100, &sm90).kernel == FwdKernel::kSm90Small);
  s.sm90_unit16 = false;
  s.v_vec16 = false;  // values not 16-byte aligned
  CHECK(cuda::plan_fwd(s, kH100).kernel == FwdKernel::kV2Small);
  s.v_vec16 = true;
  s.sm90_layout = false;  // host copy of the layout unknown (graph capture before it was cached)
  CHECK(cuda::plan_fwd(s, kH100).kernel == FwdKernel::kV2Small);
  // the persistent grid: the resident clusters (cudaOccupancyMaxActiveClusters), else num_sms / size
  s.sm90_layout = true;
  s.num_slices = 64;  // 8 groups of clusters of 4, 8 M-blocks: 64 items
  s.m = 1000;
  REQUIRE(cuda::plan_fwd(s, kH100).kernel == FwdKernel::kSm90);
  CHECK(cuda::plan_fwd(s, kH100).grid == 33 * 4);
  cuda::DeviceCaps gpcs = kH100;
  gpcs.sm90_clusters[2] = 32;  // clusters of 4 fit 4 per GPC: 32, not 33
  CHECK(cuda::plan_fwd(s, gpcs).grid == 32 * 4);
  // cluster size: 4 with two slice groups or more and little padding, else 2 / 1
  for (auto [ns, c] : {std::pair<int64_t, int>{1, 1}, {4, 1}, {8, 2}, {12, 2}, {16, 4}, {24, 4}, {18, 4}, {17, 2}}) {
    s.num_slices = ns;
    INFO(ns << " slices");
    CHECK(cuda::plan_fwd(s, kH100).cluster == c);
  }
}
