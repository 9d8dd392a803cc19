// The TEW residue: a small unstructured sparse matrix R [rows, cols] in CSR
// (row_ptr, col index, value per entry), applied beside the tile-wise GEMM.
//
// Every kernel works on feature-major activations (X^T [cols, M], G^T [rows, M],
// one contiguous run of M samples per feature), so an entry costs one
// contiguous axpy or dot of length M, which the compiler vectorises, instead
// of M scattered gathers:
//   forward      Y^T[n]   = sum_j R[n, c_j] X^T[c_j]        (parallel over row blocks;
//                                                            stored sample-major)
//   grad input   Gx^T[c_j] += R[n, c_j] G^T[n]              (parallel over M blocks:
//                                                            the scatter has no conflicts)
//   grad values  dR_j     = <G^T[n_j], X^T[c_j]>             (parallel over rows)
// Work is 2 * M * nnz flops each; bytes are one run of M per entry, from
// cache when the M block (kBlockM samples x all features) fits in L2.
// Torch-free: the ATen wrapper (ops/csr_residue_cpu.cpp) supplies the
// parallel-for and the transposes; tests/cpp tests the core directly.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

namespace tilesparse {
namespace core {

struct CsrView {
  const int32_t* row_ptr;  // [rows + 1], row_ptr[0] == 0, non-decreasing, row_ptr[rows] == nnz
  const int32_t* cols;     // [nnz], each in [0, num_cols)
  int64_t rows;
  int64_t num_cols;
  int64_t nnz;
};

// "" when `r` is a well-formed CSR index, otherwise what is wrong (the first
// offending position). Column order within a row is free.
inline std::string validate_csr(const CsrView& r) {
  if (r.rows < 0 || r.num_cols < 0 || r.nnz < 0) return "negative size";
  if (r.row_ptr[0] != 0) return "row_ptr[0] must be 0, got " + std::to_string(r.row_ptr[0]);
  for (int64_t n = 0; n < r.rows; ++n) {
    if (r.row_ptr[n + 1] < r.row_ptr[n])
      return "row_ptr must be non-decreasing, but row_ptr[" + std::to_string(n + 1) + "] = " +
             std::to_string(r.row_ptr[n + 1]) + " < row_ptr[" + std::to_string(n) + "] = " +
             std::to_string(r.row_ptr[n]);
  }
  if (r.row_ptr[r.rows] != r.nnz)
    return "row_ptr[-1] must equal the number of entries (" + std::to_string(r.nnz) + "), got " +
           std::to_string(r.row_ptr[r.rows]);
  for (int64_t j = 0; j < r.nnz; ++j) {
    if (r.cols[j] < 0 || r.cols[j] >= r.num_cols)
      return "cols[" + std::to_string(j) + "] = " + std::to_string(r.cols[j]) + " is out of range [0, " +
             std::to_string(r.num_cols) + ")";
  }
  return "";
}

// Samples per block: kBlockM x (features) of X^T stays in L2 while every
// entry of a row range streams over it.
constexpr int64_t kBlockM = 64;

// y [M, rows] (sample-major) = (R @ xt [num_cols, M])^T. Each (row block x
// sample block) is computed feature-major in a local tile and stored
// transposed, so the output needs no separate transpose pass.
constexpr int64_t kBlockRows = 64;

template <typename T, typename ParallelFor>
void csr_forward(const T* xt, int64_t M, const T* values, const CsrView& r, T* y, ParallelFor&& par) {
  const int64_t row_blocks = (r.rows + kBlockRows - 1) / kBlockRows;
  par(0, row_blocks, [&](int64_t begin, int64_t end) {
    T tile[kBlockRows * kBlockM];
    for (int64_t rb = begin; rb < end; ++rb) {
      const int64_t n0 = rb * kBlockRows, nb = std::min(kBlockRows, r.rows - n0);
      for (int64_t m0 = 0; m0 < M; m0 += kBlockM) {
        const int64_t mb = std::min(kBlockM, M - m0);
        for (int64_t dn = 0; dn < nb; ++dn) {
          T* acc = tile + dn * kBlockM;
          std::fill(acc, acc + mb, T(0));
          for (int32_t j = r.row_ptr[n0 + dn]; j < r.row_ptr[n0 + dn + 1]; ++j) {
            const T v = values[j];
            const T* x = xt + static_cast<int64_t>(r.cols[j]) * M + m0;
            for (int64_t i = 0; i < mb; ++i) acc[i] += v * x[i];
          }
        }
        for (int64_t i = 0; i < mb; ++i) {
          T* out = y + (m0 + i) * r.rows + n0;
          for (int64_t dn = 0; dn < nb; ++dn) out[dn] = tile[dn * kBlockM + i];
        }
      }
    }
  });
}

// gxt [num_cols, M] = R^T @ gt [rows, M]. gxt is overwritten.
template <typename T, typename ParallelFor>
void csr_grad_input_t(const T* gt, int64_t M, const T* values, const CsrView& r, T* gxt, ParallelFor&& par) {
  const int64_t blocks = (M + kBlockM - 1) / kBlockM;
  par(0, blocks, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t m0 = b * kBlockM, mb = std::min(kBlockM, M - m0);
      for (int64_t c = 0; c < r.num_cols; ++c) std::fill(gxt + c * M + m0, gxt + c * M + m0 + mb, T(0));
      for (int64_t n = 0; n < r.rows; ++n) {
        const T* g = gt + n * M + m0;
        for (int32_t j = r.row_ptr[n]; j < r.row_ptr[n + 1]; ++j) {
          const T v = values[j];
          T* gx = gxt + static_cast<int64_t>(r.cols[j]) * M + m0;
          for (int64_t i = 0; i < mb; ++i) gx[i] += v * g[i];
        }
      }
    }
  });
}

// dv [nnz]: dv[j] = <gt[n_j], xt[c_j]> over the M samples (n_j: the row of entry j).
template <typename T, typename ParallelFor>
void csr_grad_values_t(const T* gt, const T* xt, int64_t M, const CsrView& r, T* dv, ParallelFor&& par) {
  constexpr int kLanes = 8;  // independent partial sums: a vectorisable reduction without -ffast-math
  par(0, r.rows, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* g = gt + n * M;
      for (int32_t j = r.row_ptr[n]; j < r.row_ptr[n + 1]; ++j) {
        const T* x = xt + static_cast<int64_t>(r.cols[j]) * M;
        T acc[kLanes] = {};
        int64_t i = 0;
        for (; i + kLanes <= M; i += kLanes)
          for (int l = 0; l < kLanes; ++l) acc[l] += g[i + l] * x[i + l];
        T s = T(0);
        for (; i < M; ++i) s += g[i] * x[i];
        for (int l = 0; l < kLanes; ++l) s += acc[l];
        dv[j] = s;
      }
    }
  });
}

}  // namespace core
}  // namespace tilesparse
