#include "checks.h"

namespace tilesparse {

LayoutArgs layout_args(const at::Tensor& cols, const at::Tensor& row_offsets, const at::Tensor& rows,
                       int64_t tile, int64_t out_features, int64_t in_features, const at::Device& device,
                       bool validate_indices) {
  TORCH_CHECK_VALUE(tile > 0, "tile must be positive, got ", tile);
  TORCH_CHECK_VALUE(out_features >= 0 && in_features >= 0, "out_features and in_features must be >= 0, got ",
                    out_features, " and ", in_features);
  TS_CHECK_DTYPE(cols, at::kInt);
  TS_CHECK_DTYPE(row_offsets, at::kInt);
  TS_CHECK_DTYPE(rows, at::kInt);
  TS_CHECK_DIM(cols, 1);
  TS_CHECK_DIM(row_offsets, 1);
  TS_CHECK_DIM(rows, 1);
  TORCH_CHECK_VALUE(cols.device() == device, "cols must be on ", device, ", got ", cols.device());
  TORCH_CHECK_VALUE(row_offsets.device() == device, "row_offsets must be on ", device, ", got ",
                    row_offsets.device());
  TORCH_CHECK_VALUE(rows.device() == device, "rows must be on ", device, ", got ", rows.device());
  TORCH_CHECK_VALUE(row_offsets.numel() >= 1, "row_offsets must have at least one entry (0)");
  LayoutArgs a{cols.contiguous(), row_offsets.contiguous(), rows.contiguous(), {}};
  a.view = core::LayoutView{a.cols.data_ptr<int32_t>(), a.cols.numel(), a.row_offsets.data_ptr<int32_t>(),
                            a.row_offsets.numel() - 1, a.rows.data_ptr<int32_t>(), a.rows.numel(), tile};
  if (validate_indices) {
    const std::string err = core::validate_layout(a.view, out_features, in_features);
    TORCH_CHECK_VALUE(err.empty(), "invalid tile layout: ", err);
  }
  return a;
}

}  // namespace tilesparse
