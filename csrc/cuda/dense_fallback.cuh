// The ATen side of the backward operators' dense fallback (the rule is
// prefer_dense_backward in tw_bwd_launch.cuh): the layout's V as a dense
// [N, K] weight and back, through the registered tw_unpack / tw_pack ops, and
// the A/B override
//   TILESPARSE_CUDA_GRAD_INPUT_KERNEL=auto|sparse|sm90|v1|dense   (read on every call)
//   TILESPARSE_CUDA_GRAD_VALUES_KERNEL=...|dense
// that scripts/gpu_check.sh uses to time both paths on the same call.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <cstring>

#include "tw_bwd_launch.cuh"

namespace tilesparse::cuda {

enum class DenseChoice { kAuto, kSparse, kDense };

// "dense" -> kDense, any other kernel name -> kSparse, unset / "auto" -> kAuto
inline DenseChoice dense_choice_from_env(const char* var) {
  const char* e = std::getenv(var);
  if (e == nullptr || *e == '\0' || std::strcmp(e, "auto") == 0) return DenseChoice::kAuto;
  return std::strcmp(e, "dense") == 0 ? DenseChoice::kDense : DenseChoice::kSparse;
}

// Whether this call takes the dense path: fp16/bf16 only (the rule's rates are the tensor cores').
// sm90: the sparse side is grad_input on wgmma (it applies to this call).
inline bool use_dense_backward(BackwardOp op, DenseChoice choice, at::ScalarType dtype, int cc_major, int64_t m,
                               int64_t n, int64_t k, int64_t nv, bool sm90 = false) {
  if (dtype != at::kHalf && dtype != at::kBFloat16) return false;
  if (choice != DenseChoice::kAuto) return choice == DenseChoice::kDense;
  return prefer_dense_backward(op, cc_major, m, n, k, nv, sm90);
}

inline at::Tensor dense_weight_from_values(const at::Tensor& values, const at::Tensor& cols,
                                           const at::Tensor& row_offsets, const at::Tensor& rows, int64_t tile,
                                           int64_t n, int64_t k) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tilesparse::tw_unpack", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, int64_t, int64_t, int64_t)>();
  return op.call(values, cols, row_offsets, rows, tile, n, k);
}

inline at::Tensor values_from_dense_weight(const at::Tensor& weight, const at::Tensor& cols,
                                           const at::Tensor& row_offsets, const at::Tensor& rows, int64_t tile,
                                           int64_t num_values) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tilesparse::tw_pack", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, int64_t, int64_t)>();
  return op.call(weight, cols, row_offsets, rows, tile, num_values);
}

}  // namespace tilesparse::cuda
