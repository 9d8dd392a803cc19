// The TEW residue: a small unstructured sparse matrix R [rows, cols] in CSR
// (row_ptr, col index, value per entry), applied beside the tile-wise GEMM.
//
// Every kernel works on feature-major activations (X^T [cols, M], G^T [rows, M],
// one contiguous run of M samples per feature), so an entry costs one
// contiguous axpy or dot of length M, which the compiler vectorises, instead
// of M scattered gathers:
//   forward      Y^T[n]   = sum_j R[n, c_j] X^T[c_j]        (parallel over row blocks;
//                                                            stored sample-major)
//   grad input   Gx[:, c] = sum over the entries (n, c)      (the forward of R^T, whose CSR is a
//                  R[n, c] G^T[n]                            counting sort of R's entries)
//   grad values  dR_j     = <G^T[n_j], X^T[c_j]>             (parallel over rows)
// Work is 2 * M * nnz flops each; bytes are one run of M per entry, from
// cache when the M block (kBlockM samples x all features) fits in L2.
// Torch-free: the ATen wrapper (ops/csr_residue_cpu.cpp) supplies the
// parallel-for and the transposes; tests/cpp tests the core directly.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

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

// R^T in CSR (R's entries ordered by input feature, each feature's entries in
// row order): a counting sort, O(nnz + cols). `perm[p]`: the entry of R at
// position p, so R^T's values are values[perm[p]].
struct CsrTransposed {
  std::vector<int32_t> row_ptr, cols, perm;
  int64_t rows = 0, num_cols = 0;

  explicit CsrTransposed(const CsrView& r)
      : row_ptr(r.num_cols + 1, 0), cols(r.nnz), perm(r.nnz), rows(r.num_cols), num_cols(r.rows) {
    for (int64_t j = 0; j < r.nnz; ++j) ++row_ptr[r.cols[j] + 1];
    for (int64_t c = 0; c < r.num_cols; ++c) row_ptr[c + 1] += row_ptr[c];
    std::vector<int32_t> next(row_ptr.begin(), row_ptr.end() - 1);
    for (int64_t n = 0; n < r.rows; ++n)
      for (int32_t j = r.row_ptr[n]; j < r.row_ptr[n + 1]; ++j) {
        const int32_t p = next[r.cols[j]]++;
        cols[p] = static_cast<int32_t>(n);
        perm[p] = j;
      }
  }
  CsrView view() const {
    return CsrView{row_ptr.data(), cols.data(), rows, num_cols, static_cast<int64_t>(cols.size())};
  }
  template <typename T>
  std::vector<T> values(const T* v) const {
    std::vector<T> out(perm.size());
    for (size_t p = 0; p < perm.size(); ++p) out[p] = v[perm[p]];
    return out;
  }
};

// gx [M, num_cols] (sample-major) = gt^T @ R: the forward of R^T over the
// feature-major gradient. Each input feature's run accumulates in the
// forward's local tile over all its entries and is stored once, instead of a
// read-modify-write of a gx run per entry.
template <typename T, typename ParallelFor>
void csr_grad_input(const T* gt, int64_t M, const T* values, const CsrView& r, T* gx, ParallelFor&& par) {
  const CsrTransposed rt(r);
  const std::vector<T> vt = rt.values(values);
  csr_forward(gt, M, vt.data(), rt.view(), gx, par);
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
