// CPU kernels of the mask-selection operators (thin wrappers over core/tile_mask).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>

#include "../core/tile_mask.h"
#include "checks.h"

namespace tilesparse {
namespace {

// scores as a contiguous float64 [n, k] host tensor, checked.
at::Tensor checked_scores(const at::Tensor& scores) {
  TS_CHECK_DIM(scores, 2);
  TS_CHECK_FLOATING(scores);
  at::Tensor s = scores.to(at::kDouble).contiguous();
  const int64_t bad = core::first_nonfinite(s.data_ptr<double>(), s.numel());
  TORCH_CHECK_VALUE(bad < 0, "scores must be finite, but scores[", bad / std::max<int64_t>(1, s.size(1)), ", ",
                    bad % std::max<int64_t>(1, s.size(1)), "] = ", s.data_ptr<double>()[bad < 0 ? 0 : bad]);
  return s;
}

core::MaskProblem problem(const at::Tensor& s, int64_t tile, int64_t k_align, int64_t unit) {
  core::MaskProblem p{s.data_ptr<double>(), s.size(0), s.size(1), tile, k_align, unit};
  const std::string err = core::check_mask_problem(p);
  TORCH_CHECK_VALUE(err.empty(), err);
  return p;
}

void check_threshold(double v, const char* name) {
  TORCH_CHECK_VALUE(!std::isnan(v), name, " must not be NaN");
}

// Segment scores [T, K], or with unit > 1 the run scores [T, ceil(K / unit)]
// that tile_mask_threshold compares with its threshold.
at::Tensor tile_segment_scores_cpu(const at::Tensor& scores, int64_t tile, std::optional<double> col_threshold,
                                   int64_t unit) {
  const at::Tensor s = checked_scores(scores);
  const core::MaskProblem p = problem(s, tile, 1, unit);
  std::vector<int64_t> cols;
  if (col_threshold) {
    check_threshold(*col_threshold, "col_threshold");
    cols = core::keep_columns_by_threshold(core::column_scores(p), *col_threshold);
  } else {
    cols.resize(p.n);
    for (int64_t c = 0; c < p.n; ++c) cols[c] = c;
  }
  const std::vector<double> us = core::unit_scores(p, core::segment_scores(p, cols));
  const int64_t T = (static_cast<int64_t>(cols.size()) + tile - 1) / tile;
  at::Tensor out = at::empty({T, core::num_units(p)}, s.options());
  std::copy(us.begin(), us.end(), out.data_ptr<double>());
  return out.to(scores.scalar_type());
}

at::Tensor tile_mask_cpu(const at::Tensor& scores, int64_t tile, double sparsity, double col_sparsity,
                         int64_t k_align, int64_t unit) {
  const at::Tensor s = checked_scores(scores);
  const core::MaskProblem p = problem(s, tile, k_align, unit);
  TORCH_CHECK_VALUE(sparsity >= 0.0 && sparsity < 1.0, "sparsity must be in [0, 1), got ", sparsity);
  TORCH_CHECK_VALUE(col_sparsity >= 0.0 && col_sparsity <= sparsity, "col_sparsity must be in [0, sparsity=",
                    sparsity, "], got ", col_sparsity);
  at::Tensor mask = at::empty({p.n, p.k}, s.options().dtype(at::kBool));
  core::tile_mask_by_sparsity(p, sparsity, col_sparsity, mask.data_ptr<bool>());
  return mask;
}

at::Tensor tile_mask_threshold_cpu(const at::Tensor& scores, int64_t tile, double threshold,
                                   std::optional<double> col_threshold, int64_t k_align, int64_t unit) {
  const at::Tensor s = checked_scores(scores);
  const core::MaskProblem p = problem(s, tile, k_align, unit);
  check_threshold(threshold, "threshold");
  if (col_threshold) check_threshold(*col_threshold, "col_threshold");
  at::Tensor mask = at::empty({p.n, p.k}, s.options().dtype(at::kBool));
  core::tile_mask_by_threshold(p, threshold, col_threshold.has_value(), col_threshold.value_or(0.0),
                               mask.data_ptr<bool>());
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(tilesparse, CPU, m) {
  m.impl("tile_segment_scores", &tile_segment_scores_cpu);
  m.impl("tile_mask", &tile_mask_cpu);
  m.impl("tile_mask_threshold", &tile_mask_threshold_cpu);
}

}  // namespace tilesparse
