// Torch-free kernels of the packed format: device-side validation of a
// layout (the checks of core::validate_layout, as flags) and tw_pack /
// tw_unpack (every index clamped, like the GEMM kernels).
#pragma once

#include "tw_device.cuh"

namespace tilesparse::cuda {

// out[kErr] != 0: malformed; out[kNumValues], out[kMaxRows]: sum_t g_t * k_t and max_t k_t.
enum : int { kErr = 0, kNumValues = 1, kMaxRows = 2 };

// cols in range and strictly increasing; row_offsets start at 0, end at
// len(rows), non-decreasing, at most k per tile; accumulates num_values and
// the largest k_t of a valid layout.
static __global__ void validate_offsets_kernel(DevLayout l, int64_t n, int64_t k, unsigned long long* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (first == 0 && (l.row_offsets[0] != 0 || l.row_offsets[l.num_tiles] != l.num_rows)) atomicOr(out + kErr, 1ull);
  const int64_t count = l.num_cols > l.num_tiles ? l.num_cols : l.num_tiles;
  for (int64_t i = first; i < count; i += stride) {
    if (i < l.num_cols) {
      const int32_t c = l.cols[i];
      if (c < 0 || c >= n || (i > 0 && c <= l.cols[i - 1])) atomicOr(out + kErr, 2ull);
    }
    if (i < l.num_tiles) {
      const int64_t lo = l.row_offsets[i], hi = l.row_offsets[i + 1];
      if (lo < 0 || hi < lo || hi > l.num_rows || hi - lo > k) {
        atomicOr(out + kErr, 4ull);
      } else {
        const int64_t g = l.num_cols - i * l.tile < l.tile ? l.num_cols - i * l.tile : l.tile;
        atomicAdd(out + kNumValues, static_cast<unsigned long long>(g * (hi - lo)));
        atomicMax(out + kMaxRows, static_cast<unsigned long long>(hi - lo));
      }
    }
  }
}

// rows of each tile in [0, k) and strictly increasing (one block per tile,
// offsets clamped so that this kernel itself stays in bounds).
static __global__ void validate_rows_kernel(DevLayout l, int64_t k, unsigned long long* out) {
  for (int64_t t = blockIdx.x; t < l.num_tiles; t += gridDim.x) {
    const int64_t lo = clamp64(l.row_offsets[t], 0, l.num_rows);
    const int64_t hi = clamp64(l.row_offsets[t + 1], lo, l.num_rows);
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
      const int32_t r = l.rows[i];
      if (r < 0 || r >= k || (i > lo && r <= l.rows[i - 1])) atomicOr(out + kErr, 8ull);
    }
  }
}

// values[voff_t + j * kt + kk] = weight[cols_t[j], rows_t[kk]] (pack) or the reverse (unpack).
template <typename T, bool kPack>
__global__ void pack_kernel(DevLayout l, T* values, int64_t nv, T* dense, int64_t n, int64_t k) {
  const int64_t t = blockIdx.x / l.tile;
  const int j = static_cast<int>(blockIdx.x % l.tile);
  if (t >= l.num_tiles) return;
  const TileInfo ti = tile_info(l, t, nv, k);
  if (!ti.ok || j >= ti.g) return;
  T* row = dense + clamp_index(l.cols[t * l.tile + j], n) * k;
  T* block = values + ti.voff + static_cast<int64_t>(j) * ti.kt;
  const int32_t* rows_t = l.rows + ti.lo;
  for (int kk = threadIdx.x; kk < ti.kt; kk += blockDim.x) {
    const int64_t r = clamp_index(rows_t[kk], k);
    if (kPack) {
      block[kk] = row[r];
    } else {
      row[r] = block[kk];
    }
  }
}

}  // namespace tilesparse::cuda
