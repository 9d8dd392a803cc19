// Argument checks shared by every backend. Each message names the argument,
// and the error type follows PyTorch: TypeError for dtypes, ValueError for
// shapes and values.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "../core/tile_layout.h"

#define TS_CHECK_DTYPE(t, dtype)                                                                      \
  TORCH_CHECK_TYPE((t).scalar_type() == (dtype), #t " must have dtype ", (dtype), ", got ", \
                   (t).scalar_type())
#define TS_CHECK_DIM(t, d) \
  TORCH_CHECK_VALUE((t).dim() == (d), #t " must be ", (d), "-D, got shape ", (t).sizes())
#define TS_CHECK_SAME_DEVICE(t, ref)                                                              \
  TORCH_CHECK_VALUE((t).device() == (ref).device(), #t " must be on the same device as " #ref " (", \
                    (ref).device(), "), got ", (t).device())
#define TS_CHECK_FLOATING(t)                                                                     \
  TORCH_CHECK_TYPE(at::isFloatingType((t).scalar_type()), #t " must be a floating-point tensor, got ", \
                   (t).scalar_type())

namespace tilesparse {

// A layout's index tensors made contiguous and checked (dtype int32, 1-D, on
// `device`, row_offsets non-empty), plus the raw view the kernels read.
// With validate_indices, every index is range-checked (needs host-readable
// tensors; CUDA callers pass host copies or validate in-kernel).
struct LayoutArgs {
  at::Tensor cols, row_offsets, rows;
  core::LayoutView view;
};

LayoutArgs layout_args(const at::Tensor& cols, const at::Tensor& row_offsets, const at::Tensor& rows,
                       int64_t tile, int64_t out_features, int64_t in_features, const at::Device& device,
                       bool validate_indices);

}  // namespace tilesparse
