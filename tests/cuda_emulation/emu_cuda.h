// Host emulation of the CUDA device code of tilesparse (tests only).
//
// Include this header BEFORE any csrc/cuda/*.cuh: it defines
// TILESPARSE_PTX_EMULATION (so tw_device.cuh skips the CUDA headers and
// tw_ptx.cuh) and supplies what the kernels use -- the CUDA keywords, the
// vector and 16-bit float types, threadIdx & co., barriers, shuffles, atomics
// and the PTX wrappers of tw_ptx.cuh (cp.async, ldmatrix, mma.sync,
// st_global_for_peers) -- so that the kernels' own source compiles as host
// C++ and runs through emu::launch().
//
// Execution model (emu_runtime.cpp):
//  - Blocks run one at a time, on the calling thread. The threads of a block
//    are fibers, each with its own stack, that switch cooperatively: a thread
//    runs until it reaches a barrier or a warp collective, then the next
//    runnable thread runs. Barriers and collectives therefore behave as on
//    the GPU.
//  - The schedule changes with every barrier phase and every block. Warps
//    run one after the other in forward, reverse or shuffled order, or all
//    threads run interleaved. The shuffles are seeded and reproducible
//    (emu::set_schedule_seed, or EMU_SCHEDULE_SEED). Code that reads shared
//    memory another thread writes, with no barrier between, sees stale or
//    clobbered data.
//  - __syncthreads waits for the block's live threads; a thread that has
//    returned no longer counts (as on sm_70+).
//  - Warp collectives (shuffles, __syncwarp, ldmatrix, mma) really exchange
//    data: each lane publishes its operands, a warp barrier, each lane
//    computes its result from the others' operands (mma: the first lane past
//    the barrier computes the whole D once), a second barrier. A
//    collective that names a lane that has exited (or does not exist, in a
//    partial last warp), lanes that call different collectives, or a
//    deadlock (no thread can run) fails the launch with a message.
//  - Dynamic shared memory is a heap buffer of exactly the requested size
//    (AddressSanitizer catches overruns), filled with 0xFF bytes (NaN as
//    fp16/bf16/fp32/fp64, -1 as an integer) before every block.
//  - Static __shared__ variables are function-scope `static` objects placed in
//    the linker section `emu_shared`: one instance per kernel, shared by the
//    block's threads (blocks run one at a time, so that is per block). The
//    whole section is refilled with 0xFF before every block, and it counts as
//    shared memory for cp.async / ldmatrix.
//  - cp.async copies are deferred: the source is read when the copy is
//    issued, the destination written only when a cp_async_wait<N> requires
//    its group to complete (or at thread exit). Destinations and ldmatrix row
//    addresses must lie in shared memory and be 16-byte aligned.
//  - mma.sync: exact products, summed with the accumulator in double and
//    rounded to fp32 once (the PTX ISA leaves the order and rounding of the
//    internal sums to the implementation; real tensor cores round differently
//    by a few fp32 ulps).
//  - Global memory is sequentially consistent for plain accesses, except the
//    stores other CTAs read after a fence (st_global_for_peers: the split-K
//    partials): those are held back until the storing thread's next
//    __threadfence, or the launch's end, the latest the memory model allows,
//    so that a CTA that reads them without the writer's fence sees stale data.
//  - Any failure (an emulation check, or an exception thrown by a kernel)
//    stops the block and is rethrown by emu::launch as emu::Error.
//  - The sm_90a instructions and emu::launch_cluster (clusters of blocks
//    that run together, picked at random at every sm90 instruction) are in
//    emu_sm90.h, included at the end of this header.
#pragma once

#define TILESPARSE_PTX_EMULATION 1

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------
// CUDA keywords
// ---------------------------------------------------------------------------
// inline: kernels defined in headers may be included by several test files.
#define __global__ inline
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("emu_shared")))
#define __constant__ inline  // an inline variable: one definition across test files
// __restrict__ is a GNU keyword already.

// ---------------------------------------------------------------------------
// Vector types (CUDA's alignments)
// ---------------------------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(8) uint2 {
  unsigned int x, y;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

using cudaStream_t = struct CUstream_st*;

// ---------------------------------------------------------------------------
// 16-bit floats: storage only, with the conversions of cuda_fp16.h /
// cuda_bf16.h (round-to-nearest-even; NaN -> the canonical 0x7fff).
// ---------------------------------------------------------------------------
namespace emu::detail {
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_f16_rn(float f) {
  const uint32_t x = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7fff;                   // NaN
  if (ax >= 0x477ff000u) return sign | 0x7c00u;          // >= 65520 rounds to inf
  if (ax >= 0x38800000u) {                               // normal half (>= 2^-14)
    uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent
    return static_cast<uint16_t>(sign | h);
  }
  if (ax <= 0x33000000u) return sign;  // <= 2^-25: rounds to (signed) zero
  // Subnormal half: value / 2^-24 = m * 2^(e + 1), e in [-25, -15].
  const int e = static_cast<int>(ax >> 23) - 127;
  const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  const int s = -(e + 1);  // 14..24
  uint32_t h = m >> s;
  const uint32_t rem = m & ((1u << s) - 1u), halfway = 1u << (s - 1);
  if (rem > halfway || (rem == halfway && (h & 1u))) ++h;  // 0x400 = the smallest normal
  return static_cast<uint16_t>(sign | h);
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return sign ? -v : v;
  }
  return bits_f32(sign | ((e - 15 + 127) << 23) | (m << 13));
}
inline uint16_t f32_to_bf16_rn(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }
}  // namespace emu::detail

struct __half {
  unsigned short __x;
  __half() = default;
  __half(float f) : __x(emu::detail::f32_to_f16_rn(f)) {}
  operator float() const { return emu::detail::f16_to_f32(__x); }
};
struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(emu::detail::f32_to_bf16_rn(f)) {}
  operator float() const { return emu::detail::bf16_to_f32(__x); }
};
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit float types must be 2 bytes");

inline __half __ushort_as_half(unsigned short v) {
  __half h;
  h.__x = v;
  return h;
}
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline float __half2float(__half h) { return emu::detail::f16_to_f32(h.__x); }
inline __half __float2half_rn(float f) { return __ushort_as_half(emu::detail::f32_to_f16_rn(f)); }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) {
  __nv_bfloat16 h;
  h.__x = v;
  return h;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline float __bfloat162float(__nv_bfloat16 h) { return emu::detail::bf16_to_f32(h.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __ushort_as_bfloat16(emu::detail::f32_to_bf16_rn(f)); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

// ---------------------------------------------------------------------------
// Built-in variables: thread_local of the thread that runs the launch; the
// scheduler sets threadIdx whenever it switches to another CUDA thread.
// ---------------------------------------------------------------------------
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------
// Runtime interface (emu_runtime.cpp)
// ---------------------------------------------------------------------------
namespace emu {

// A failed emulation check or a kernel exception, with the block and thread.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Counters over all launches since the last reset_stats().
struct Stats {
  uint64_t launches = 0;
  uint64_t blocks = 0;           // blocks run
  uint64_t threads = 0;          // CUDA threads run
  uint64_t syncthreads = 0;      // __syncthreads barriers completed (per block)
  uint64_t cp_async = 0;         // cp.async copies issued (per thread)
  uint64_t cp_async_bytes = 0;   // bytes read from global memory by cp.async
  uint64_t cp_async_zfill = 0;   // bytes of zero fill (16 - src_bytes)
  uint64_t ldmatrix = 0;         // ldmatrix instructions (per warp)
  uint64_t mma = 0;              // mma.sync instructions (per warp)
  uint64_t shfl = 0;             // shuffles (per warp)
  uint64_t held_stores = 0;      // st_global_for_peers (per thread): held back until the thread's fence
  // sm_90a (emu_sm90.h)
  uint64_t clusters = 0;          // clusters run (a block of emu::launch counts as one)
  uint64_t cluster_barriers = 0;  // barrier.cluster phases completed
  uint64_t named_barriers = 0;    // bar.sync id, n completed
  uint64_t mbarrier_ops = 0;      // mbarrier init / arrive / try_wait (per thread)
  uint64_t tma_loads = 0;         // cp.async.bulk.tensor instructions (a multicast counts once)
  uint64_t tma_multicast = 0;     // of which multicast
  uint64_t tma_bytes = 0;         // box bytes read (once per instruction)
  uint64_t wgmma = 0;             // wgmma.mma_async (per warpgroup)
  uint64_t wgmma_fences = 0;      // wgmma.fence (per warpgroup)
  uint64_t proxy_fences = 0;      // fence.proxy.async (per thread)
};
Stats& stats();
void reset_stats();

// Upper bound of dynamic shared memory per block (default 227 KiB, the
// sm_90 opt-in limit); a launch asking for more fails.
void set_smem_limit(size_t bytes);
size_t smem_limit();

// Seed of the order in which threads resume after a barrier (default fixed).
void set_schedule_seed(uint64_t seed);

namespace detail {
using Body = void (*)(void* ctx);
void run_launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, Body body, void* ctx);
[[noreturn]] void fail(const std::string& what);

void syncthreads();
int syncthreads_count(int predicate);
void syncwarp(unsigned mask);
unsigned ballot(const char* op, unsigned mask, int predicate);
unsigned activemask();
uint64_t shfl(const char* op, unsigned mask, uint64_t value, int src_lane_rule, int arg, int width);
enum : int { kShflIdx = 0, kShflXor = 1, kShflDown = 2, kShflUp = 3 };

unsigned char* dynamic_smem();
uint32_t smem_offset(const void* p);
void cp_async(void* dst, const void* src, int cp_size, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);
void ldmatrix(uint32_t* r, int num, bool trans, const void* p, const char* op);
enum class MmaType { f16, bf16 };
void mma_m16n8(float* d, const uint32_t* a, const uint32_t* b, int k, MmaType type, const char* op);
// st_global_for_peers: the store is held back (invisible to every other thread) until the storing thread's next
// __threadfence or the launch's end, the latest visibility the memory model allows without a fence.
void held_store(void* dst, const void* src, size_t bytes);
void threadfence();
}  // namespace detail

// Runs kernel<<<grid, block, dynamic_smem_bytes>>>(args...): every block in
// turn (x fastest), all threads of a block as fibers. The arguments are
// converted to the kernel's parameter types once and every thread receives
// its own copy, as kernel parameters on the GPU. Throws emu::Error on the
// first failure.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t dynamic_smem_bytes, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "emu::launch: wrong number of kernel arguments");
  struct Ctx {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> params;
  } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  detail::run_launch(
      grid, block, dynamic_smem_bytes,
      [](void* c) {
        Ctx& cx = *static_cast<Ctx*>(c);
        std::apply(cx.kernel, cx.params);  // each thread: copies into the by-value parameters
      },
      &ctx);
}

}  // namespace emu

// ---------------------------------------------------------------------------
// Device functions
// ---------------------------------------------------------------------------
inline void __syncthreads() { emu::detail::syncthreads(); }
inline int __syncthreads_count(int predicate) { return emu::detail::syncthreads_count(predicate); }
inline int __syncthreads_or(int predicate) { return emu::detail::syncthreads_count(predicate) != 0; }
inline int __syncthreads_and(int predicate) {  // every live thread's predicate is non-zero
  return emu::detail::syncthreads_count(predicate == 0) == 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::detail::syncwarp(mask); }
inline unsigned __ballot_sync(unsigned mask, int predicate) { return emu::detail::ballot("__ballot_sync", mask, predicate); }
inline int __any_sync(unsigned mask, int predicate) { return emu::detail::ballot("__any_sync", mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
  return emu::detail::ballot("__all_sync", mask, predicate) == mask;
}
inline unsigned __activemask() { return emu::detail::activemask(); }
inline void __threadfence_block() {}
// Makes this thread's held-back global stores (st_global_for_peers) visible.
inline void __threadfence() { emu::detail::threadfence(); }

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

namespace emu::detail {
template <typename T>
inline T shfl_t(const char* op, unsigned mask, T v, int rule, int arg, int width) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  u = shfl(op, mask, u, rule, arg, width);
  T r;
  std::memcpy(&r, &u, sizeof(T));
  return r;
}
}  // namespace emu::detail

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return emu::detail::shfl_t("__shfl_sync", mask, v, emu::detail::kShflIdx, src_lane, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return emu::detail::shfl_t("__shfl_xor_sync", mask, v, emu::detail::kShflXor, lane_mask, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::detail::shfl_t("__shfl_down_sync", mask, v, emu::detail::kShflDown, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::detail::shfl_t("__shfl_up_sync", mask, v, emu::detail::kShflUp, static_cast<int>(delta), width);
}

// Atomics. The threads of a block never run at the same time, so these
// need no lock; __atomic builtins keep them correct regardless.
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
template <typename T>
inline T emu_atomic_add_fp(T* p, T v) {
  T old, nv;
  __atomic_load(p, &old, __ATOMIC_SEQ_CST);
  do {
    nv = old + v;
  } while (!__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
  return old;
}
inline float atomicAdd(float* p, float v) { return emu_atomic_add_fp(p, v); }
inline double atomicAdd(double* p, double v) { return emu_atomic_add_fp(p, v); }
inline int atomicOr(int* p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicOr(unsigned* p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicOr(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}
template <typename T>
inline T emu_atomic_max(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
inline int atomicMax(int* p, int v) { return emu_atomic_max(p, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return emu_atomic_max(p, v); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return emu_atomic_max(p, v); }

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline unsigned __float_as_uint(float f) { return emu::detail::f32_bits(f); }
inline float __uint_as_float(unsigned u) { return emu::detail::bits_f32(u); }
inline int __float_as_int(float f) { return static_cast<int>(emu::detail::f32_bits(f)); }
inline float __int_as_float(int i) { return emu::detail::bits_f32(static_cast<uint32_t>(i)); }

// ---------------------------------------------------------------------------
// The PTX wrappers of csrc/cuda/tw_ptx.cuh, same names and signatures.
// ---------------------------------------------------------------------------
namespace tilesparse::cuda {

// Offset in the shared window (static section first, then the dynamic buffer).
inline uint32_t smem_addr(const void* p) { return emu::detail::smem_offset(p); }
inline unsigned char* dynamic_smem() { return emu::detail::dynamic_smem(); }

inline void cp_async16(void* dst, const void* src, int src_bytes) { emu::detail::cp_async(dst, src, 16, src_bytes); }
inline void cp_async_commit() { emu::detail::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group needs N >= 0");
  emu::detail::cp_async_wait(N);
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { emu::detail::ldmatrix(r, 4, false, p, "ldmatrix_x4"); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  emu::detail::ldmatrix(r, 4, true, p, "ldmatrix_x4_trans");
}
inline void ldmatrix_x2(uint32_t (&r)[2], const void* p) { emu::detail::ldmatrix(r, 2, false, p, "ldmatrix_x2"); }
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void* p) {
  emu::detail::ldmatrix(r, 2, true, p, "ldmatrix_x2_trans");
}

inline void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::detail::mma_m16n8(d, a, b, 16, emu::detail::MmaType::f16, "mma_m16n8k16_f16");
}
inline void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::detail::mma_m16n8(d, a, b, 16, emu::detail::MmaType::bf16, "mma_m16n8k16_bf16");
}
inline void mma_m16n8k8_f16(float (&d)[4], const uint32_t (&a)[2], uint32_t b) {
  emu::detail::mma_m16n8(d, a, &b, 8, emu::detail::MmaType::f16, "mma_m16n8k8_f16");
}
inline void mma_m16n8k8_bf16(float (&d)[4], const uint32_t (&a)[2], uint32_t b) {
  emu::detail::mma_m16n8(d, a, &b, 8, emu::detail::MmaType::bf16, "mma_m16n8k8_bf16");
}

inline void st_global_for_peers(float2* dst, float2 v) { emu::detail::held_store(dst, &v, sizeof v); }

}  // namespace tilesparse::cuda

// The sm_90a instructions (csrc/cuda/sm90_ptx.cuh) and emu::launch_cluster.
#include "emu_sm90.h"
