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
// any other architecture (the sm_80 pass of the same translation unit), so
// a fat binary for "8.0;9.0a" builds and the plan (tw_fwd_launch.cuh) only
// launches the sm90 kernels on compute capability 9.x.
// The emulation (emu_cuda.h) defines TILESPARSE_PTX_EMULATION and supplies
// this whole namespace itself: this file is never included there.
#pragma once

#include <cuda.h>  // CUtensorMap
#include <cuda_runtime.h>

#include <cstdint>

#include "tw_ptx.cuh"  // smem_addr

// The instructions below exist on sm_90a only (wgmma, setmaxnreg need the
// arch-specific 'a' target); elsewhere a body is a trap.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TS_SM90_PTX 1
#else
#define TS_SM90_PTX 0
#endif

namespace tilesparse::cuda::sm90 {

#if TS_SM90_PTX
#define TS_SM90_ASM(...) asm volatile(__VA_ARGS__)
#else
// Not sm_90a: never launched there (the plan checks the compute capability).
#define TS_SM90_ASM(...) __trap()
#endif

// ---- clusters ------------------------------------------------------------
// %cluster_ctarank / %cluster_nctarank. Clusters are 1-D along grid x here:
// the CTAs of cluster c are blockIdx.x = c * nctarank + rank.
__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r = 0;
  TS_SM90_ASM("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_nctarank() {
  uint32_t r = 1;
  TS_SM90_ASM("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(r));
  return r;
}
// barrier.cluster.arrive.release.aligned / barrier.cluster.wait.acquire.aligned:
// every thread of every CTA of the cluster arrives; wait returns once all have.
__device__ __forceinline__ void cluster_arrive() {
  TS_SM90_ASM("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { TS_SM90_ASM("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}
// mapa.shared::cluster.u32: the shared::cluster address of the variable at
// shared::cta address `cta_addr` (smem_addr(p)) in the CTA of rank `cta_rank`.
__device__ __forceinline__ uint32_t mapa_shared(uint32_t cta_addr, uint32_t cta_rank) {
  uint32_t r = 0;
  TS_SM90_ASM("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(cta_addr), "r"(cta_rank));
  return r;
}
// ld/st.shared::cluster.u32 at a shared::cluster address (from mapa_shared).
__device__ __forceinline__ uint32_t ld_shared_cluster_u32(uint32_t cluster_addr) {
  uint32_t v = 0;
  TS_SM90_ASM("ld.shared::cluster.u32 %0, [%1];\n" : "=r"(v) : "r"(cluster_addr) : "memory");
  return v;
}
__device__ __forceinline__ void st_shared_cluster_u32(uint32_t cluster_addr, uint32_t value) {
  TS_SM90_ASM("st.shared::cluster.u32 [%0], %1;\n" ::"r"(cluster_addr), "r"(value) : "memory");
}

// ---- named barriers ------------------------------------------------------
// bar.sync id, nthreads (id 1..15; 0 is __syncthreads): the first `nthreads`
// threads to arrive (whole warps) continue together.
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t nthreads) {
  TS_SM90_ASM("bar.sync %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}

// ---- mbarrier (a 64-bit object in shared memory, 8-byte aligned) ---------
// mbarrier.init.shared::cta.b64: expected arrival count `count`, phase 0,
// tx-count 0.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
  TS_SM90_ASM("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// fence.mbarrier_init.release.cluster: makes the inits visible to the
// cluster (then cluster_sync before any remote use).
__device__ __forceinline__ void fence_mbarrier_init() {
  TS_SM90_ASM("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// mbarrier.arrive.shared::cta.b64 (release, cta): one arrival.
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  TS_SM90_ASM("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// mbarrier.arrive.release.cluster.shared::cluster.b64 on the barrier at the
// same shared offset as `bar` in the CTA of rank `cta_rank` (mapa first).
__device__ __forceinline__ void mbarrier_arrive_cluster(uint64_t* bar, uint32_t cta_rank) {
  TS_SM90_ASM(
      "{\n"
      ".reg .b32 remote;\n"
      "mapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [remote];\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(cta_rank)
      : "memory");
}
// mbarrier.arrive.expect_tx.shared::cta.b64: tx-count += tx_bytes, then one
// arrival. The phase completes when the pending arrivals reach 0 and the
// tx-count is 0 (complete_tx of TMA loads decrements it; it may go below 0
// before the expect_tx arrives).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t tx_bytes) {
  TS_SM90_ASM("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(tx_bytes)
              : "memory");
}
// mbarrier.try_wait.parity.shared::cta.b64 (acquire, cta): true once the phase
// with parity `parity` has completed (i.e. the current phase parity differs).
__device__ __forceinline__ bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  TS_SM90_ASM(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(smem_addr(bar)), "r"(parity)
      : "memory");
  return done != 0;
}
__device__ __forceinline__ void mbarrier_wait_parity(uint64_t* bar, uint32_t parity) {
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
__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap* map) {
  TS_SM90_ASM("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
// cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes
// [dst], [map, {c0, c1}], [bar]: the box at element (c0, c1) into this CTA.
__device__ __forceinline__ void tma_load_2d(void* smem_dst, const CUtensorMap* map, uint64_t* bar, int32_t c0,
                                            int32_t c1) {
  TS_SM90_ASM(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::
          "r"(smem_addr(smem_dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_addr(bar)), "r"(c0), "r"(c1)
      : "memory");
}
// ... .multicast::cluster with cta_mask: the same box into the same shared
// offset of every CTA whose rank bit is set, each CTA's barrier at `bar`'s
// offset receiving complete_tx of the box bytes.
__device__ __forceinline__ void tma_load_2d_multicast(void* smem_dst, const CUtensorMap* map, uint64_t* bar,
                                                      uint16_t cta_mask, int32_t c0, int32_t c1) {
  TS_SM90_ASM(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%4, %5}], [%2], %3;\n" ::"r"(smem_addr(smem_dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_addr(bar)), "h"(cta_mask), "r"(c0), "r"(c1)
      : "memory");
}

// ---- proxies and registers -----------------------------------------------
// fence.proxy.async.shared::cta: this thread's generic-proxy shared-memory
// writes become visible to the async proxy (wgmma operand reads, TMA stores).
__device__ __forceinline__ void fence_proxy_async_shared() {
  TS_SM90_ASM("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// setmaxnreg.inc/dec.sync.aligned.u32 N (warpgroup-wide, N % 8 == 0, 24..256).
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg: N % 8 == 0, 24 <= N <= 256");
  TS_SM90_ASM("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg: N % 8 == 0, 24 <= N <= 256");
  TS_SM90_ASM("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// ---- wgmma ---------------------------------------------------------------
// The shared-memory matrix descriptor (PTX ISA "Matrix Descriptor"): bits
// 0-13 start address >> 4, 16-29 leading-dimension byte offset >> 4, 32-45
// stride-dimension byte offset >> 4, 49-51 base offset (0 here), 62-63 the
// swizzle mode. Plain bit arithmetic on smem_addr(): shared by device and
// emulation.
__device__ __forceinline__ uint64_t make_smem_desc(uint32_t smem_address, Swizzle sw, uint32_t lbo_bytes,
                                                   uint32_t sbo_bytes) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((smem_address >> 4) & 0x3FFF);
  d |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16;
  d |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32;
  d |= static_cast<uint64_t>(static_cast<int>(sw)) << 62;
  return d;
}
// wgmma.fence.sync.aligned: before the first wgmma that reads registers
// (accumulators, A) written by other instructions.
__device__ __forceinline__ void wgmma_fence() { TS_SM90_ASM("wgmma.fence.sync.aligned;\n" ::: "memory"); }
// wgmma.commit_group.sync.aligned / wgmma.wait_group.sync.aligned N: at most
// N committed groups of this warpgroup still pending on return. A wgmma's
// accumulator and A registers must not be touched until its group completed.
__device__ __forceinline__ void wgmma_commit_group() {
  TS_SM90_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait_group() {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group needs N in 0..7");
  TS_SM90_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// The 64 fp32 accumulators of m64n128 as asm operands %0..%63.
#define TS_SM90_WGMMA_D_REGS                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "         \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define TS_SM90_WGMMA_D_OPERANDS(d)                                                                     \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),            \
      "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),            \
      "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),            \
      "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),            \
      "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),            \
      "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]),            \
      "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
// RS: {d}, {a0..a3}, b-desc, scale-d (predicate), imm-scale-a, imm-scale-b, imm-trans-b (0: K-major B).
#define TS_SM90_WGMMA_RS(TYPE)                                                                            \
  TS_SM90_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                \
              "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " " TS_SM90_WGMMA_D_REGS         \
              ", {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                             \
              : TS_SM90_WGMMA_D_OPERANDS(d)                                                               \
              : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate))
// SS: {d}, a-desc, b-desc, scale-d, imm-scale-a, imm-scale-b, imm-trans-a, imm-trans-b (both K-major).
#define TS_SM90_WGMMA_SS(TYPE)                                                                            \
  TS_SM90_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                \
              "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " " TS_SM90_WGMMA_D_REGS         \
              ", %64, %65, p, 1, 1, 0, 0;\n}\n"                                                           \
              : TS_SM90_WGMMA_D_OPERANDS(d)                                                               \
              : "l"(desc_a), "l"(desc_b), "r"(accumulate))
// SS with both operands MN-major: imm-trans-a = imm-trans-b = 1 (16-bit types only).
#define TS_SM90_WGMMA_SS_MN(TYPE)                                                                         \
  TS_SM90_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                \
              "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " " TS_SM90_WGMMA_D_REGS         \
              ", %64, %65, p, 1, 1, 1, 1;\n}\n"                                                           \
              : TS_SM90_WGMMA_D_OPERANDS(d)                                                               \
              : "l"(desc_a), "l"(desc_b), "r"(accumulate))

// wgmma.mma_async.sync.aligned.m64n128k16.f32.{bf16,f16}.{bf16,f16}, K-major B
// (no transpose), scale-a = scale-b = 1, scale-d = `accumulate` (0: D = A B).
// D: the 64x128 fp32 accumulator, 64 per thread: warp w of the warpgroup owns
// rows 16w + lane/4 (+8); d[4j + {0,1}] = (row, cols 8j + 2(lane%4) + {0,1}),
// d[4j + {2,3}] = the same columns of row + 8.
// RS: A (64x16) from registers: warp w's rows 16w..16w+15 in the
// mma.m16n8k16 A-fragment layout (a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..),
// a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..), g = lane/4, t = lane%4).
__device__ __forceinline__ void wgmma_m64n128k16_rs_bf16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b,
                                                         int accumulate) {
  TS_SM90_WGMMA_RS("bf16");
}
__device__ __forceinline__ void wgmma_m64n128k16_rs_f16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b,
                                                        int accumulate) {
  TS_SM90_WGMMA_RS("f16");
}
// SS: A (64x16, K-major) from shared memory too.
__device__ __forceinline__ void wgmma_m64n128k16_ss_bf16(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                         int accumulate) {
  TS_SM90_WGMMA_SS("bf16");
}
__device__ __forceinline__ void wgmma_m64n128k16_ss_f16(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                        int accumulate) {
  TS_SM90_WGMMA_SS("f16");
}

// SS, both MN-major (transposed): A (64 x 16) with its 64 rows (M) contiguous
// along each K-row, B (16 x 128) with its 128 columns (N) contiguous; the
// canonical MN-major layouts of the ISA (swizzled: LBO = the next T bytes
// of M/N, SBO = the next 8 K-rows). gV = gy^T x reads both this way.
__device__ __forceinline__ void wgmma_m64n128k16_ss_mn_bf16(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                            int accumulate) {
  TS_SM90_WGMMA_SS_MN("bf16");
}
__device__ __forceinline__ void wgmma_m64n128k16_ss_mn_f16(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                           int accumulate) {
  TS_SM90_WGMMA_SS_MN("f16");
}

// The 32 fp32 accumulators of m64n64 as asm operands %0..%31.
#define TS_SM90_WGMMA_D32_REGS                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "         \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define TS_SM90_WGMMA_D32_OPERANDS(d)                                                                   \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),            \
      "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),            \
      "+f"(d[30]), "+f"(d[31])
// SS m64n64k16, A K-major, B MN-major: imm-trans-a = 0, imm-trans-b = 1.
#define TS_SM90_WGMMA_SS_N64_TB(TYPE)                                                                     \
  TS_SM90_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                \
              "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " " TS_SM90_WGMMA_D32_REGS        \
              ", %32, %33, p, 1, 1, 0, 1;\n}\n"                                                           \
              : TS_SM90_WGMMA_D32_OPERANDS(d)                                                             \
              : "l"(desc_a), "l"(desc_b), "r"(accumulate))

// wgmma m64n64k16 SS with A (64 x 16) K-major and B (16 x 64) MN-major: its
// 64 columns (N) contiguous along each K-row (the ISA's canonical MN-major
// layout, as above). D: 32 per thread, the m64n128 layout cut at 64 columns:
// d[4j + {0,1}] = (row, cols 8j + 2(lane%4) + {0,1}), d[4j + {2,3}] = row + 8.
// grad_input reads gy (K = outputs, contiguous) against V_t (N = positions,
// contiguous) this way.
__device__ __forceinline__ void wgmma_m64n64k16_ss_tb_bf16(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                                           int accumulate) {
  TS_SM90_WGMMA_SS_N64_TB("bf16");
}
__device__ __forceinline__ void wgmma_m64n64k16_ss_tb_f16(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                                          int accumulate) {
  TS_SM90_WGMMA_SS_N64_TB("f16");
}

#undef TS_SM90_WGMMA_SS_N64_TB
#undef TS_SM90_WGMMA_D32_OPERANDS
#undef TS_SM90_WGMMA_D32_REGS
#undef TS_SM90_WGMMA_SS_MN
#undef TS_SM90_WGMMA_SS
#undef TS_SM90_WGMMA_RS
#undef TS_SM90_WGMMA_D_OPERANDS
#undef TS_SM90_WGMMA_D_REGS
#undef TS_SM90_ASM

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
