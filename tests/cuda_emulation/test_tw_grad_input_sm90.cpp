// grad_input of tw_linear on sm_90a (csrc/cuda/tw_gi_sm90_kernels.cuh) in the
// host emulation: the real kernel source through the real plan and launch
// code (plan_grad_input_sm90 / run_grad_input_sm90 of tw_bwd_launch.cuh) and
// the per-tile tensor maps the CUDA operator caches with the layout
// (sm90_encode_tile_maps), against a float64 reference of gX = gy W. Values
// in padding slots are NaN: they must never be read. Every case runs under
// several schedule seeds; the results must be bit-identical across them
// (each chunk's products are added in a fixed order).
#include "emu_cuda.h"  // first: the emulated CUDA runtime and PTX (sm90 included)

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>

#include "cuda/sm90_layout.cuh"
#include "cuda/tw_bwd_launch.cuh"
#include "emu_testing.h"

using namespace tilesparse;
using namespace tilesparse::emu_testing;

namespace {

const cuda::DeviceCaps kH100{227 * 1024, 132, 9, 0};
const cuda::DeviceCaps kA100{163 * 1024, 108, 8, 0};
const uint64_t kScheduleSeeds[] = {1, 2, 3};

struct GiCase {
  std::string name;
  Sm90Spec spec;
  int64_t m;
  int64_t ldg_extra = 0;  // gy rows padded by this many elements
  int64_t ldx_extra = 0;  // gx rows padded
  int min_items = 0;      // the most items of one (slice, chunk) must reach this (several 64-position items)
};

template <typename T>
void run_gi_case(const GiCase& gc) {
  using E = Elem<T>;
  INFO(gc.name << " (" << E::name << ")");
  const Problem p = make_sm90_problem(gc.spec);
  std::mt19937_64 rng(gc.spec.seed * 17 + 7);
  const int64_t m = gc.m, n = p.n, k = p.k, ldg = n + gc.ldg_extra, ldx = k + gc.ldx_extra;
  DeviceBuffer<T> gy = random_buffer<T>(m * ldg, rng);
  DeviceBuffer<T> values = random_values<T>(p, rng);  // NaN padding: must never be loaded

  // The host side, as the operator caches it with the layout.
  const auto& ro = p.layout.row_offsets;
  const int64_t nt = static_cast<int64_t>(ro.size()) - 1, nc = static_cast<int64_t>(p.layout.cols.size());
  const std::vector<int32_t> kept = cuda::sm90_kept_counts(ro.data(), p.layout.rows.data(), nt);
  const bool slots_aligned = cuda::sm90_slots_aligned(ro.data(), nt);
  const bool cols_runs = cuda::sm90_slice_cols_runs(p.layout.cols.data(), nc, p.tile);
  const bool gy_vec = aligned16(gy.data()) && ldg % 8 == 0;
  REQUIRE(cuda::gi_sm90_applies(true, m, k, p.tile, slots_aligned, cols_runs, gy_vec, kH100));
  std::vector<CUtensorMap> maps(static_cast<size_t>(std::max<int64_t>(nt, 1)));
  REQUIRE(cuda::sm90_encode_tile_maps(maps.data(), values.data(), values.size(), ro.data(), kept.data(), nt, p.tile, nc));

  const cuda::GradInputPlan plan = cuda::plan_grad_input_sm90(k, nt, kH100);
  INFO("plan: kc=" << plan.kc << " nkc=" << plan.nkc << " smem=" << plan.smem);
  REQUIRE(plan.kernel == cuda::GradInputKernel::kSm90);
  REQUIRE(plan.kc > 0);
  REQUIRE(plan.kc <= cuda::sm90_gi::kMaxChunk);
  REQUIRE(plan.smem <= kH100.smem_optin);
  if (gc.min_items > 0) {  // the layout really exercises several items per (slice, chunk)
    int most = 0;
    for (int64_t t = 0; t < nt; ++t)
      for (int c = 0; c < plan.nkc; ++c) {
        int cnt = 0;
        for (int32_t i = ro[t]; i < ro[t] + kept[t]; ++i)
          cnt += p.layout.rows[i] >= int64_t(c) * plan.kc && p.layout.rows[i] < int64_t(c + 1) * plan.kc;
        most = std::max(most, (cnt + 63) / 64);
      }
    REQUIRE(most >= gc.min_items);
  }

  // reference: gX = gy W (W from the packed values, padding ignored)
  const std::vector<double> gyd = gy.as_double(), w = dense_weight(p, values.as_double()), wa = abs_of(w);
  std::vector<double> ref(m * ldx, 0.0), mag(m * ldx, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < n; ++c) {
      const double g = gyd[i * ldg + c];
      for (int64_t q = 0; q < k; ++q) {
        ref[i * ldx + q] += g * w[c * k + q];
        mag[i * ldx + q] += std::fabs(g) * wa[c * k + q];
      }
    }

  DeviceBuffer<T> gx(m * ldx);
  DeviceBuffer<int32_t> bounds(std::max<int64_t>(plan.bounds_count, 1));
  const cuda::GiSm90Params<T> prm =
      cuda::gi_sm90_params<T>(gy.data(), ldg, maps.data(), p.dev(), m, n, k, values.size(), gx.data(), ldx);
  const std::vector<T> sentinel(static_cast<size_t>(m * ldx), E::from(-7.0));
  std::vector<double> first;
  for (uint64_t seed : kScheduleSeeds) {
    INFO("schedule seed " << seed);
    emu::set_schedule_seed(seed);
    emu::reset_stats();
    std::memcpy(gx.data(), sentinel.data(), sentinel.size() * sizeof(T));  // row padding must stay untouched
    cuda::run_grad_input_sm90(plan, prm, bounds.data(), EmuLaunch{});
    const emu::Stats st = emu::stats();
    CHECK(st.wgmma > 0);
    CHECK(st.ldmatrix == 0);  // both operands by TMA straight to wgmma: no thread touches one
    std::vector<double> got = gx.as_double();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t q = k; q < ldx; ++q) {
        REQUIRE(got[i * ldx + q] == -7.0);
        ref[i * ldx + q] = -7.0;
      }
    if (first.empty()) {
      first = got;
      check_close(gx, ref, mag, "gX");
    } else {
      for (int64_t i = 0; i < m * ldx; ++i)
        if (std::memcmp(&got[i], &first[i], sizeof(double)) != 0)
          FAIL("run under schedule seed " << seed << " differs from the first at " << i << ": " << got[i] << " vs "
                                          << first[i]);
    }
  }
  emu::set_schedule_seed(0);
  SUCCEED("grad_input sm90: M " << m << ", " << n << " -> " << k << ", kc " << plan.kc << " ok");
}

void run_both(const GiCase& c) {
  run_gi_case<__nv_bfloat16>(c);
  run_gi_case<__half>(c);
}

}  // namespace

// name, {n, k, tile, row_density, col_density, unit, pad, seed, drop, dense, sparse, tew}, m, ldg_extra, ldx_extra,
//       min_items

TEST_CASE("sm90 gi: unit 16 at 75% / M tail (300 rows: a partial 128-row block) / K tail (420 = 216 + 204)",
          "[cuda-emulation][grad_input][sm90][sm90gi]") {
  run_both({"sm90 gi unit 16", {256, 420, 128, 0.25, 1.0, 16, 8, 301}, 300});
}

TEST_CASE("sm90 gi: unit 1 (scattered features) / strided gy and gX", "[cuda-emulation][grad_input][sm90][sm90gi]") {
  run_both({"sm90 gi unit 1", {256, 512, 128, 0.3, 1.0, 1, 8, 302}, 130, 24, 8});
}

TEST_CASE("sm90 gi: unit 8 / tile 256 (two slices per tile) / N tail (a partial last slice)",
          "[cuda-emulation][grad_input][sm90][sm90gi]") {
  run_both({"sm90 gi unit 8, tile 256", {400, 300, 256, 0.4, 1.0, 8, 8, 303}, 129});
}

TEST_CASE("sm90 gi: dense tiles (several 64-position items per slice and chunk) / K not a multiple of 8",
          "[cuda-emulation][grad_input][sm90][sm90gi]") {
  run_both({"sm90 gi several items", {256, 238, 128, 0.9, 1.0, 1, 8, 304}, 64, 0, 6, 3});
}

TEST_CASE("sm90 gi: an empty tile / skewed kept counts (dense tile, one-run tile) / padding slots (pad 32)",
          "[cuda-emulation][grad_input][sm90][sm90gi]") {
  run_both({"sm90 gi empty/skewed/pad", {512, 480, 128, 0.3, 1.0, 16, 32, 305, 1, 0, 2}, 200});
}

TEST_CASE("sm90 gi: TEW-derived layout (uneven kept counts across tiles)", "[cuda-emulation][grad_input][sm90][sm90gi]") {
  run_both({"sm90 gi TEW", {384, 512, 128, 0.3, 1.0, 16, 8, 306, -1, -1, -1, true}, 140});
}

TEST_CASE("sm90 gi: small M (1, 16, 64: one partial block)", "[cuda-emulation][grad_input][sm90][sm90gi]") {
  for (int64_t m : {1, 16, 64}) run_both({"sm90 gi M = " + std::to_string(m), {256, 320, 128, 0.25, 1.0, 16, 8, 307}, m});
}

TEST_CASE("sm90 gi plan: where it does not apply (2-D TW columns, tile 64, slots not aligned, A100, fp32, gy rows "
          "not 16-byte units)",
          "[cuda-emulation][grad_input][sm90]") {
  const Problem twod = make_sm90_problem({600, 256, 128, 0.5, 0.8, 16, 8, 308});
  CHECK_FALSE(cuda::sm90_slice_cols_runs(twod.layout.cols.data(), static_cast<int64_t>(twod.layout.cols.size()), 128));
  CHECK(cuda::gi_sm90_applies(true, 256, 256, 128, true, true, true, kH100));
  CHECK_FALSE(cuda::gi_sm90_applies(true, 256, 256, 128, true, false, true, kH100));   // 2-D TW
  CHECK_FALSE(cuda::gi_sm90_applies(true, 256, 256, 64, true, true, true, kH100));     // tile 64
  CHECK_FALSE(cuda::gi_sm90_applies(true, 256, 256, 128, false, true, true, kH100));   // slots % 8 != 0
  CHECK_FALSE(cuda::gi_sm90_applies(true, 256, 256, 128, true, true, true, kA100));    // sm_80
  CHECK_FALSE(cuda::gi_sm90_applies(false, 256, 256, 128, true, true, true, kH100));   // fp32
  CHECK_FALSE(cuda::gi_sm90_applies(true, 256, 256, 128, true, true, false, kH100));   // gy rows
  CHECK_FALSE(cuda::gi_sm90_applies(true, 0, 256, 128, true, true, true, kH100));      // M = 0
  // chunks: as few of at most 240 features (the accumulator's most) as K needs, of even widths
  CHECK(cuda::plan_grad_input_sm90(4096, 32, kH100).kc == 232);
  CHECK(cuda::plan_grad_input_sm90(4096, 32, kH100).nkc == 18);
  CHECK(cuda::plan_grad_input_sm90(768, 32, kH100).kc == 192);
  CHECK(cuda::plan_grad_input_sm90(240, 32, kH100).kc == 240);
  CHECK(cuda::plan_grad_input_sm90(241, 32, kH100).kc == 128);
  CHECK(cuda::plan_grad_input_sm90(100, 32, kH100).kc == 104);
  CHECK(cuda::plan_grad_input_sm90(100, 32, kH100).nkc == 1);
  CHECK(cuda::plan_grad_input_sm90(4096, 32, cuda::DeviceCaps{100 * 1024, 132, 9, 0}).kc == 0);
  // sm90 where a tile keeps >= 20% of K (perf_model.py gi_sm90_pays: above, v1's wider chunks win)
  CHECK(cuda::gi_sm90_pays(4096, 32 * 1024, 32));       // 75%
  CHECK(cuda::gi_sm90_pays(4096, 32 * 820, 32));        // 80%
  CHECK_FALSE(cuda::gi_sm90_pays(4096, 32 * 408, 32));  // 90%
  CHECK_FALSE(cuda::gi_sm90_pays(4096, 0, 0));
  // the dense fallback against the kernel that would run (perf_model.py gi_plan on 4096 -> 14336, M = 16384):
  // at 75% sm90 (and v1) stay sparse, at 50% the dense weight wins against either
  const int64_t m = 16384, n = 14336, k = 4096;
  CHECK_FALSE(cuda::prefer_dense_backward(cuda::BackwardOp::kGradInput, 9, m, n, k, n * k / 4, true));
  CHECK(cuda::prefer_dense_backward(cuda::BackwardOp::kGradInput, 9, m, n, k, n * k / 2, true));
  CHECK(cuda::prefer_dense_backward(cuda::BackwardOp::kGradInput, 9, m, n, k, n * k / 2, false));
}
