// Argument checks shared by every backend. Each message names the argument,
// and the error type follows PyTorch: TypeError for dtypes, ValueError for
// shapes and values.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

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

// tw_linear's optional bias: [out_features], on x's device, of x's dtype.
inline void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& x, int64_t out_features) {
  if (!bias) return;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out_features, "bias must have shape [out_features] = [",
                    out_features, "], got ", bias->sizes());
  TORCH_CHECK_VALUE(bias->device() == x.device(), "bias must be on the device of x (", x.device(), "), got ",
                    bias->device());
  TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), "bias must have the dtype of x (", x.scalar_type(),
                   "), got ", bias->scalar_type());
}

// grad_values' activations: grad_out [..., N] and x [..., K], floating, same
// device, dtype and leading dimensions.
inline void check_grad_values_inputs(const at::Tensor& grad_out, const at::Tensor& x) {
  TORCH_CHECK_VALUE(grad_out.dim() >= 1 && x.dim() >= 1, "grad_out and x must have at least 1 dimension");
  TS_CHECK_FLOATING(grad_out);
  TS_CHECK_SAME_DEVICE(x, grad_out);
  TORCH_CHECK_TYPE(x.scalar_type() == grad_out.scalar_type(), "x must have the dtype of grad_out (",
                   grad_out.scalar_type(), "), got ", x.scalar_type());
  TORCH_CHECK_VALUE(grad_out.sizes().slice(0, grad_out.dim() - 1) == x.sizes().slice(0, x.dim() - 1),
                    "grad_out ", grad_out.sizes(), " and x ", x.sizes(), " must share their leading dimensions");
}

// sizes with the last one replaced (the output shape of a [..., K] -> [..., N] op).
inline std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> out(sizes.begin(), sizes.end());
  out.back() = last;
  return out;
}

// Rows of the flattened [M, last] view: the product of the leading sizes
// (reshape(-1, 0) cannot infer it when the last size is 0).
inline int64_t leading_rows(const at::Tensor& t) {
  return c10::multiply_integers(t.sizes().slice(0, t.dim() - 1));
}

}  // namespace tilesparse
