// PTX wrappers of the sm_90a tile-wise path (csrc/cuda/tw_fwd_sm90_kernels.cuh):
// clusters and DSMEM, mbarrier, TMA (cp.async.bulk.tensor) with multicast,
// wgmma (A from registers or shared memory, B from shared memory),
// fence.proxy.async and setmaxnreg.
//
// Why hand-written wrappers and not CuTe's atoms: the host emulation
// (tests/cuda_emulation/emu_sm90.h) substitutes every one of these
// instructions at this one seam, with the same names and signatures, so the
// kernels' own source runs on the CPU. CuTe's atoms are inline asm behind
// __CUDA_ARCH__ feature guards inside its headers; the emulation could not
// replace them without running different code from the device's.
//
// THIS FILE IS THE CONTRACT between the kernels and the emulator. Each
// function's comment states its PTX instruction(s) and semantics; the device
// bodies compile only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL) and trap on
// any other architecture (the sm_80 pass of the same translation unit).
#pragma once

#include <cuda.h>  // CUtensorMap
#include <cuda_runtime.h>

#include <cstdint>

namespace tilesparse::cuda::sm90 {

// ---- clusters ------------------------------------------------------------
// %cluster_ctarank / %cluster_nctarank. Clusters are 1-D along grid x here:
// the CTAs of cluster c are blockIdx.x = c * nctarank + rank.
__device__ uint32_t cluster_ctarank();
__device__ uint32_t cluster_nctarank();
// barrier.cluster.arrive.release.aligned / barrier.cluster.wait.acquire.aligned:
// every thread of every CTA of the cluster arrives; wait returns once all have.
__device__ void cluster_arrive();
__device__ void cluster_wait();
__device__ inline void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}
// mapa.shared::cluster.u32: the shared::cluster address of the variable at
// shared::cta address `cta_addr` (smem_addr(p)) in the CTA of rank `cta_rank`.
__device__ uint32_t mapa_shared(uint32_t cta_addr, uint32_t cta_rank);
// ld/st.shared::cluster.u32 at a shared::cluster address (from mapa_shared).
__device__ uint32_t ld_shared_cluster_u32(uint32_t cluster_addr);
__device__ void st_shared_cluster_u32(uint32_t cluster_addr, uint32_t value);

// ---- named barriers ------------------------------------------------------
// bar.sync id, nthreads (id 1..15; 0 is __syncthreads): the first `nthreads`
// threads to arrive (whole warps) continue together.
__device__ void named_barrier_sync(uint32_t id, uint32_t nthreads);

// ---- mbarrier (a 64-bit object in shared memory, 8-byte aligned) ---------
// mbarrier.init.shared::cta.b64: expected arrival count `count`, phase 0,
// tx-count 0.
__device__ void mbarrier_init(uint64_t* bar, uint32_t count);
// fence.mbarrier_init.release.cluster: makes the inits visible to the
// cluster (then cluster_sync before any remote use).
__device__ void fence_mbarrier_init();
// mbarrier.arrive.shared::cta.b64 (release, cta): one arrival.
__device__ void mbarrier_arrive(uint64_t* bar);
// mbarrier.arrive.release.cluster.shared::cluster.b64 on the barrier at the
// same shared offset as `bar` in the CTA of rank `cta_rank` (mapa first).
__device__ void mbarrier_arrive_cluster(uint64_t* bar, uint32_t cta_rank);
// mbarrier.arrive.expect_tx.shared::cta.b64: tx-count += tx_bytes, then one
// arrival. The phase completes when the pending arrivals reach 0 and the
// tx-count is 0 (complete_tx of TMA loads decrements it; it may go below 0
// before the expect_tx arrives).
__device__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t tx_bytes);
// mbarrier.try_wait.parity.shared::cta.b64 (acquire, cta): true once the phase
// with parity `parity` has completed (i.e. the current phase parity differs).
__device__ bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity);
__device__ inline void mbarrier_wait_parity(uint64_t* bar, uint32_t parity) {
  while (!mbarrier_try_wait_parity(bar, parity)) {
  }
}

// ---- TMA -----------------------------------------------------------------
// A 2-D tiled tensor map (host: encode_tensor_map_2d below). dim0 is the
// contiguous dimension (elements), dim1 the rows; box {box0, box1}; the box
// lands in shared memory row-major (box0 elements per row), with the map's
// swizzle applied to the shared-memory address (16-byte chunk index XOR the
// row within the 8-row atom; the destination must be aligned to the atom:
// 1024 B for 128B, 512 for 64B, 256 for 32B). Out-of-bounds elements are
// zero-filled; the full box bytes are counted in complete_tx.
enum class Swizzle : int { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };  // the wgmma descriptor's encoding

// prefetch.tensormap [map]
__device__ void prefetch_tensormap(const CUtensorMap* map);
// cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes
// [dst], [map, {c0, c1}], [bar]: the box at element (c0, c1) into this CTA.
__device__ void tma_load_2d(void* smem_dst, const CUtensorMap* map, uint64_t* bar, int32_t c0, int32_t c1);
// ... .multicast::cluster with cta_mask: the same box into the same shared
// offset of every CTA whose rank bit is set, each CTA's barrier at `bar`'s
// offset receiving complete_tx of the box bytes.
__device__ void tma_load_2d_multicast(void* smem_dst, const CUtensorMap* map, uint64_t* bar, uint16_t cta_mask,
                                      int32_t c0, int32_t c1);

// ---- proxies and registers -----------------------------------------------
// fence.proxy.async.shared::cta: this thread's generic-proxy shared-memory
// writes become visible to the async proxy (wgmma operand reads, TMA stores).
__device__ void fence_proxy_async_shared();
// setmaxnreg.inc/dec.sync.aligned.u32 N (warpgroup-wide, N % 8 == 0, 24..256).
template <int N>
__device__ void setmaxnreg_inc();
template <int N>
__device__ void setmaxnreg_dec();

// ---- wgmma ---------------------------------------------------------------
// The shared-memory matrix descriptor (PTX ISA "Matrix Descriptor"): bits
// 0-13 start address >> 4, 16-29 leading-dimension byte offset >> 4, 32-45
// stride-dimension byte offset >> 4, 49-51 base offset (0 here), 62-63 the
// swizzle mode. Plain bit arithmetic on smem_addr(): shared by device and
// emulation.
__device__ inline uint64_t make_smem_desc(uint32_t smem_address, Swizzle sw, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((smem_address >> 4) & 0x3FFF);
  d |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16;
  d |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32;
  d |= static_cast<uint64_t>(static_cast<int>(sw)) << 62;
  return d;
}
// wgmma.fence.sync.aligned: before the first wgmma that reads registers
// (accumulators, A) written by other instructions.
__device__ void wgmma_fence();
// wgmma.commit_group.sync.aligned / wgmma.wait_group.sync.aligned N: at most
// N committed groups of this warpgroup still pending on return. A wgmma's
// accumulator and A registers must not be touched until its group completed.
__device__ void wgmma_commit_group();
template <int N>
__device__ void wgmma_wait_group();
// wgmma.mma_async.sync.aligned.m64n128k16.f32.{bf16,f16}.{bf16,f16}, K-major B
// (no transpose), scale-a = scale-b = 1, scale-d = `accumulate` (0: D = A B).
// D: the 64x128 fp32 accumulator, 64 per thread: warp w of the warpgroup owns
// rows 16w + lane/4 (+8); d[4j + {0,1}] = (row, cols 8j + 2(lane%4) + {0,1}),
// d[4j + {2,3}] = the same columns of row + 8.
// RS: A (64x16) from registers: warp w's rows 16w..16w+15 in the
// mma.m16n8k16 A-fragment layout (a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..),
// a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..), g = lane/4, t = lane%4).
__device__ void wgmma_m64n128k16_rs_bf16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int accumulate);
__device__ void wgmma_m64n128k16_rs_f16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int accumulate);
// SS: A (64x16, K-major) from shared memory too.
__device__ void wgmma_m64n128k16_ss_bf16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate);
__device__ void wgmma_m64n128k16_ss_f16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate);

}  // namespace tilesparse::cuda::sm90

// ---- host ------------------------------------------------------------------
namespace tilesparse::cuda::sm90 {
// cuTensorMapEncodeTiled for a 2-D row-major 16-bit tensor: dims {dim0, dim1}
// (elements), row stride in bytes (multiple of 16), box {box0, box1}
// (box0 * 2 <= the swizzle span), interleave none, L2 promotion 128B, OOB
// fill zero. Returns false (map untouched) where the driver refuses.
// Defined in the CUDA build by csrc/cuda/sm90_tensor_map.cu; by
// tests/cuda_emulation/emu_sm90.h in the emulation.
bool encode_tensor_map_2d(CUtensorMap* map, const void* base, uint64_t dim0, uint64_t dim1, uint64_t row_stride_bytes,
                          uint32_t box0, uint32_t box1, Swizzle swizzle);
}  // namespace tilesparse::cuda::sm90
