// Host emulation of the sm_90a instructions: the contract
// csrc/cuda/sm90_ptx.cuh, with the same names and signatures in
// tilesparse::cuda::sm90, plus emu::launch_cluster. Included at the end of
// emu_cuda.h (never directly); the semantics are in emu_sm90_runtime.cpp,
// the scheduling in emu_runtime.cpp.
//
//  - Clusters: emu::launch_cluster runs the blocks of one cluster together
//    (all their threads are fibers of one scheduler), one cluster at a time,
//    in a seeded shuffled order. Each block has its own dynamic shared memory
//    at shared address 0; static __shared__ variables are refused.
//  - Schedule: every sm90 instruction is a yield point, and the next fiber is
//    picked at random among the runnable ones (seeded). A failing
//    mbarrier_try_wait_parity parks the thread until the phase completes.
//  - Async proxy: each block's shared memory has a second, async-proxy view
//    that wgmma reads. TMA writes both views; fence_proxy_async_shared copies
//    the generic view into the async one.
//  - TMA loads land at a later, random scheduling point (or when nothing
//    else can run); wgmma groups complete at wgmma_wait_group, when their
//    operands are read and D written.
#pragma once

#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#define __grid_constant__
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

// The driver's tensor map is opaque, 128 bytes, 64-byte aligned; the
// emulation keeps its own fields in it (written by encode_tensor_map_2d).
struct alignas(64) CUtensorMap {
  uint64_t emu_magic;  // kTensorMapMagic once encoded
  const void* base;
  uint64_t dim0, dim1;  // elements (dim0 contiguous), rows
  uint64_t row_stride_bytes;
  uint32_t box0, box1;
  int32_t swizzle;  // tilesparse::cuda::sm90::Swizzle
  unsigned char reserved[128 - 52];
};
static_assert(sizeof(CUtensorMap) == 128 && alignof(CUtensorMap) == 64, "CUtensorMap is 128 bytes, 64-aligned");

namespace emu {
namespace detail {
void run_cluster_launch(dim3 grid, dim3 block, unsigned cluster_x, size_t dynamic_smem_bytes, Body body, void* ctx);

// ---- scheduling services of emu_runtime.cpp for emu_sm90_runtime.cpp ----
struct ThreadPos {
  int cta;  // rank in the cluster
  int linear, warp, lane;
};
ThreadPos current_thread(const char* op);
int cluster_size();
int block_threads();
unsigned char* cta_dynamic_smem(int rank);
size_t dynamic_smem_bytes();
uint32_t dynamic_smem_base();  // shared address of dynamic shared memory byte 0
uint64_t schedule_random();
// The caller goes back to the run queue; progress = false: it only polls
// (a try_wait), which does not count as progress for the deadlock check.
void yield_point(bool progress = true);
// Blocks until wake(key), or until nothing else can run (a try_wait's
// time-out). A deadlock report names the wait by sm90_async::describe_wait.
void park(const void* key);
void wake(const void* key);
void warpgroup_sync(const char* op);  // barrier of the calling thread's 128-thread warpgroup
void named_barrier(uint32_t id, uint32_t nthreads);
void cluster_arrive();
void cluster_wait();

// ---- hooks of the asynchronous engine, called by the scheduler ----
namespace sm90_async {
void begin_cluster(int nctas, size_t dynamic_smem_bytes);
bool pending();      // TMA loads in flight
void deliver_one();  // lands one of them (chosen at random)
void end_cluster();  // fails if TMA loads or wgmma groups are still in flight
void cta_exited(int cta);  // every thread of block rank `cta` exited: peers may no longer reach it
std::string describe_wait(const void* key);  // the mbarrier a parked try_wait waits on
}  // namespace sm90_async

// ---- the instructions (emu_sm90_runtime.cpp) ----
uint32_t cluster_ctarank();
uint32_t mapa_shared(uint32_t cta_addr, uint32_t cta_rank);
uint32_t ld_shared_cluster_u32(uint32_t cluster_addr);
void st_shared_cluster_u32(uint32_t cluster_addr, uint32_t value);
void sm90_named_barrier_sync(uint32_t id, uint32_t nthreads);
void sm90_cluster_arrive();
void sm90_cluster_wait();
void mbarrier_init(uint64_t* bar, uint32_t count);
void fence_mbarrier_init();
void mbarrier_arrive(uint64_t* bar, uint32_t tx_bytes, bool expect_tx);
void mbarrier_arrive_cluster(uint64_t* bar, uint32_t cta_rank);
bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity);
void prefetch_tensormap(const CUtensorMap* map);
void tma_load_2d(void* smem_dst, const CUtensorMap* map, uint64_t* bar, uint32_t cta_mask, bool multicast, int32_t c0,
                 int32_t c1);
void fence_proxy_async_shared();
void setmaxnreg(int n, bool inc);
void wgmma_fence();
void wgmma_commit_group();
void wgmma_wait_group(int n);
enum class WgmmaType { f16, bf16 };
void wgmma_m64n128k16(float* d, const uint32_t* a, uint64_t desc_a, uint64_t desc_b, int accumulate, WgmmaType type,
                      const char* op, bool mn_a = false, bool mn_b = false, int n = 128);
bool encode_tensor_map_2d(CUtensorMap* map, const void* base, uint64_t dim0, uint64_t dim1, uint64_t row_stride_bytes,
                          uint32_t box0, uint32_t box1, int swizzle);
}  // namespace detail

// Runs kernel<<<grid, block, dynamic_smem_bytes>>>(args...) with clusters of
// `cluster_x` blocks along x (cudaLaunchKernelEx with the cluster dimension
// attribute): cluster c is blocks x = c * cluster_x .. + cluster_x - 1. The
// blocks of a cluster run together; clusters one at a time in a seeded
// shuffled order. Conventions as emu::launch. Throws emu::Error.
template <typename... P, typename... A>
void launch_cluster(void (*kernel)(P...), dim3 grid, dim3 block, unsigned cluster_x, size_t dynamic_smem_bytes,
                    A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "emu::launch_cluster: wrong number of kernel arguments");
  struct Ctx {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> params;
  } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  detail::run_cluster_launch(
      grid, block, cluster_x, dynamic_smem_bytes,
      [](void* c) {
        Ctx& cx = *static_cast<Ctx*>(c);
        std::apply(cx.kernel, cx.params);
      },
      &ctx);
}
}  // namespace emu

// ---------------------------------------------------------------------------
// csrc/cuda/sm90_ptx.cuh, emulated: same names and signatures.
// ---------------------------------------------------------------------------
namespace tilesparse::cuda::sm90 {

inline uint32_t cluster_ctarank() { return emu::detail::cluster_ctarank(); }
inline uint32_t cluster_nctarank() { return static_cast<uint32_t>(emu::detail::cluster_size()); }
inline void cluster_arrive() { emu::detail::sm90_cluster_arrive(); }
inline void cluster_wait() { emu::detail::sm90_cluster_wait(); }
inline void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}
inline uint32_t mapa_shared(uint32_t cta_addr, uint32_t cta_rank) { return emu::detail::mapa_shared(cta_addr, cta_rank); }
inline uint32_t ld_shared_cluster_u32(uint32_t cluster_addr) { return emu::detail::ld_shared_cluster_u32(cluster_addr); }
inline void st_shared_cluster_u32(uint32_t cluster_addr, uint32_t value) {
  emu::detail::st_shared_cluster_u32(cluster_addr, value);
}

inline void named_barrier_sync(uint32_t id, uint32_t nthreads) { emu::detail::sm90_named_barrier_sync(id, nthreads); }

inline void mbarrier_init(uint64_t* bar, uint32_t count) { emu::detail::mbarrier_init(bar, count); }
inline void fence_mbarrier_init() { emu::detail::fence_mbarrier_init(); }
inline void mbarrier_arrive(uint64_t* bar) { emu::detail::mbarrier_arrive(bar, 0, false); }
inline void mbarrier_arrive_cluster(uint64_t* bar, uint32_t cta_rank) {
  emu::detail::mbarrier_arrive_cluster(bar, cta_rank);
}
inline void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t tx_bytes) {
  emu::detail::mbarrier_arrive(bar, tx_bytes, true);
}
inline bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
  return emu::detail::mbarrier_try_wait_parity(bar, parity);
}
inline void mbarrier_wait_parity(uint64_t* bar, uint32_t parity) {
  while (!mbarrier_try_wait_parity(bar, parity)) {
  }
}

enum class Swizzle : int { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };  // the wgmma descriptor's encoding

inline void prefetch_tensormap(const CUtensorMap* map) { emu::detail::prefetch_tensormap(map); }
inline void tma_load_2d(void* smem_dst, const CUtensorMap* map, uint64_t* bar, int32_t c0, int32_t c1) {
  emu::detail::tma_load_2d(smem_dst, map, bar, 0, false, c0, c1);
}
inline void tma_load_2d_multicast(void* smem_dst, const CUtensorMap* map, uint64_t* bar, uint16_t cta_mask, int32_t c0,
                                  int32_t c1) {
  emu::detail::tma_load_2d(smem_dst, map, bar, cta_mask, true, c0, c1);
}

inline void fence_proxy_async_shared() { emu::detail::fence_proxy_async_shared(); }
template <int N>
inline void setmaxnreg_inc() {
  emu::detail::setmaxnreg(N, true);
}
template <int N>
inline void setmaxnreg_dec() {
  emu::detail::setmaxnreg(N, false);
}

// Identical to sm90_ptx.cuh's (plain bit arithmetic).
inline uint64_t make_smem_desc(uint32_t smem_address, Swizzle sw, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((smem_address >> 4) & 0x3FFF);
  d |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16;
  d |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32;
  d |= static_cast<uint64_t>(static_cast<int>(sw)) << 62;
  return d;
}

inline void wgmma_fence() { emu::detail::wgmma_fence(); }
inline void wgmma_commit_group() { emu::detail::wgmma_commit_group(); }
template <int N>
inline void wgmma_wait_group() {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group needs N in 0..7");
  emu::detail::wgmma_wait_group(N);
}
inline void wgmma_m64n128k16_rs_bf16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  emu::detail::wgmma_m64n128k16(d, a, 0, desc_b, accumulate, emu::detail::WgmmaType::bf16, "wgmma_m64n128k16_rs_bf16");
}
inline void wgmma_m64n128k16_rs_f16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  emu::detail::wgmma_m64n128k16(d, a, 0, desc_b, accumulate, emu::detail::WgmmaType::f16, "wgmma_m64n128k16_rs_f16");
}
inline void wgmma_m64n128k16_ss_bf16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  emu::detail::wgmma_m64n128k16(d, nullptr, desc_a, desc_b, accumulate, emu::detail::WgmmaType::bf16,
                                "wgmma_m64n128k16_ss_bf16");
}
inline void wgmma_m64n128k16_ss_f16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  emu::detail::wgmma_m64n128k16(d, nullptr, desc_a, desc_b, accumulate, emu::detail::WgmmaType::f16,
                                "wgmma_m64n128k16_ss_f16");
}
inline void wgmma_m64n128k16_ss_mn_bf16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  emu::detail::wgmma_m64n128k16(d, nullptr, desc_a, desc_b, accumulate, emu::detail::WgmmaType::bf16,
                                "wgmma_m64n128k16_ss_mn_bf16", true, true);
}
inline void wgmma_m64n128k16_ss_mn_f16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  emu::detail::wgmma_m64n128k16(d, nullptr, desc_a, desc_b, accumulate, emu::detail::WgmmaType::f16,
                                "wgmma_m64n128k16_ss_mn_f16", true, true);
}

inline void wgmma_m64n64k16_ss_tb_bf16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  emu::detail::wgmma_m64n128k16(d, nullptr, desc_a, desc_b, accumulate, emu::detail::WgmmaType::bf16,
                                "wgmma_m64n64k16_ss_tb_bf16", false, true, 64);
}
inline void wgmma_m64n64k16_ss_tb_f16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  emu::detail::wgmma_m64n128k16(d, nullptr, desc_a, desc_b, accumulate, emu::detail::WgmmaType::f16,
                                "wgmma_m64n64k16_ss_tb_f16", false, true, 64);
}

// Host: cuTensorMapEncodeTiled's checks (see emu_sm90_runtime.cpp); false
// (map untouched) where the driver refuses.
inline bool encode_tensor_map_2d(CUtensorMap* map, const void* base, uint64_t dim0, uint64_t dim1,
                                 uint64_t row_stride_bytes, uint32_t box0, uint32_t box1, Swizzle swizzle) {
  return emu::detail::encode_tensor_map_2d(map, base, dim0, dim1, row_stride_bytes, box0, box1,
                                           static_cast<int>(swizzle));
}

}  // namespace tilesparse::cuda::sm90
