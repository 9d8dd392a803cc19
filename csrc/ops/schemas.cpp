// The one place where every tilesparse operator's schema is declared.
// Kernels register themselves per backend beside their implementation
// (mask_ops_cpu.cpp, layout_ops_cpu.cpp, tw_linear_cpu.cpp, csr_residue_cpu.cpp, cuda/*.cu);
// fake kernels and autograd live in python/tilesparse/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(tilesparse, m) {
  // ---- mask selection -------------------------------------------------------
  // Per-row-segment importance after the (optional) column pruning of 2-D TW:
  // out[t, k] = ||scores[cols of tile t, k]||_2 / (columns in tile t).
  // col_threshold: keep output features whose column score >= col_threshold.
  // unit > 1: the scores of the aligned runs of `unit` input features instead,
  // [T, ceil(K / unit)], the root mean square of the run's segment scores.
  m.def("tile_segment_scores(Tensor scores, int tile, float? col_threshold=None, int unit=1) -> Tensor");
  // Tile-wise mask at a target sparsity (fraction of pruned weights).
  // col_sparsity > 0 selects 2-D TW: that fraction of output features is
  // pruned first, the survivors are regrouped into tiles, then rows per tile.
  // unit: aligned runs of `unit` input features are kept or pruned together.
  m.def("tile_mask(Tensor scores, int tile, float sparsity, float col_sparsity=0., int k_align=1, int unit=1) -> Tensor");
  // Tile-wise mask by threshold, for one global threshold across layers:
  // a row segment (run, with unit > 1) is kept iff its score >= threshold.
  m.def("tile_mask_threshold(Tensor scores, int tile, float threshold, float? col_threshold=None, int k_align=1, int unit=1) -> Tensor");

  // ---- packed tile format -----------------------------------------------------
  // pad: each tile's slots are padded to a multiple of pad by repeating its
  // last kept feature (docs/format.md); padding slots are not weights.
  m.def("layout_from_mask(Tensor mask, int tile, int pad=8) -> (Tensor cols, Tensor row_offsets, Tensor rows)");
  m.def("tw_pack(Tensor weight, Tensor cols, Tensor row_offsets, Tensor rows, int tile, int num_values) -> Tensor");
  m.def("tw_unpack(Tensor values, Tensor cols, Tensor row_offsets, Tensor rows, int tile, int out_features, int in_features) -> Tensor");

  // ---- tile-wise sparse linear ----------------------------------------------
  m.def("tw_linear(Tensor x, Tensor values, Tensor cols, Tensor row_offsets, Tensor rows, Tensor? bias, int out_features, int tile) -> Tensor");
  m.def("tw_linear_grad_input(Tensor grad_out, Tensor values, Tensor cols, Tensor row_offsets, Tensor rows, int in_features, int tile) -> Tensor");
  m.def("tw_linear_grad_values(Tensor grad_out, Tensor x, Tensor cols, Tensor row_offsets, Tensor rows, int tile, int num_values) -> Tensor");

  // ---- TEW residue: a small unstructured sparse R [out_features, in_features] --
  // in CSR (row_ptr [out_features + 1], cols [nnz], int32), applied beside tw_linear.
  // csr_linear: x @ R^T; grad_input: grad_out @ R; grad_values: the entries of grad_out^T @ x.
  m.def("csr_linear(Tensor x, Tensor values, Tensor row_ptr, Tensor cols, int out_features) -> Tensor");
  m.def("csr_linear_grad_input(Tensor grad_out, Tensor values, Tensor row_ptr, Tensor cols, int in_features) -> Tensor");
  m.def("csr_linear_grad_values(Tensor grad_out, Tensor x, Tensor row_ptr, Tensor cols) -> Tensor");
}
