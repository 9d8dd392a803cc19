// Torch-free device building blocks of the tile-wise CUDA kernels: the
// layout view the kernels read (with every index clamped, so that no layout,
// however malformed, makes a kernel read or write out of bounds), PTX
// wrappers (cp.async, ldmatrix, mma.sync m16n8k16), and the gathering
// global->shared tile loader.
#pragma once

#include <cstdint>

// The CUDA headers and the PTX wrappers (cp.async, ldmatrix, mma.sync). The
// host emulation (tests/cuda_emulation) compiles this very source as host C++:
// it defines TILESPARSE_PTX_EMULATION and supplies its own versions of both
// (the 16-bit float types, threadIdx & co., and the warp-level primitives)
// before including any kernel header.
#ifndef TILESPARSE_PTX_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "tw_ptx.cuh"
#endif

namespace tilesparse::cuda {

// ---------------------------------------------------------------------------
// Layout, as the kernels see it (device pointers; see docs/format.md).
// ---------------------------------------------------------------------------
struct DevLayout {
  const int32_t* cols;
  const int32_t* row_offsets;  // num_tiles + 1 entries
  const int32_t* rows;
  int64_t num_cols;
  int64_t num_tiles;
  int64_t num_rows;
  int64_t tile;
};

// One tile, its indices clamped into range. ok is false when the tile has no
// work (no columns or no rows) or when its values block [voff, voff + g*kt)
// would not fit in the `nv` values there are (a malformed layout): kernels
// then treat it as empty, so they never read past the values.
struct TileInfo {
  int64_t voff;  // offset of the tile's [g, kt] values block
  int32_t lo;    // first index of the tile's rows in `rows`
  int32_t kt;    // slots: kept input features plus padding (the block's row length)
  int32_t kr;    // kept input features (slots [kr, kt) are padding: not weights, skipped)
  int32_t g;     // output features (columns) of the tile
  bool ok;
};

// Launches are split along grid.y, which is limited to 65535 blocks.
constexpr int64_t kMaxGridY = 65535;

// What the launch plans need to know about the device.
struct DeviceCaps {
  int smem_optin;  // bytes of shared memory a block may opt in to
  int num_sms;
  int cc_major = 0;  // compute capability (9: Hopper, the sm_90a kernels); 0: unknown
  int cc_minor = 0;
  // Clusters of 1, 2, 4 CTAs of the sm90 forward that are resident at once
  // (cudaOccupancyMaxActiveClusters: a cluster lives in one GPC, so this can be
  // below num_sms / size); 0: unknown, num_sms / size is assumed.
  int sm90_clusters[3] = {0, 0, 0};
  int64_t l2_bytes = 0;  // L2 size (design U's panels); 0: unknown, 50 MB assumed
};

__device__ __forceinline__ int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// An index read from an untrusted array, clamped into [0, limit) (limit >= 1).
__device__ __forceinline__ int64_t clamp_index(int32_t v, int64_t limit) {
  return v < 0 ? 0 : (static_cast<int64_t>(v) >= limit ? limit - 1 : static_cast<int64_t>(v));
}

__device__ __forceinline__ TileInfo tile_info(const DevLayout& l, int64_t t, int64_t nv, int64_t k) {
  TileInfo ti;
  const int64_t lo = clamp64(l.row_offsets[t], 0, l.num_rows);
  const int64_t hi = clamp64(l.row_offsets[t + 1], lo, l.num_rows);
  const int64_t kt = hi - lo;
  const int64_t g = clamp64(l.num_cols - t * l.tile, 0, l.tile);
  ti.voff = l.tile * lo;
  ti.lo = static_cast<int32_t>(lo);
  ti.kt = static_cast<int32_t>(kt);
  // padding repeats the last kept feature (docs/format.md)
  int64_t kr = kt;
  while (kr > 1 && l.rows[lo + kr - 1] == l.rows[lo + kr - 2]) --kr;
  ti.kr = static_cast<int32_t>(kr);
  ti.g = static_cast<int32_t>(g);
  ti.ok = kt > 0 && g > 0 && ti.voff + g * kt <= nv;
  return ti;
}

// bounds[t, c] = number of rows_t entries (slots) < c * kc, for c in [0, nkc] (binary search; for
// malformed, unsorted rows any value in [0, kt] results, which stays safe).
static __global__ void chunk_bounds_kernel(DevLayout l, int64_t k, int32_t kc, int32_t nkc, int32_t* bounds) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t per = nkc + 1;
  if (i >= l.num_tiles * per) return;
  const int64_t t = i / per, c = i % per;
  const int64_t lo = clamp64(l.row_offsets[t], 0, l.num_rows);
  const int64_t hi = clamp64(l.row_offsets[t + 1], lo, l.num_rows);
  const int64_t target = c * kc;
  int64_t a = 0, b = hi - lo;  // first p in [a, b) with rows[lo + p] >= target
  while (a < b) {
    const int64_t mid = (a + b) / 2;
    if (l.rows[lo + mid] < target) a = mid + 1;
    else b = mid;
  }
  bounds[i] = static_cast<int32_t>(a);
}

// Launches chunk_bounds_kernel over the layout's tiles: bounds [num_tiles, nkc + 1] for chunks of kc.
template <typename Launch>
void launch_chunk_bounds(Launch&& launch, const DevLayout& l, int64_t k, int kc, int nkc, int32_t* bounds) {
  const int64_t count = l.num_tiles * (nkc + 1);
  if (count > 0)
    launch(chunk_bounds_kernel, dim3(static_cast<unsigned>((count + 255) / 256)), dim3(256), 0, l, k,
           static_cast<int32_t>(kc), static_cast<int32_t>(nkc), bounds);
}

// ---------------------------------------------------------------------------
// 16-bit float traits (storage is raw uint16_t in shared memory); mma is the
// tensor-core m16n8k16 product of tw_ptx.cuh.
// ---------------------------------------------------------------------------
template <typename T>
struct Half16;

template <>
struct Half16<__half> {
  static __device__ __forceinline__ float to_float(uint16_t v) { return __half2float(__ushort_as_half(v)); }
  static __device__ __forceinline__ uint16_t from_float(float v) { return __half_as_ushort(__float2half_rn(v)); }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_m16n8k16_f16(d, a, b);
  }
};

template <>
struct Half16<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(uint16_t v) {
    return __bfloat162float(__ushort_as_bfloat16(v));
  }
  static __device__ __forceinline__ uint16_t from_float(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_m16n8k16_bf16(d, a, b);
  }
};

// Up to 8 consecutive fp32 values (n of them) to fp16/bf16 at dst, one 16-byte store where vec (dst 16-byte
// aligned) and n == 8: the write-out of the grad_input chunk accumulators.
template <typename T>
__device__ __forceinline__ void store_half8(uint16_t* dst, const float* src, int n, bool vec) {
  using H = Half16<T>;
  if (vec && n >= 8) {
    uint4 v;
    v.x = H::from_float(src[0]) | (static_cast<uint32_t>(H::from_float(src[1])) << 16);
    v.y = H::from_float(src[2]) | (static_cast<uint32_t>(H::from_float(src[3])) << 16);
    v.z = H::from_float(src[4]) | (static_cast<uint32_t>(H::from_float(src[5])) << 16);
    v.w = H::from_float(src[6]) | (static_cast<uint32_t>(H::from_float(src[7])) << 16);
    *reinterpret_cast<uint4*>(dst) = v;
  } else {
    for (int e = 0; e < 8 && e < n; ++e) dst[e] = H::from_float(src[e]);
  }
}

// ---------------------------------------------------------------------------
// Fragments of mma.m16n8k16 (row.col) from shared memory.
//   A is [16 (m) x 16 (k)]; B is [16 (k) x 8 (n)]; "kmajor" = the k index is
//   the contiguous one in shared memory.
// ---------------------------------------------------------------------------
// A stored as s[m][k] (ld = row stride in elements): a[0..3] of rows m0..m0+15, k0..k0+15.
__device__ __forceinline__ void load_a_kmajor(uint32_t (&a)[4], const uint16_t* s, int ld, int m0, int k0,
                                              int lane) {
  ldmatrix_x4(a, s + (m0 + (lane & 15)) * ld + k0 + ((lane >> 4) << 3));
}
// A stored as s[k][m]: transposed load.
__device__ __forceinline__ void load_a_mmajor(uint32_t (&a)[4], const uint16_t* s, int ld, int m0, int k0,
                                              int lane) {
  ldmatrix_x4_trans(a, s + (k0 + (lane & 7) + ((lane >> 4) << 3)) * ld + m0 + (((lane >> 3) & 1) << 3));
}
// B of two n-tiles (n0..n0+7 -> b[0],b[1]; n0+8..n0+15 -> b[2],b[3]) stored as s[n][k].
__device__ __forceinline__ void load_b_kmajor(uint32_t (&b)[4], const uint16_t* s, int ld, int n0, int k0,
                                              int lane) {
  ldmatrix_x4(b, s + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + (((lane >> 3) & 1) << 3));
}
// Same, B stored as s[k][n]: transposed load.
__device__ __forceinline__ void load_b_nmajor(uint32_t (&b)[4], const uint16_t* s, int ld, int n0, int k0,
                                              int lane) {
  ldmatrix_x4_trans(b, s + (k0 + (lane & 7) + (((lane >> 3) & 1) << 3)) * ld + n0 + ((lane >> 4) << 3));
}

// ---------------------------------------------------------------------------
// A warp's MT x NT grid of m16n8k16 products (fp32 accumulators).
// ---------------------------------------------------------------------------
template <int MT, int NT>
__device__ __forceinline__ void zero_accumulators(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
}

// acc += A @ B over one BK-deep slice in shared memory: per k16 step, the MT
// A fragments load_a(a, m_offset, k) and the B fragments load_b(b4, n_offset, k)
// two n-tiles at a time (the load_*_major helpers above, bound to the
// slice's layout), then MT * NT mma.sync.
template <typename H, int BK, int MT, int NT, typename LoadA, typename LoadB>
__device__ __forceinline__ void warp_mma_slice(float (&acc)[MT][NT][4], LoadA&& load_a, LoadB&& load_b) {
  static_assert(BK % 16 == 0 && NT % 2 == 0, "warp_mma_slice: BK % 16 and NT % 2 must be 0");
#pragma unroll
  for (int ks = 0; ks < BK; ks += 16) {
    uint32_t af[MT][4], bf[NT][2];
#pragma unroll
    for (int i = 0; i < MT; ++i) load_a(af[i], i * 16, ks);
#pragma unroll
    for (int j = 0; j < NT; j += 2) {
      uint32_t r[4];
      load_b(r, j * 8, ks);
      bf[j][0] = r[0];
      bf[j][1] = r[1];
      bf[j + 1][0] = r[2];
      bf[j + 1][1] = r[3];
    }
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j) H::mma(acc[i][j], af[i], bf[j]);
  }
}

// ---------------------------------------------------------------------------
// Gathering tile loader: fills a [ROWS x COLS] shared tile (row stride LDS
// elements) with
//     tile[r][c] = src[(row0 + r) * ld + col(c)]
// where col(c) = idx[c] (gathered, indices clamped to [0, col_limit)) or
// colbase + c (idx == nullptr); zero where r >= rows_valid or c >= cols_valid.
//
// Vector path: when the COLS columns are one consecutive, 16-byte-aligned
// run (always known for affine columns; for gathered ones when
// idx[COLS-1] - idx[0] == COLS-1 and idx[0] % 8 == 0), 16-byte cp.async
// copies. Otherwise the scalar path: cp.async cannot copy 2-byte elements,
// so each thread loads one column of the tile for ROWS*COLS/THREADS rows
// into registers (a warp reads 32 consecutive kept features of one row, so
// the loads coalesce as far as the kept features are dense), and store()
// writes them to shared memory once the slot is free. The decision is
// uniform across the block (every thread reads the same two indices).
// ---------------------------------------------------------------------------
template <int ROWS, int COLS, int THREADS, int LDS>
struct TileLoader {
  static_assert(COLS % 8 == 0 && THREADS % COLS == 0, "TileLoader: COLS must divide THREADS");
  static constexpr int RSTEP = THREADS / COLS;
  static_assert(ROWS % RSTEP == 0, "TileLoader: ROWS must be a multiple of THREADS / COLS");
  static constexpr int NS = ROWS / RSTEP;  // scalar elements per thread
  static constexpr int CPR = COLS / 8;     // 16-byte chunks per row
  static_assert((ROWS * CPR) % THREADS == 0, "TileLoader: chunks must divide evenly");
  static constexpr int NV = ROWS * CPR / THREADS;  // 16-byte chunks per thread
  static_assert(LDS % 8 == 0, "TileLoader: rows of shared memory must stay 16-byte aligned");

  uint16_t reg[NS];
  bool pending;

  // vec_ok: src is 16-byte aligned and ld % 8 == 0.
  __device__ __forceinline__ void issue(uint16_t* tile, const uint16_t* src, int64_t ld, int64_t row0,
                                        int rows_valid, const int32_t* idx, int64_t colbase, int cols_valid,
                                        int64_t col_limit, bool vec_ok, int tid) {
    bool vec = false;
    int64_t base = colbase;
    if (vec_ok && cols_valid >= COLS) {
      if (idx == nullptr) {
        vec = (colbase & 7) == 0 && colbase >= 0 && colbase + COLS <= col_limit;
      } else {
        const int64_t c0 = idx[0], c1 = idx[COLS - 1];
        vec = c1 - c0 == COLS - 1 && (c0 & 7) == 0 && c0 >= 0 && c1 < col_limit;
        base = c0;
      }
    }
    if (vec) {
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        const int ci = tid + v * THREADS;
        const int r = ci / CPR, cc = (ci % CPR) * 8;
        uint16_t* dst = tile + r * LDS + cc;
        if (r < rows_valid) {
          cp_async16(dst, src + (row0 + r) * ld + base + cc, 16);
        } else {
          cp_async16(dst, src, 0);
        }
      }
      pending = false;
    } else {
      const int c = tid % COLS, r0 = tid / COLS;
      int64_t gc = -1;
      if (c < cols_valid) gc = idx != nullptr ? clamp_index(idx[c], col_limit) : clamp64(colbase + c, 0, col_limit - 1);
#pragma unroll
      for (int i = 0; i < NS; ++i) {
        const int r = r0 + i * RSTEP;
        reg[i] = (gc >= 0 && r < rows_valid) ? __ldg(src + (row0 + r) * ld + gc) : uint16_t(0);
      }
      pending = true;
    }
  }

  __device__ __forceinline__ void store(uint16_t* tile, int tid) const {
    if (!pending) return;
    const int c = tid % COLS, r0 = tid / COLS;
#pragma unroll
    for (int i = 0; i < NS; ++i) tile[(r0 + i * RSTEP) * LDS + c] = reg[i];
  }
};

}  // namespace tilesparse::cuda
