// CPU kernels of the packed-format operators: layout_from_mask, tw_pack, tw_unpack.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "../core/tile_layout.h"
#include "checks.h"

namespace tilesparse {
namespace {

at::Tensor to_int32_tensor(const std::vector<int32_t>& v) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kInt);
  std::copy(v.begin(), v.end(), t.data_ptr<int32_t>());
  return t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layout_from_mask_cpu(const at::Tensor& mask, int64_t tile, int64_t pad) {
  TS_CHECK_DTYPE(mask, at::kBool);
  TS_CHECK_DIM(mask, 2);
  TORCH_CHECK_VALUE(tile > 0, "tile must be positive, got ", tile);
  TORCH_CHECK_VALUE(pad > 0, "pad must be positive, got ", pad);
  const at::Tensor m = mask.contiguous();
  core::OwnedLayout out;
  const std::string err = core::build_layout(m.data_ptr<bool>(), m.size(0), m.size(1), tile, pad, out);
  TORCH_CHECK_VALUE(err.empty(), err);
  return {to_int32_tensor(out.cols), to_int32_tensor(out.row_offsets), to_int32_tensor(out.rows)};
}

at::Tensor tw_pack_cpu(const at::Tensor& weight, const at::Tensor& cols, const at::Tensor& row_offsets,
                       const at::Tensor& rows, int64_t tile, int64_t num_values) {
  TS_CHECK_DIM(weight, 2);
  const LayoutArgs l =
      layout_args(cols, row_offsets, rows, tile, weight.size(0), weight.size(1), weight.device(), true);
  TORCH_CHECK_VALUE(num_values == core::num_values(l.view), "num_values must be ", core::num_values(l.view),
                    " for this layout, got ", num_values);
  const at::Tensor w = weight.contiguous();
  at::Tensor values = at::empty({num_values}, w.options());
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, w.scalar_type(), "tw_pack", [&] {
    core::pack<scalar_t>(l.view, w.data_ptr<scalar_t>(), w.size(1), values.data_ptr<scalar_t>());
  });
  return values;
}

at::Tensor tw_unpack_cpu(const at::Tensor& values, const at::Tensor& cols, const at::Tensor& row_offsets,
                         const at::Tensor& rows, int64_t tile, int64_t out_features, int64_t in_features) {
  TS_CHECK_DIM(values, 1);
  const LayoutArgs l = layout_args(cols, row_offsets, rows, tile, out_features, in_features, values.device(), true);
  TORCH_CHECK_VALUE(values.numel() == core::num_values(l.view), "values must have ", core::num_values(l.view),
                    " elements for this layout, got ", values.numel());
  const at::Tensor v = values.contiguous();
  at::Tensor dense = at::zeros({out_features, in_features}, v.options());
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, v.scalar_type(), "tw_unpack", [&] {
    core::unpack<scalar_t>(l.view, v.data_ptr<scalar_t>(), in_features, dense.data_ptr<scalar_t>());
  });
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(tilesparse, CPU, m) {
  m.impl("layout_from_mask", &layout_from_mask_cpu);
  m.impl("tw_pack", &tw_pack_cpu);
  m.impl("tw_unpack", &tw_unpack_cpu);
}

}  // namespace tilesparse
