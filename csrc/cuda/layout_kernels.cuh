// Torch-free kernels of the packed format: device-side validation of a
// layout (the checks of core::validate_layout, as flags) and tw_pack /
// tw_unpack (every index clamped, like the GEMM kernels).
#pragma once

#include "tw_device.cuh"

namespace tilesparse::cuda {

// out[kErr] != 0: malformed; out[kNumValues], out[kMaxRows], out[kNumKept]:
// sum_t g_t * slots_t, max_t slots_t and sum_t g_t * kept_t.
enum : int { kErr = 0, kNumValues = 1, kMaxRows = 2, kNumKept = 3 };

// cols in range and strictly increasing; row_offsets start at 0, end at
// len(rows), non-decreasing; accumulates num_values, the largest slot count
// and the kept weights of a valid layout. (At most k kept features per tile
// follows from validate_rows_kernel: strictly increasing in [0, k).)
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
      if (lo < 0 || hi < lo || hi > l.num_rows) {
        atomicOr(out + kErr, 4ull);
      } else {
        const int64_t g = l.num_cols - i * l.tile < l.tile ? l.num_cols - i * l.tile : l.tile;
        int64_t kr = hi - lo;
        while (kr > 1 && l.rows[lo + kr - 1] == l.rows[lo + kr - 2]) --kr;
        atomicAdd(out + kNumValues, static_cast<unsigned long long>(g * (hi - lo)));
        atomicAdd(out + kNumKept, static_cast<unsigned long long>(g * kr));
        atomicMax(out + kMaxRows, static_cast<unsigned long long>(hi - lo));
      }
    }
  }
}

// rows of each tile in [0, k), strictly increasing, then only padding that
// repeats the last one (one block per tile, offsets clamped so that this
// kernel itself stays in bounds).
static __global__ void validate_rows_kernel(DevLayout l, int64_t k, unsigned long long* out) {
  for (int64_t t = blockIdx.x; t < l.num_tiles; t += gridDim.x) {
    const int64_t lo = clamp64(l.row_offsets[t], 0, l.num_rows);
    const int64_t hi = clamp64(l.row_offsets[t + 1], lo, l.num_rows);
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
      const int32_t r = l.rows[i];
      const bool order_ok = i == lo || r > l.rows[i - 1] || (r == l.rows[i - 1] && l.rows[hi - 1] == r);
      if (r < 0 || r >= k || !order_ok) atomicOr(out + kErr, 8ull);
    }
  }
}

// values[voff_t + j * kt + kk] = weight[cols_t[j], rows_t[kk]] (pack; zero
// in padding slots) or the reverse (unpack; padding slots skipped).
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
      block[kk] = kk < ti.kr ? row[r] : T(0);
    } else if (kk < ti.kr) {
      row[r] = block[kk];
    }
  }
}

}  // namespace tilesparse::cuda
