// Catch2 tests of the emulated sm_90a instructions (emu_sm90.h) against
// hand-worked examples of the PTX ISA's layouts: clusters and distributed
// shared memory, mbarrier phases and tx-counts, TMA boxes (out-of-bounds
// fill, the three swizzles, multicast), fence.proxy.async, the wgmma
// fragment and descriptor layouts with their commit / wait semantics,
// setmaxnreg, named barriers, and the proof that the adversarial schedule
// catches a missing wait in a producer/consumer mbarrier ring.
#include "emu_cuda.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

using namespace tilesparse::cuda;
using namespace tilesparse::cuda::sm90;

namespace {

uint16_t f16_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }
uint16_t bf16_bits(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

// A 2-D tensor of 16-bit values v(x, y) = 100 y + x + 1 (never 0, never 0xffff).
struct Tensor2d {
  uint64_t dim0, dim1, stride_elems;
  std::vector<uint16_t> data;
  Tensor2d(uint64_t d0, uint64_t d1, uint64_t stride) : dim0(d0), dim1(d1), stride_elems(stride), data(d1 * stride, 0) {
    for (uint64_t y = 0; y < d1; ++y)
      for (uint64_t x = 0; x < d0; ++x) data[y * stride + x] = static_cast<uint16_t>(100 * y + x + 1);
  }
  uint16_t at(int64_t x, int64_t y) const {  // 0 out of bounds, as TMA fills
    if (x < 0 || y < 0 || x >= static_cast<int64_t>(dim0) || y >= static_cast<int64_t>(dim1)) return 0;
    return data[static_cast<size_t>(y) * stride_elems + static_cast<size_t>(x)];
  }
  CUtensorMap map(uint32_t box0, uint32_t box1, Swizzle sw) const {
    CUtensorMap m;
    REQUIRE(encode_tensor_map_2d(&m, data.data(), dim0, dim1, stride_elems * 2, box0, box1, sw));
    return m;
  }
};

uint64_t* bar_at(int offset) { return reinterpret_cast<uint64_t*>(dynamic_smem() + offset); }

// ---------------------------------------------------------------------------
// Clusters and distributed shared memory
// ---------------------------------------------------------------------------
__global__ void cluster_dsmem_kernel(uint32_t* out) {
  uint32_t* words = reinterpret_cast<uint32_t*>(dynamic_smem());
  const uint32_t rank = cluster_ctarank(), n = cluster_nctarank();
  if (threadIdx.x == 0) words[0] = 1000 * blockIdx.x + 7;
  cluster_sync();  // every block's words[0] is written
  if (threadIdx.x == 0) {
    const uint32_t peer = (rank + 1) % n;
    out[4 * blockIdx.x + 0] = rank;
    out[4 * blockIdx.x + 1] = n;
    out[4 * blockIdx.x + 2] = ld_shared_cluster_u32(mapa_shared(smem_addr(&words[0]), peer));
    st_shared_cluster_u32(mapa_shared(smem_addr(&words[1]), peer), 100 + rank);
  }
  cluster_sync();  // every remote store is done
  if (threadIdx.x == 0) out[4 * blockIdx.x + 3] = words[1];
}

__global__ void static_smem_cluster_kernel(int* out) {
  __shared__ int flag;
  volatile int* p = &flag;  // volatile: the store stays
  *p = 1;
  out[0] = *p;
}

__global__ void nothing_cluster_kernel() {}

// Rank 1 arrives on rank 0's mbarrier, or stores into its shared memory; rank
// 0 exits at once unless `sync` (a cluster barrier before the exit).
__global__ void exited_peer_kernel(int mode, int sync) {
  uint64_t* bar = reinterpret_cast<uint64_t*>(dynamic_smem());
  const uint32_t rank = cluster_ctarank();
  if (threadIdx.x == 0) {
    mbarrier_init(bar, 1);
    fence_mbarrier_init();
  }
  cluster_sync();
  if (rank == 1 && threadIdx.x == 0) {
    if (mode == 0) mbarrier_arrive_cluster(bar, 0);
    else st_shared_cluster_u32(mapa_shared(smem_addr(bar) + 8, 0), 1u);
  }
  if (sync) cluster_sync();
}

}  // namespace

TEST_CASE("sm90 emu: cluster rank, mapa + DSMEM ld/st, cluster barrier", "[sm90][emu]") {
  for (unsigned c : {1u, 2u, 4u}) {
    std::vector<uint32_t> out(4 * 8, 0);
    const emu::Stats before = emu::stats();
    emu::launch_cluster(cluster_dsmem_kernel, dim3(8), dim3(64), c, 64, out.data());
    CHECK(emu::stats().clusters - before.clusters == 8 / c);
    CHECK(emu::stats().cluster_barriers - before.cluster_barriers == 2 * 8 / c);
    for (unsigned b = 0; b < 8; ++b) {
      const unsigned rank = b % c, first = b - rank;
      CHECK(out[4 * b + 0] == rank);
      CHECK(out[4 * b + 1] == c);
      CHECK(out[4 * b + 2] == 1000 * (first + (rank + 1) % c) + 7);  // the next rank's word
      CHECK(out[4 * b + 3] == 100 + (rank + c - 1) % c);             // written by the previous rank
    }
  }
  CHECK_THROWS_WITH(emu::launch_cluster(nothing_cluster_kernel, dim3(6), dim3(32), 4, 0),
                    Catch::Contains("invalid cluster size"));
  // A peer reaching the shared memory of a block that has exited: undefined
  // on the device, an error here (under every schedule where rank 0 exits
  // first; with the cluster barrier, never).
  for (int mode : {0, 1}) {
    for (uint64_t seed = 1; seed <= 8; ++seed) {
      emu::set_schedule_seed(seed);
      emu::launch_cluster(exited_peer_kernel, dim3(2), dim3(1), 2, 64, mode, 1);
    }
    bool caught = false;
    for (uint64_t seed = 1; seed <= 8 && !caught; ++seed) {
      emu::set_schedule_seed(seed);
      try {
        emu::launch_cluster(exited_peer_kernel, dim3(2), dim3(1), 2, 64, mode, 0);
      } catch (const std::exception& e) {
        caught = std::string(e.what()).find("has exited") != std::string::npos;
      }
    }
    CHECK(caught);
  }
  emu::set_schedule_seed(0);  // the default
  int flag = 0;
  CHECK_THROWS_WITH(emu::launch_cluster(static_smem_cluster_kernel, dim3(2), dim3(1), 2, 0, &flag),
                    Catch::Contains("static __shared__"));
}

// ---------------------------------------------------------------------------
// mbarrier
// ---------------------------------------------------------------------------
namespace {
__global__ void mbarrier_phase_kernel(int* out, const CUtensorMap* map) {
  uint64_t* bar = bar_at(0);
  uint64_t* bar2 = bar_at(8);
  unsigned char* dst = dynamic_smem() + 1024;
  unsigned char* dst2 = dynamic_smem() + 2048;
  mbarrier_init(bar, 2);
  fence_mbarrier_init();
  out[0] = mbarrier_try_wait_parity(bar, 0);  // 0: phase 0 runs
  out[1] = mbarrier_try_wait_parity(bar, 1);  // 1: the "previous" phase (parity 1) counts as completed
  mbarrier_arrive(bar);                        // 1 of 2 arrivals
  out[2] = mbarrier_try_wait_parity(bar, 0);  // 0
  mbarrier_arrive_expect_tx(bar, 64);          // 2 of 2, tx-count 64
  out[3] = mbarrier_try_wait_parity(bar, 0);  // 0: 64 bytes outstanding
  tma_load_2d(dst, map, bar, 0, 0);            // 64 bytes: complete_tx(64)
  mbarrier_wait_parity(bar, 0);
  out[4] = dst[0] | dst[1] << 8;               // v(0, 0) = 1
  out[5] = mbarrier_try_wait_parity(bar, 1);  // 0: phase 1 runs
  out[6] = mbarrier_try_wait_parity(bar, 0);  // 1: phase 0 completed
  // complete_tx before expect_tx: the tx-count goes to -64, the phase waits for the arrival.
  mbarrier_init(bar2, 1);
  tma_load_2d(dst2, map, bar2, 0, 1);
  int polls = 0;
  while (dst2[0] == 0xff) {  // until the load landed; the last poll saw it landed, arrival missing
    out[7] = mbarrier_try_wait_parity(bar2, 0);
    ++polls;
  }
  out[8] = 0;
  mbarrier_arrive_expect_tx(bar2, 64);          // tx-count back to 0 with the arrival: completes
  out[9] = mbarrier_try_wait_parity(bar2, 0);  // 1
  out[10] = dst2[0] | dst2[1] << 8;             // v(0, 1) = 101
  out[11] = polls;
}

__global__ void mbarrier_misuse_kernel(int mode) {
  uint64_t* bar = bar_at(0);
  static uint64_t global_word;
  switch (mode) {
    case 0: (void)mbarrier_try_wait_parity(bar, 0); break;  // never initialised
    case 1: mbarrier_init(reinterpret_cast<uint64_t*>(dynamic_smem() + 4), 1); break;
    case 2: mbarrier_init(&global_word, 1); break;
    case 3:
      mbarrier_init(bar, 1);
      mbarrier_arrive_expect_tx(bar, 16);  // the only arrival; the phase waits for 16 bytes
      mbarrier_arrive(bar);
      break;
    case 4:
      mbarrier_init(bar, 1);
      mbarrier_wait_parity(bar, 0);  // nobody arrives
      break;
  }
}
}  // namespace

TEST_CASE("sm90 emu: mbarrier phases, parity, expect_tx before and after complete_tx", "[sm90][emu]") {
  Tensor2d t(32, 4, 32);
  const CUtensorMap map = t.map(32, 1, Swizzle::kNone);
  std::vector<int> out(12, -1);
  emu::launch_cluster(mbarrier_phase_kernel, dim3(1), dim3(1), 1, 4096, out.data(), &map);
  CHECK(out[0] == 0);
  CHECK(out[1] == 1);
  CHECK(out[2] == 0);
  CHECK(out[3] == 0);
  CHECK(out[4] == 1);
  CHECK(out[5] == 0);
  CHECK(out[6] == 1);
  CHECK(out[7] == 0);
  CHECK(out[8] == 0);
  CHECK(out[9] == 1);
  CHECK(out[10] == 101);
  CHECK(out[11] >= 1);

  CHECK_THROWS_WITH(emu::launch_cluster(mbarrier_misuse_kernel, dim3(1), dim3(1), 1, 64, 0),
                    Catch::Contains("not initialised"));
  CHECK_THROWS_WITH(emu::launch_cluster(mbarrier_misuse_kernel, dim3(1), dim3(1), 1, 64, 1),
                    Catch::Contains("8-byte aligned"));
  CHECK_THROWS_WITH(emu::launch_cluster(mbarrier_misuse_kernel, dim3(1), dim3(1), 1, 64, 2),
                    Catch::Contains("not in this block's dynamic shared memory"));
  CHECK_THROWS_WITH(emu::launch_cluster(mbarrier_misuse_kernel, dim3(1), dim3(1), 1, 64, 3),
                    Catch::Contains("more arrivals than pending"));
  CHECK_THROWS_WITH(emu::launch_cluster(mbarrier_misuse_kernel, dim3(1), dim3(1), 1, 64, 4),
                    Catch::Contains("deadlock") && Catch::Contains("mbarrier at shared 0x0"));
}

// ---------------------------------------------------------------------------
// TMA
// ---------------------------------------------------------------------------
namespace {
__global__ void tma_box_kernel(const CUtensorMap* map, uint16_t* out, int dst_offset, int c0, int c1, int bytes) {
  uint64_t* bar = bar_at(0);
  unsigned char* dst = dynamic_smem() + dst_offset;
  prefetch_tensormap(map);
  mbarrier_init(bar, 1);
  mbarrier_arrive_expect_tx(bar, static_cast<uint32_t>(bytes));
  tma_load_2d(dst, map, bar, c0, c1);
  mbarrier_wait_parity(bar, 0);
  std::memcpy(out, dst, static_cast<size_t>(bytes));
}

// Byte position in shared memory of box element (row r, element e) for a
// box of `row_bytes` per row at a swizzle-atom-aligned address: the 16-byte
// chunk index XOR the row within the atom, on the address bits.
size_t tma_position(Swizzle sw, uint32_t row_bytes, uint32_t r, uint32_t e) {
  const uint32_t b = r * row_bytes + 2 * e;
  switch (sw) {
    case Swizzle::k128B: return b ^ (((b >> 7) & 7u) << 4);
    case Swizzle::k64B: return b ^ (((b >> 7) & 3u) << 4);
    case Swizzle::k32B: return b ^ (((b >> 7) & 1u) << 4);
    default: return b;
  }
}

std::vector<uint16_t> load_box(const Tensor2d& t, uint32_t box0, uint32_t box1, Swizzle sw, int c0, int c1) {
  const CUtensorMap map = t.map(box0, box1, sw);
  std::vector<uint16_t> out(box0 * box1, 0);
  emu::launch_cluster(tma_box_kernel, dim3(1), dim3(1), 1, 1024 + 2 * box0 * box1, &map, out.data(), 1024, c0, c1,
                      static_cast<int>(2 * box0 * box1));
  for (uint32_t r = 0; r < box1; ++r)
    for (uint32_t e = 0; e < box0; ++e)
      REQUIRE(out[tma_position(sw, 2 * box0, r, e) / 2] == t.at(c0 + static_cast<int>(e), c1 + static_cast<int>(r)));
  return out;
}
}  // namespace

TEST_CASE("sm90 emu: TMA box load, out-of-bounds zero fill, swizzle", "[sm90][emu]") {
  const Tensor2d t(40, 20, 48);  // rows of 96 bytes, 8 elements of padding
  // 128B: box {64, 8} at (16, 15): columns >= 40 and rows >= 20 are zero.
  std::vector<uint16_t> b = load_box(t, 64, 8, Swizzle::k128B, 16, 15);
  CHECK(b[144 / 2] == 1617);  // (r 1, e 0): chunk 0 ^ 1 -> byte 128 + 16; v(16, 16)
  CHECK(b[418 / 2] == 1826);  // (r 3, e 9): chunk 1 ^ 3 = 2 -> 384 + 32 + 2; v(25, 18)
  CHECK(b[860 / 2] == 0);     // (r 6, e 30): x = 46 out of bounds; chunk 3 ^ 6 = 5 -> 768 + 80 + 12
  CHECK(b[720 / 2] == 0);     // (r 5, e 0): y = 20 out of bounds; chunk 0 ^ 5 -> 640 + 80
  // 64B: box {32, 8}, rows of 64 bytes; bits [4:5] ^= bits [7:8].
  b = load_box(t, 32, 8, Swizzle::k64B, 0, 0);
  CHECK(b[144 / 2] == 201);  // (r 2, e 0): byte 128 -> 128 ^ 16
  CHECK(b[192 / 2] == 309);  // (r 3, e 8): byte 208 -> 208 ^ 16
  // 32B: box {16, 8}, rows of 32 bytes; bit 4 ^= bit 7.
  b = load_box(t, 16, 8, Swizzle::k32B, 0, 0);
  CHECK(b[144 / 2] == 401);  // (r 4, e 0): byte 128 -> 144
  CHECK(b[160 / 2] == 509);  // (r 5, e 8): byte 176 -> 160
  // No swizzle, negative coordinates: box {16, 4} at (-8, 18).
  b = load_box(t, 16, 4, Swizzle::kNone, -8, 18);
  CHECK(b[16 / 2] == 1801);  // (r 0, e 8): v(0, 18)
  CHECK(b[0] == 0);
  CHECK(b[(64 + 20) / 2] == 0);  // (r 2, e 10): y = 20

  // The destination must be aligned to the swizzle atom (1024 B for 128B).
  const CUtensorMap m128 = t.map(64, 8, Swizzle::k128B);
  std::vector<uint16_t> out(64 * 8);
  CHECK_THROWS_WITH(emu::launch_cluster(tma_box_kernel, dim3(1), dim3(1), 1, 4096, &m128, out.data(), 1536, 0, 0, 1024),
                    Catch::Contains("not aligned to the swizzle atom (1024 bytes)"));
  // The driver's checks in encode_tensor_map_2d.
  CUtensorMap m;
  CHECK_FALSE(encode_tensor_map_2d(&m, t.data.data(), 40, 20, 100, 16, 8, Swizzle::kNone));   // stride % 16
  CHECK_FALSE(encode_tensor_map_2d(&m, t.data.data(), 40, 20, 96, 72, 8, Swizzle::k128B));    // 144 B > 128
  CHECK_FALSE(encode_tensor_map_2d(&m, t.data.data(), 40, 20, 96, 64, 8, Swizzle::k64B));     // 128 B > 64
  CHECK_FALSE(encode_tensor_map_2d(&m, t.data.data(), 40, 20, 96, 16, 257, Swizzle::kNone));  // box > 256
  CHECK_FALSE(encode_tensor_map_2d(&m, t.data.data(), 40, 20, 96, 12, 8, Swizzle::kNone));    // 24 B % 16
  CHECK_FALSE(encode_tensor_map_2d(&m, t.data.data() + 1, 40, 20, 96, 16, 8, Swizzle::kNone));  // base alignment
  CHECK(encode_tensor_map_2d(&m, t.data.data(), 40, 20, 96, 64, 256, Swizzle::k128B));
}

namespace {
// Rank r loads rows [4r, 4r + 4) and multicasts them to every block.
__global__ void multicast_kernel(const CUtensorMap* map, uint16_t* out) {
  uint64_t* bar = bar_at(0);
  unsigned char* dst = dynamic_smem() + 1024;
  const uint32_t n = cluster_nctarank(), rank = cluster_ctarank();
  if (threadIdx.x == 0) {
    mbarrier_init(bar, 1);
    fence_mbarrier_init();
  }
  cluster_sync();  // every block's barrier is initialised before any multicast lands
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(bar, 128 * n);
    tma_load_2d_multicast(dst + 128 * rank, map, bar, static_cast<uint16_t>((1u << n) - 1), 0,
                          static_cast<int32_t>(4 * rank));
    mbarrier_wait_parity(bar, 0);
    std::memcpy(out + blockIdx.x * 64 * n, dst, 128 * n);
  }
  cluster_sync();
}
}  // namespace

TEST_CASE("sm90 emu: TMA multicast to 2 and 4 CTAs", "[sm90][emu]") {
  const Tensor2d t(16, 16, 16);
  const CUtensorMap map = t.map(16, 4, Swizzle::kNone);
  for (unsigned c : {2u, 4u}) {
    std::vector<uint16_t> out(2 * c * 64 * c, 0);
    const emu::Stats before = emu::stats();
    emu::launch_cluster(multicast_kernel, dim3(2 * c), dim3(32), c, 1024 + 128 * c, &map, out.data());
    CHECK(emu::stats().tma_multicast - before.tma_multicast == 2 * c);
    CHECK(emu::stats().tma_bytes - before.tma_bytes == 2 * c * 128);
    for (unsigned b = 0; b < 2 * c; ++b)
      for (unsigned r = 0; r < 4 * c; ++r)
        for (unsigned e = 0; e < 16; ++e) REQUIRE(out[b * 64 * c + r * 16 + e] == t.at(e, r));
  }
}

// ---------------------------------------------------------------------------
// wgmma
// ---------------------------------------------------------------------------
namespace {
// Shared-memory byte address of element (row i, k) of a K-major 16-bit
// operand in the PTX ISA's canonical layouts (written here independently of
// the emulator): no swizzle: 8 x 16-byte core matrices, LBO apart along K
// and SBO apart per 8 rows; T-byte swizzle: each row of an 8-row atom holds
// T bytes of K, SBO apart per 8 rows, then the swizzle XOR on the address.
uint32_t kmajor_addr(Swizzle sw, uint32_t start, uint32_t lbo, uint32_t sbo, uint32_t i, uint32_t k) {
  const uint32_t kb = 2 * k;
  if (sw == Swizzle::kNone) return start + (i / 8) * sbo + (kb / 16) * lbo + (i % 8) * 16 + kb % 16;
  const uint32_t span = sw == Swizzle::k128B ? 128 : sw == Swizzle::k64B ? 64 : 32;
  const uint32_t a = start + (i / 8) * sbo + (i % 8) * span + kb;
  return a ^ (((a >> 7) & (span / 16 - 1)) << 4);  // 128B: bits [4:6] ^= [7:9]; 64B: [4:5] ^= [7:8]; 32B: 4 ^= 7
}

// The A fragment of thread (warp w, lane) per the contract: a[r] holds row
// 16 w + g + 8 (r & 1), columns 2 t + 8 (r >> 1) + {0, 1} (low half first).
void a_fragment(const uint16_t* a /* 64 x K */, int ld, int k0, int t, uint32_t (&out)[4]) {
  const int w = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
  for (int r = 0; r < 4; ++r) {
    const int row = 16 * w + g + 8 * (r & 1), col = k0 + 2 * q + 8 * (r >> 1);
    out[r] = a[row * ld + col] | static_cast<uint32_t>(a[row * ld + col + 1]) << 16;
  }
}
// d[4j + e] of thread t: row 16 w + g + 8 (e >> 1), column 8 j + 2 t + (e & 1).
int d_row(int t, int e) { return 16 * (t / 32) + (t % 32) / 4 + 8 * (e >> 1); }
int d_col(int t, int j, int e) { return 8 * j + 2 * (t % 4) + (e & 1); }

enum RsMode { kRsNormal = 0, kRsReadDEarly = 1, kRsClobberA = 2, kRsRewriteB = 3, kRsNoWait = 4 };

// B (128 x 16) written by the threads, no swizzle, LBO 2048 (K halves are
// planes), SBO 128; A from registers.
__global__ void wgmma_rs_kernel(const uint16_t* a, const uint16_t* b, float* out, int mode) {
  unsigned char* smem = dynamic_smem();
  const int t = threadIdx.x;
  for (int k = 0; k < 16; ++k)
    std::memcpy(smem + kmajor_addr(Swizzle::kNone, 0, 2048, 128, t, k), &b[t * 16 + k], 2);
  fence_proxy_async_shared();
  __syncthreads();
  uint32_t af[4];
  a_fragment(a, 16, 0, t, af);
  float d[64];
  for (float& v : d) v = -1.0f;
  wgmma_fence();
  wgmma_m64n128k16_rs_f16(d, af, make_smem_desc(smem_addr(smem), Swizzle::kNone, 2048, 128), 0);
  wgmma_commit_group();
  if (mode == kRsReadDEarly)
    for (int i = 0; i < 64; ++i) out[t * 64 + i] = d[i];
  if (mode == kRsClobberA)
    for (uint32_t& v : af) v = 0;
  if (mode == kRsRewriteB) {
    __syncthreads();
    for (int k = 0; k < 16; ++k) {
      const uint16_t two = f16_bits(2.0f);
      std::memcpy(smem + kmajor_addr(Swizzle::kNone, 0, 2048, 128, t, k), &two, 2);
    }
    fence_proxy_async_shared();
    __syncthreads();
  }
  if (mode != kRsNoWait) wgmma_wait_group<0>();
  if (mode != kRsReadDEarly)
    for (int i = 0; i < 64; ++i) out[t * 64 + i] = d[i];
}
}  // namespace

TEST_CASE("sm90 emu: wgmma RS fragment layouts of A and D, completion at wait_group", "[sm90][emu]") {
  // A = scaled one-hot rows: A[i][k] = (1 + i / 16) if k == i % 16; B[n][k] = n + 128 k; so
  // D[i][n] = (1 + i / 16) (n + 128 (i % 16)) names its row and column.
  std::vector<uint16_t> a(64 * 16, f16_bits(0.0f)), b(128 * 16);
  for (int i = 0; i < 64; ++i) a[i * 16 + i % 16] = f16_bits(static_cast<float>(1 + i / 16));
  for (int n = 0; n < 128; ++n)
    for (int k = 0; k < 16; ++k) b[n * 16 + k] = f16_bits(static_cast<float>(n + 128 * k));
  std::vector<float> out(128 * 64);
  const emu::Stats before = emu::stats();
  emu::launch_cluster(wgmma_rs_kernel, dim3(1), dim3(128), 1, 4096, a.data(), b.data(), out.data(), int(kRsNormal));
  CHECK(emu::stats().wgmma - before.wgmma == 1);
  CHECK(emu::stats().wgmma_fences - before.wgmma_fences == 1);
  for (int t = 0; t < 128; ++t)
    for (int j = 0; j < 16; ++j)
      for (int e = 0; e < 4; ++e) {
        const int i = d_row(t, e), n = d_col(t, j, e);
        REQUIRE(out[t * 64 + 4 * j + e] == static_cast<float>((1 + i / 16) * (n + 128 * (i % 16))));
      }
  CHECK(out[0] == 0.0f);               // thread 0, d[0] = (0, 0)
  CHECK(out[5 * 64 + 4 * 3 + 3] == 9 * 128 + 27);  // thread 5 (g 1, t 1), d[15] = (row 9, col 27)
  // D is written, and A and B are read, at completion (wgmma_wait_group), not at issue.
  emu::launch_cluster(wgmma_rs_kernel, dim3(1), dim3(128), 1, 4096, a.data(), b.data(), out.data(), int(kRsReadDEarly));
  for (float v : out) REQUIRE(v == -1.0f);
  emu::launch_cluster(wgmma_rs_kernel, dim3(1), dim3(128), 1, 4096, a.data(), b.data(), out.data(), int(kRsClobberA));
  for (float v : out) REQUIRE(v == 0.0f);
  emu::launch_cluster(wgmma_rs_kernel, dim3(1), dim3(128), 1, 4096, a.data(), b.data(), out.data(), int(kRsRewriteB));
  for (int t = 0; t < 128; ++t)
    for (int e = 0; e < 4; ++e) REQUIRE(out[t * 64 + e] == static_cast<float>(2 * (1 + d_row(t, e) / 16)));
  CHECK_THROWS_WITH(emu::launch_cluster(wgmma_rs_kernel, dim3(1), dim3(128), 1, 4096, a.data(), b.data(), out.data(),
                                        int(kRsNoWait)),
                    Catch::Contains("not waited for"));
}

namespace {
// The sm90 kernel's configuration: B stage [128 rows x 64] by TMA with the
// 128B swizzle, 4 k16 steps at start + 32 j, SBO 1024; A double-buffered
// registers, wait_group<1> in the loop. No fence: TMA writes the async view.
__global__ void wgmma_rs_tma_kernel(const CUtensorMap* map_b, const uint16_t* a, float* out, int skip_fence) {
  uint64_t* bar = bar_at(0);
  unsigned char* stage = dynamic_smem() + 1024;
  const int t = threadIdx.x;
  if (t == 0) {
    mbarrier_init(bar, 1);
    mbarrier_arrive_expect_tx(bar, 128 * 128);
    tma_load_2d(stage, map_b, bar, 0, 0);
  }
  __syncthreads();
  mbarrier_wait_parity(bar, 0);
  // (no heap objects in this kernel: a failing case abandons the other threads' frames)
  uint32_t af[2][4];
  float d[64];
  for (int j = 0; j < 4; ++j) {
    a_fragment(a, 64, 16 * j, t, af[j % 2]);
    if (j != skip_fence) wgmma_fence();  // skip_fence: the missing-fence cases
    wgmma_m64n128k16_rs_bf16(d, af[j % 2], make_smem_desc(smem_addr(stage) + 32 * j, Swizzle::k128B, 16, 1024), j > 0);
    wgmma_commit_group();
    wgmma_wait_group<1>();
  }
  wgmma_wait_group<0>();
  for (int i = 0; i < 64; ++i) out[t * 64 + i] = d[i];
}
}  // namespace

TEST_CASE("sm90 emu: wgmma RS with a TMA-loaded 128B-swizzled B stage, 4 k-steps", "[sm90][emu]") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<uint16_t> a(64 * 64), w(128 * 64);
  for (auto& v : a) v = bf16_bits(u(rng));
  for (auto& v : w) v = bf16_bits(u(rng));
  CUtensorMap map;
  REQUIRE(encode_tensor_map_2d(&map, w.data(), 64, 128, 128, 64, 128, Swizzle::k128B));
  std::vector<float> out(128 * 64);
  emu::launch_cluster(wgmma_rs_tma_kernel, dim3(1), dim3(128), 1, 1024 + 16384, &map, a.data(), out.data(), -1);
  // No wgmma.fence before the first wgmma, or between a wait and the next one
  // (whose A registers were just rewritten): the ISA's rule, checked.
  for (int skip : {0, 2})
    CHECK_THROWS_WITH(emu::launch_cluster(wgmma_rs_tma_kernel, dim3(1), dim3(128), 1, 1024 + 16384, &map, a.data(),
                                          out.data(), skip),
                      Catch::Contains("no wgmma_fence"));
  for (int t = 0; t < 128; ++t)
    for (int j = 0; j < 16; ++j)
      for (int e = 0; e < 4; ++e) {
        const int i = d_row(t, e), n = d_col(t, j, e);
        double ref = 0, mag = 0;
        for (int k = 0; k < 64; ++k) {
          const double p = static_cast<double>(__bfloat162float(__ushort_as_bfloat16(a[i * 64 + k]))) *
                           __bfloat162float(__ushort_as_bfloat16(w[n * 64 + k]));
          ref += p;
          mag += std::fabs(p);
        }
        REQUIRE(std::fabs(out[t * 64 + 4 * j + e] - ref) <= 1e-6 * mag + 1e-30);
      }
}

namespace {
struct SsLayout {
  Swizzle sw;
  uint32_t start_a, lbo_a, sbo_a, start_b, lbo_b, sbo_b;
};

// MN-major (transposed) canonical layouts, written as CuTe writes them in
// units of 16-byte chunks (W = swizzle span / 16): element (i, k) is chunk
// c = i / 8, byte 2 (i % 8) of it; swizzled: ((W, n), (8, k)) : ((1, LBO),
// (W, SBO)); no swizzle: ((1, n), (8, k)) : ((X, SBO), (1, LBO)).
uint32_t mnmajor_addr(Swizzle sw, uint32_t start, uint32_t lbo, uint32_t sbo, uint32_t i, uint32_t k) {
  const uint32_t c = i / 8, e = i % 8;
  uint32_t chunks;
  if (sw == Swizzle::kNone) {
    chunks = c * (sbo / 16) + (k % 8) + (k / 8) * (lbo / 16);
    return start + 16 * chunks + 2 * e;
  }
  const uint32_t span = sw == Swizzle::k128B ? 128 : sw == Swizzle::k64B ? 64 : 32, w = span / 16;
  chunks = (c % w) + (c / w) * (lbo / 16) + (k % 8) * w + (k / 8) * (sbo / 16);
  const uint32_t a = start + 16 * chunks + 2 * e;
  return a ^ (((a >> 7) & (w - 1)) << 4);
}

// A (64 x 16, a[i * 16 + k]) and B (128 x 16, b[n * 16 + k]) written by the
// threads at their layout addresses, K-major (mn = 0) or MN-major (mn = 1,
// the transposed SS form); with_fence = false leaves them invisible to wgmma
// (async proxy).
__global__ void wgmma_ss_kernel(SsLayout l, const uint16_t* a, const uint16_t* b, float* out, int with_fence,
                                int mn) {
  unsigned char* smem = dynamic_smem();
  const int t = threadIdx.x;
  auto addr = mn ? mnmajor_addr : kmajor_addr;
  for (int idx = t; idx < 64 * 16; idx += 128)
    std::memcpy(smem + addr(l.sw, l.start_a, l.lbo_a, l.sbo_a, idx / 16, idx % 16), &a[idx], 2);
  for (int idx = t; idx < 128 * 16; idx += 128)
    std::memcpy(smem + addr(l.sw, l.start_b, l.lbo_b, l.sbo_b, idx / 16, idx % 16), &b[idx], 2);
  if (with_fence) fence_proxy_async_shared();
  __syncthreads();
  float d[64];
  wgmma_fence();
  const uint64_t desc_a = make_smem_desc(l.start_a, l.sw, l.lbo_a, l.sbo_a);
  const uint64_t desc_b = make_smem_desc(l.start_b, l.sw, l.lbo_b, l.sbo_b);
  if (mn) wgmma_m64n128k16_ss_mn_f16(d, desc_a, desc_b, 0);
  else wgmma_m64n128k16_ss_f16(d, desc_a, desc_b, 0);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  for (int i = 0; i < 64; ++i) out[t * 64 + i] = d[i];
}

// out (128 threads x 64 accumulators of an m64n128 D) equals sum_k A(i, k) B(n, k) exactly, in double
// (small integers: no rounding).
template <typename Ab>
void require_d_exact(const std::vector<float>& out, Ab&& ab) {
  for (int t = 0; t < 128; ++t)
    for (int j = 0; j < 16; ++j)
      for (int e = 0; e < 4; ++e) {
        const int i = d_row(t, e), n = d_col(t, j, e);
        double ref = 0;
        for (int k = 0; k < 16; ++k) ref += ab(i, n, k);
        REQUIRE(out[t * 64 + 4 * j + e] == static_cast<float>(ref));
      }
}

double f16_product(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, int i, int n, int k) {
  return static_cast<double>(__half2float(__ushort_as_half(a[i * 16 + k]))) * __half2float(__ushort_as_half(b[n * 16 + k]));
}
}  // namespace

TEST_CASE("sm90 emu: wgmma SS descriptors, no swizzle / 32B / 64B / 128B, LBO and SBO", "[sm90][emu]") {
  // Hand-computed byte addresses of the canonical K-major layouts.
  CHECK(kmajor_addr(Swizzle::kNone, 0, 1024, 128, 9, 10) == 1172);  // 128 + 1024 + 16 + 4
  CHECK(kmajor_addr(Swizzle::kNone, 0, 1024, 128, 0, 8) == 1024);
  CHECK(kmajor_addr(Swizzle::kNone, 0, 1024, 128, 63, 15) == 2046);  // 896 + 1024 + 112 + 14
  CHECK(kmajor_addr(Swizzle::k128B, 32, 16, 1024, 9, 10) == 1188);  // 1204: chunk 3 ^ row 1 = 2
  CHECK(kmajor_addr(Swizzle::k128B, 32, 16, 1024, 0, 0) == 32);
  CHECK(kmajor_addr(Swizzle::k128B, 32, 16, 1024, 7, 15) == 974);  // 958: chunk 3 ^ row 7 = 4
  CHECK(kmajor_addr(Swizzle::k64B, 32, 16, 1024, 9, 10) == 1140);  // row bits 0: unchanged
  CHECK(kmajor_addr(Swizzle::k64B, 32, 16, 1024, 3, 2) == 244);    // 228: chunk 2 ^ 1 = 3
  CHECK(kmajor_addr(Swizzle::k64B, 32, 16, 1024, 6, 9) == 386);    // 434: chunk 3 ^ 3 = 0
  CHECK(kmajor_addr(Swizzle::k32B, 0, 16, 512, 5, 9) == 162);      // 178: bit 4 ^= bit 7
  CHECK(kmajor_addr(Swizzle::k32B, 0, 16, 512, 12, 3) == 662);     // 646 + 16
  CHECK(kmajor_addr(Swizzle::k32B, 0, 16, 512, 1, 0) == 32);

  std::mt19937 rng(5);
  std::uniform_int_distribution<int> u(-3, 3);
  std::vector<uint16_t> a(64 * 16), b(128 * 16);
  for (auto& v : a) v = f16_bits(static_cast<float>(u(rng)));
  for (auto& v : b) v = f16_bits(static_cast<float>(u(rng)));
  const SsLayout layouts[] = {
      {Swizzle::kNone, 0, 1024, 128, 16384, 2048, 128},
      {Swizzle::k128B, 32, 16, 1024, 16384 + 32, 16, 1024},
      {Swizzle::k64B, 32, 16, 1024, 16384 + 32, 16, 1024},
      {Swizzle::k32B, 0, 16, 512, 16384, 16, 512},
  };
  std::vector<float> out(128 * 64);
  for (const SsLayout& l : layouts) {
    INFO("swizzle " << static_cast<int>(l.sw));
    emu::launch_cluster(wgmma_ss_kernel, dim3(1), dim3(128), 1, 32768 + 64, l, a.data(), b.data(), out.data(), 1, 0);
    require_d_exact(out, [&](int i, int n, int k) { return f16_product(a, b, i, n, k); });
  }
}

namespace {
// The grad_values form (tw_gv_sm90u_kernels.cuh): G [16 tokens x 64 outputs]
// by one TMA box (128B swizzle) is A = G^T, X [16 tokens x 128 features] by 8
// boxes of 16 features (32B swizzle, 512 B apart) is B = X; D = G^T X.
__global__ void wgmma_ss_mn_tma_kernel(const CUtensorMap* gmap, const CUtensorMap* xmap, float* out) {
  unsigned char* smem = dynamic_smem();  // the emulation's dynamic shared memory is 1024-aligned
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + 8192);
  const int t = threadIdx.x;
  if (t == 0) {
    mbarrier_init(bar, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (t == 0) {
    mbarrier_arrive_expect_tx(bar, 16 * 128 + 8 * 512);
    tma_load_2d(smem, gmap, bar, 0, 0);
    for (int r = 0; r < 8; ++r) tma_load_2d(smem + 2048 + 512 * r, xmap, bar, 16 * r, 0);
  }
  while (!mbarrier_try_wait_parity(bar, 0)) {
  }
  float d[64];
  wgmma_fence();
  wgmma_m64n128k16_ss_mn_f16(d, make_smem_desc(smem_addr(smem), Swizzle::k128B, 8192, 1024),
                             make_smem_desc(smem_addr(smem + 2048), Swizzle::k32B, 512, 256), 0);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  for (int i = 0; i < 64; ++i) out[t * 64 + i] = d[i];
}
}  // namespace

TEST_CASE("sm90 emu: wgmma SS with both operands MN-major (transposed), every swizzle, LBO and SBO", "[sm90][emu]") {
  // Hand-computed byte addresses of the canonical MN-major layouts.
  CHECK(mnmajor_addr(Swizzle::k128B, 0, 8192, 1024, 70, 9) == 9372);  // 8192 + 1024 + 128 + 12, chunk 0 ^ 1
  CHECK(mnmajor_addr(Swizzle::k128B, 0, 8192, 1024, 0, 0) == 0);
  CHECK(mnmajor_addr(Swizzle::k32B, 0, 2048, 256, 20, 11) == 2408);    // 2048 + 256 + 96 + 8, bit 7 clear
  CHECK(mnmajor_addr(Swizzle::k32B, 0, 2048, 256, 3, 4) == 150);       // 134, bit 4 ^= bit 7
  CHECK(mnmajor_addr(Swizzle::k64B, 0, 4096, 512, 40, 5) == 4464);     // 4432, chunk 1 ^ 2
  CHECK(mnmajor_addr(Swizzle::kNone, 0, 256, 128, 19, 10) == 550);     // 2 x 128 + 256 + 2 x 16 + 6

  std::mt19937 rng(7);
  std::uniform_int_distribution<int> u(-3, 3);
  std::vector<uint16_t> a(64 * 16), b(128 * 16);
  for (auto& v : a) v = f16_bits(static_cast<float>(u(rng)));
  for (auto& v : b) v = f16_bits(static_cast<float>(u(rng)));
  const SsLayout layouts[] = {
      {Swizzle::kNone, 0, 2048, 128, 16384, 4096, 128},     // 8 K-rows x 16 B core matrices
      {Swizzle::k128B, 0, 8192, 1024, 16384, 8192, 1024},   // 64 elements per K-row, B: 2 blocks LBO apart
      {Swizzle::k64B, 0, 4096, 512, 16384, 4096, 512},
      {Swizzle::k32B, 0, 2048, 256, 16384, 512, 256},
  };
  std::vector<float> out(128 * 64);
  for (const SsLayout& l : layouts) {
    INFO("swizzle " << static_cast<int>(l.sw));
    emu::launch_cluster(wgmma_ss_kernel, dim3(1), dim3(128), 1, 32768 + 1024, l, a.data(), b.data(), out.data(), 1,
                        1);
    require_d_exact(out, [&](int i, int n, int k) { return f16_product(a, b, i, n, k); });
  }

  // TMA boxes of row-major G [16 x 64] and X [16 x 128] read transposed: D[i][n] = sum_k G[k][i] X[k][n].
  Tensor2d g(64, 16, 64), x(128, 16, 128);
  for (auto& v : g.data) v = f16_bits(static_cast<float>(u(rng)));
  for (auto& v : x.data) v = f16_bits(static_cast<float>(u(rng)));
  const CUtensorMap gmap = g.map(64, 16, Swizzle::k128B), xmap = x.map(16, 16, Swizzle::k32B);
  emu::launch_cluster(wgmma_ss_mn_tma_kernel, dim3(1), dim3(128), 1, 8192 + 64, &gmap, &xmap, out.data());
  require_d_exact(out, [&](int i, int n, int k) {
    return static_cast<double>(__half2float(__ushort_as_half(g.at(i, k)))) * __half2float(__ushort_as_half(x.at(n, k)));
  });
}

namespace {
// m64n64k16 with A (64 x 16) K-major and B (16 x 64) MN-major (imm-trans-b only): grad_input's form
// (tw_gi_sm90_kernels.cuh), gy's rows against V_t's rows of positions. D is 32 per thread.
__global__ void wgmma_ss_tb_kernel(SsLayout l, const uint16_t* a, const uint16_t* b, float* out) {
  unsigned char* smem = dynamic_smem();
  const int t = threadIdx.x;
  for (int idx = t; idx < 64 * 16; idx += 128) {
    std::memcpy(smem + kmajor_addr(l.sw, l.start_a, l.lbo_a, l.sbo_a, idx / 16, idx % 16), &a[idx], 2);
    std::memcpy(smem + mnmajor_addr(l.sw, l.start_b, l.lbo_b, l.sbo_b, idx / 16, idx % 16), &b[idx], 2);
  }
  fence_proxy_async_shared();
  __syncthreads();
  float d[32];
  wgmma_fence();
  wgmma_m64n64k16_ss_tb_f16(d, make_smem_desc(l.start_a, l.sw, l.lbo_a, l.sbo_a),
                            make_smem_desc(l.start_b, l.sw, l.lbo_b, l.sbo_b), 0);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  for (int i = 0; i < 32; ++i) out[t * 32 + i] = d[i];
}

// The same from TMA boxes, as the kernel loads them: G [64 rows x 64 outputs] row-major by one box {64, 64}
// (128B swizzle, K-major: A is rows x outputs 16 k4 .. + 15) and V [32 outputs x 64 positions] by one box
// {64, 32} (128B swizzle, MN-major: B is outputs 16 k4 .. x positions); D = G[:, k-step] V[k-step, :].
__global__ void wgmma_ss_tb_tma_kernel(const CUtensorMap* gmap, const CUtensorMap* vmap, int k4, float* out) {
  unsigned char* smem = dynamic_smem();
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + 12288);
  const int t = threadIdx.x;
  if (t == 0) {
    mbarrier_init(bar, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (t == 0) {
    mbarrier_arrive_expect_tx(bar, 8192 + 4096);
    tma_load_2d(smem, gmap, bar, 0, 0);
    tma_load_2d(smem + 8192, vmap, bar, 0, 0);
  }
  while (!mbarrier_try_wait_parity(bar, 0)) {
  }
  float d[32];
  wgmma_fence();
  wgmma_m64n64k16_ss_tb_f16(d, make_smem_desc(smem_addr(smem) + 32 * k4, Swizzle::k128B, 16, 1024),
                            make_smem_desc(smem_addr(smem + 8192) + 2048 * k4, Swizzle::k128B, 8192, 1024), 0);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  for (int i = 0; i < 32; ++i) out[t * 32 + i] = d[i];
}

// out (128 threads x 32 accumulators of an m64n64 D) equals sum_k ab(i, n, k) exactly.
template <typename Ab>
void require_d64_exact(const std::vector<float>& out, Ab&& ab) {
  for (int t = 0; t < 128; ++t)
    for (int j = 0; j < 8; ++j)
      for (int e = 0; e < 4; ++e) {
        const int i = d_row(t, e), n = d_col(t, j, e);
        double ref = 0;
        for (int k = 0; k < 16; ++k) ref += ab(i, n, k);
        REQUIRE(out[t * 32 + 4 * j + e] == static_cast<float>(ref));
      }
}
}  // namespace

TEST_CASE("sm90 emu: wgmma m64n64k16 SS, A K-major and B MN-major (imm-trans-b), every swizzle; from TMA boxes",
          "[sm90][emu]") {
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> u(-3, 3);
  std::vector<uint16_t> a(64 * 16), b(64 * 16);  // a[i * 16 + k], b[n * 16 + k]
  for (auto& v : a) v = f16_bits(static_cast<float>(u(rng)));
  for (auto& v : b) v = f16_bits(static_cast<float>(u(rng)));
  const SsLayout layouts[] = {
      {Swizzle::kNone, 0, 1024, 128, 16384, 2048, 128},
      {Swizzle::k128B, 32, 16, 1024, 16384, 8192, 1024},  // B: 64 positions = one 128-byte span (LBO unused)
      {Swizzle::k64B, 32, 16, 1024, 16384, 4096, 512},
      {Swizzle::k32B, 0, 16, 512, 16384, 2048, 256},
  };
  std::vector<float> out(128 * 32);
  for (const SsLayout& l : layouts) {
    INFO("swizzle " << static_cast<int>(l.sw));
    emu::launch_cluster(wgmma_ss_tb_kernel, dim3(1), dim3(128), 1, 32768 + 1024, l, a.data(), b.data(), out.data());
    require_d64_exact(out, [&](int i, int n, int k) {
      return static_cast<double>(__half2float(__ushort_as_half(a[i * 16 + k]))) * __half2float(__ushort_as_half(b[n * 16 + k]));
    });
  }
  // the kernel's form: TMA boxes of a row-major G [rows, outputs] and V [outputs, positions], each k16 step
  Tensor2d g(64, 64, 64), v(64, 32, 64);  // (dim0, dim1, row stride): G 64 outputs x 64 rows, V 64 positions x 32
  for (auto& x : g.data) x = f16_bits(static_cast<float>(u(rng)));
  for (auto& x : v.data) x = f16_bits(static_cast<float>(u(rng)));
  const CUtensorMap gmap = g.map(64, 64, Swizzle::k128B), vmap = v.map(64, 32, Swizzle::k128B);
  for (int k4 = 0; k4 < 2; ++k4) {
    INFO("k step " << k4);
    emu::launch_cluster(wgmma_ss_tb_tma_kernel, dim3(1), dim3(128), 1, 12288 + 64, &gmap, &vmap, k4, out.data());
    require_d64_exact(out, [&](int i, int n, int k) {
      return static_cast<double>(__half2float(__ushort_as_half(g.at(16 * k4 + k, i)))) *
             __half2float(__ushort_as_half(v.at(n, 16 * k4 + k)));
    });
  }
}

TEST_CASE("sm90 emu: fence.proxy.async: generic writes reach wgmma only after the fence", "[sm90][emu]") {
  std::vector<uint16_t> a(64 * 16, f16_bits(1.0f)), b(128 * 16, f16_bits(1.0f));
  const SsLayout l{Swizzle::kNone, 0, 1024, 128, 16384, 2048, 128};
  std::vector<float> out(128 * 64);
  emu::launch_cluster(wgmma_ss_kernel, dim3(1), dim3(128), 1, 32768 + 64, l, a.data(), b.data(), out.data(), 0, 0);
  for (float v : out) REQUIRE(std::isnan(v));  // the async proxy still sees the 0xff garbage (f16 NaN)
  emu::launch_cluster(wgmma_ss_kernel, dim3(1), dim3(128), 1, 32768 + 64, l, a.data(), b.data(), out.data(), 1, 0);
  for (float v : out) REQUIRE(v == 16.0f);
}

// ---------------------------------------------------------------------------
// setmaxnreg, named barriers
// ---------------------------------------------------------------------------
namespace {
__global__ void setmaxnreg_kernel(int mode) {
  const int wg = threadIdx.x / 128;
  if (mode == 0) {  // the sm90 kernel's split: 40 + 2 x 232 = 504 <= 512 per thread
    if (wg == 0) setmaxnreg_dec<40>();
    else setmaxnreg_inc<232>();
  } else if (mode == 1) {
    if (wg == 0) setmaxnreg_dec<20>();  // < 24
    else setmaxnreg_inc<232>();
  } else if (mode == 2) {
    if (wg == 0) setmaxnreg_dec<100>();  // not a multiple of 8
    else setmaxnreg_inc<232>();
  } else {
    setmaxnreg_inc<256>();  // 3 x 256 x 128 > 65536 registers
  }
}

__global__ void named_barrier_kernel(int* out, int mode) {
  int* s = reinterpret_cast<int*>(dynamic_smem());
  const int t = threadIdx.x, half = t / 64;
  if (mode == 1) named_barrier_sync(0, 64);
  if (mode == 2) named_barrier_sync(1, 48);
  s[t] = 10 * t;
  named_barrier_sync(1 + half, 64);  // each half of the block on its own barrier
  out[t] = s[64 * half + (t + 32) % 64];
}
}  // namespace

TEST_CASE("sm90 emu: setmaxnreg checks, named barriers", "[sm90][emu]") {
  emu::launch_cluster(setmaxnreg_kernel, dim3(1), dim3(384), 1, 0, 0);
  CHECK_THROWS_WITH(emu::launch_cluster(setmaxnreg_kernel, dim3(1), dim3(384), 1, 0, 1),
                    Catch::Contains("multiple of 8 in [24, 256]"));
  CHECK_THROWS_WITH(emu::launch_cluster(setmaxnreg_kernel, dim3(1), dim3(384), 1, 0, 2),
                    Catch::Contains("multiple of 8 in [24, 256]"));
  CHECK_THROWS_WITH(emu::launch_cluster(setmaxnreg_kernel, dim3(1), dim3(384), 1, 0, 3), Catch::Contains("exceed"));
  CHECK_THROWS_WITH(emu::launch_cluster(setmaxnreg_kernel, dim3(1), dim3(96), 1, 0, 3), Catch::Contains("incomplete"));

  std::vector<int> out(128, -1);
  const emu::Stats before = emu::stats();
  emu::launch_cluster(named_barrier_kernel, dim3(1), dim3(128), 1, 512, out.data(), 0);
  CHECK(emu::stats().named_barriers - before.named_barriers == 2);
  for (int t = 0; t < 128; ++t) CHECK(out[t] == 10 * (64 * (t / 64) + (t + 32) % 64));
  CHECK_THROWS_WITH(emu::launch_cluster(named_barrier_kernel, dim3(1), dim3(128), 1, 512, out.data(), 1),
                    Catch::Contains("not in 1..15"));
  CHECK_THROWS_WITH(emu::launch_cluster(named_barrier_kernel, dim3(1), dim3(128), 1, 512, out.data(), 2),
                    Catch::Contains("multiple of 32"));
}

// ---------------------------------------------------------------------------
// The adversarial schedule sees a missing wait
// ---------------------------------------------------------------------------
namespace {
enum RingVariant { kRingCorrect = 0, kRingNoFullWait = 1, kRingNoEmptyWait = 2 };
constexpr int kRingChunks = 8;

// A two-stage ring: warp 0 lane 0 loads chunk c (4 rows x 16) into stage
// c % 2 by TMA (full[s]: count 1 + tx); warp 1 waits full[s], each lane sums
// two elements, lane 0 releases the stage (empty[s]: count 1).
__global__ void ring_kernel(const CUtensorMap* map, int* out, int variant) {
  uint64_t* full = bar_at(0);
  uint64_t* empty = bar_at(16);
  unsigned char* stages = dynamic_smem() + 1024;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < 2; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 1);
    }
    fence_mbarrier_init();
  }
  __syncthreads();
  if (warp == 0) {
    if (lane == 0)
      for (int c = 0; c < kRingChunks; ++c) {
        const int s = c % 2;
        const uint32_t phase = (c / 2) & 1;
        if (variant != kRingNoEmptyWait) mbarrier_wait_parity(&empty[s], phase ^ 1);
        mbarrier_arrive_expect_tx(&full[s], 128);
        tma_load_2d(stages + 128 * s, map, &full[s], 0, 4 * c);
      }
  } else {
    int sum = 0;
    for (int c = 0; c < kRingChunks; ++c) {
      const int s = c % 2;
      if (variant != kRingNoFullWait) mbarrier_wait_parity(&full[s], (c / 2) & 1);
      const uint16_t* v = reinterpret_cast<const uint16_t*>(stages + 128 * s);
      sum += v[lane] + v[lane + 32];
      __syncwarp();
      if (lane == 0) mbarrier_arrive(&empty[s]);
    }
    out[lane] = sum;
  }
}

// Runs the ring under schedule seed `seed`: true if the result is right.
bool ring_correct(int variant, uint64_t seed, const Tensor2d& t, std::string* why) {
  const CUtensorMap map = t.map(16, 4, Swizzle::kNone);
  std::vector<int> out(32, -1);
  emu::set_schedule_seed(seed);
  bool ok = true;
  try {
    emu::launch_cluster(ring_kernel, dim3(1), dim3(64), 1, 1024 + 256, &map, out.data(), variant);
    for (int lane = 0; lane < 32; ++lane) {
      int want = 0;
      for (int c = 0; c < kRingChunks; ++c)
        want += t.at(lane % 16, 4 * c + lane / 16) + t.at(lane % 16, 4 * c + 2 + lane / 16);
      if (out[lane] != want) ok = false;
    }
    if (!ok) *why = "wrong result";
  } catch (const emu::Error& e) {
    ok = false;
    *why = e.what();
  }
  emu::set_schedule_seed(0);
  return ok;
}
}  // namespace

TEST_CASE("sm90 emu: the adversarial schedule catches a missing mbarrier wait", "[sm90][emu][proof]") {
  const Tensor2d t(16, 4 * kRingChunks, 16);
  std::string why;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    const bool ok = ring_correct(kRingCorrect, seed, t, &why);
    INFO("seed " << seed << ": " << why);
    CHECK(ok);
  }
  for (int variant : {int(kRingNoFullWait), int(kRingNoEmptyWait)}) {
    int failed = 0;
    for (uint64_t seed = 1; seed <= 8; ++seed) failed += !ring_correct(variant, seed, t, &why);
    INFO("variant " << variant << " (1: consumer's full wait removed, 2: producer's empty wait removed), last: " << why);
    CHECK(failed >= 1);
  }
}

TEST_CASE("sm90 emu: the instructions work under emu::launch too (a cluster of one)", "[sm90][emu]") {
  Tensor2d t(32, 4, 32);
  const CUtensorMap map = t.map(32, 1, Swizzle::kNone);
  std::vector<int> out(12, -1);
  emu::launch(mbarrier_phase_kernel, dim3(1), dim3(1), 4096, out.data(), &map);
  CHECK(out[4] == 1);
  CHECK(out[9] == 1);
  CHECK(out[10] == 101);
  std::vector<uint32_t> words(4 * 2, 0);
  emu::launch(cluster_dsmem_kernel, dim3(2), dim3(32), 64, words.data());
  CHECK(words[4 + 0] == 0);  // rank 0 of a cluster of 1
  CHECK(words[4 + 1] == 1);
  CHECK(words[4 + 2] == 1007);
  CHECK(words[4 + 3] == 100);
}
