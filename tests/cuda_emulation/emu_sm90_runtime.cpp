// The sm_90a instructions of the host emulation (see emu_sm90.h), as the
// PTX ISA defines them: cluster ranks and distributed shared memory, mbarrier
// (arrivals, tx-count, phases), TMA tiled loads with swizzle and multicast,
// the async-proxy view of shared memory, wgmma m64n128k16 (register or
// descriptor A, descriptor B) with its commit / wait groups, setmaxnreg and
// the host tensor-map encoding. Scheduling is emu_runtime.cpp's.
#include "emu_cuda.h"

#include <cstdio>
#include <map>
#include <memory>
#include <sstream>
#include <vector>

namespace emu::detail {
namespace {

constexpr uint64_t kTensorMapMagic = 0x454d55544d415032ull;  // "EMUTMAP2"
constexpr unsigned char kGarbage = 0xff;
constexpr uint32_t kClusterAddrTag = 0x80000000u;  // mapa_shared: bit 31 set, rank in bits 24..30
constexpr int64_t kTxLimit = (int64_t(1) << 20) - 1;  // the tx-count range is +-(2^20 - 1)

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

struct Mbarrier {
  uint32_t expected = 0;  // arrivals per phase
  uint32_t pending = 0;   // arrivals still missing in the current phase
  int64_t tx = 0;         // tx-count of the current phase
  uint32_t phase = 0;     // phases completed
};

struct TmaLanding {  // one destination block of a TMA load in flight
  int cta;
  uint32_t dst_addr;  // shared address of the box's first byte
  uint32_t bar_addr;
  int swizzle;
  uint32_t row_bytes, rows;
  std::shared_ptr<const std::vector<unsigned char>> box;  // row-major, unswizzled
};

struct Wgmma {
  WgmmaType type;
  bool rs;  // A from registers
  bool mn_a, mn_b;  // imm-trans-a / imm-trans-b: the operand is MN-major (transposed)
  int n;            // the shape's N: 128 or 64 (D: n / 2 registers per thread)
  uint64_t desc_a, desc_b;
  int accumulate;
  float* d[128];
  const uint32_t* a[128];
};

struct WarpgroupMma {
  int arrivals = 0;  // threads in the collective being called
  Wgmma staging{};   // the wgmma being issued
  std::vector<Wgmma> open;                 // issued, not committed
  std::vector<std::vector<Wgmma>> groups;  // committed, oldest first
  // A wgmma.fence since the warpgroup's last wgmma.wait_group (or its start).
  // The ISA wants one before the first wgmma.mma_async and between any access
  // of its register operands (A, accumulators) and the wgmma that reads them;
  // register accesses are not visible here, so the emulation takes every wait
  // as followed by one (the kernels rewrite A or read D after each wait).
  bool fenced = false;
};

struct Cluster {
  int nctas = 0;
  size_t dyn_bytes = 0;
  std::vector<std::vector<unsigned char>> async_view;  // per block, created at first use
  std::map<std::pair<int, uint32_t>, Mbarrier> bars;   // (rank, shared address)
  std::vector<TmaLanding> tma;
  std::map<std::pair<int, int>, WarpgroupMma> mma;  // (rank, warpgroup)
  std::map<std::pair<int, int>, int> maxnreg;       // (rank, warpgroup) -> setmaxnreg N
  std::map<std::pair<int, int>, int> collective;    // (rank, warpgroup) -> arrivals at setmaxnreg / fence
  std::vector<bool> exited;  // per block: every thread exited (its shared memory is gone)
};

Cluster g;  // the running cluster (launches hold the launch mutex)

// ---- shared memory ---------------------------------------------------------
// Offset in the block's dynamic shared memory of the `bytes` at shared address
// `addr`; fails unless they lie inside it.
size_t dyn_offset(uint32_t addr, size_t bytes, const char* op, const char* what) {
  const uint32_t base = dynamic_smem_base();
  if (addr < base || addr - base > g.dyn_bytes || bytes > g.dyn_bytes - (addr - base))
    fail(std::string(op) + ": " + what + " at shared address " + hex(addr) + " (" + std::to_string(bytes) +
         " bytes) is outside the dynamic shared memory [" + hex(base) + ", +" + std::to_string(g.dyn_bytes) +
         ") (sm90 operands must be in dynamic shared memory)");
  return addr - base;
}

uint32_t addr_of(const void* p, const char* op, const char* what) {
  const ThreadPos t = current_thread(op);
  const unsigned char* dyn = cta_dynamic_smem(t.cta);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(dyn);
  if (a < lo || a - lo >= g.dyn_bytes) {
    std::ostringstream s;
    s << op << ": " << what << " " << p << " is not in this block's dynamic shared memory";
    fail(s.str());
  }
  return dynamic_smem_base() + static_cast<uint32_t>(a - lo);
}

std::vector<unsigned char>& async_view(int cta) {
  auto& v = g.async_view[static_cast<size_t>(cta)];
  if (v.empty() && g.dyn_bytes > 0) v.assign(g.dyn_bytes, kGarbage);  // what the async proxy saw: nothing written
  return v;
}

// The swizzle of TMA and wgmma on a shared address: the 16-byte chunk index
// (bits 4..) XOR the row within the 8-row atom (bits 7..).
uint32_t swizzle_addr(uint32_t addr, int swizzle) {
  switch (swizzle) {
    case 1: return addr ^ (((addr >> 7) & 7u) << 4);  // 128B
    case 2: return addr ^ (((addr >> 7) & 3u) << 4);  // 64B
    case 3: return addr ^ (((addr >> 7) & 1u) << 4);  // 32B
    default: return addr;
  }
}
uint32_t swizzle_span(int swizzle) { return swizzle == 1 ? 128 : swizzle == 2 ? 64 : swizzle == 3 ? 32 : 0; }
uint32_t swizzle_atom(int swizzle) { return swizzle == 0 ? 128 : 8 * swizzle_span(swizzle); }

// ---- mbarrier ----------------------------------------------------------------
std::string describe(const std::pair<int, uint32_t>& key, const Mbarrier& b) {
  return "mbarrier at shared " + hex(key.second) + " of block rank " + std::to_string(key.first) + " (phase " +
         std::to_string(b.phase) + ", " + std::to_string(b.pending) + " of " + std::to_string(b.expected) +
         " arrivals pending, tx-count " + std::to_string(b.tx) + ")";
}

// Shared memory of a block that has exited is gone (the ISA leaves accesses
// to it undefined): a peer's arrival, multicast or DSMEM access fails here.
void require_live(int cta, const char* op) {
  if (cta >= 0 && static_cast<size_t>(cta) < g.exited.size() && g.exited[static_cast<size_t>(cta)])
    fail(std::string(op) + ": block rank " + std::to_string(cta) +
         " of the cluster has exited; its shared memory is gone (a cluster barrier before exit keeps peers from "
         "reaching it)");
}

uint32_t bar_addr(const uint64_t* bar, const char* op) {
  const uint32_t a = addr_of(bar, op, "mbarrier");
  if (a % 8 != 0) fail(std::string(op) + ": mbarrier at shared " + hex(a) + " is not 8-byte aligned");
  (void)dyn_offset(a, 8, op, "mbarrier");
  return a;
}

Mbarrier& bar_at(int cta, uint32_t addr, const char* op) {
  auto it = g.bars.find({cta, addr});
  if (it == g.bars.end())
    fail(std::string(op) + ": the mbarrier at shared " + hex(addr) + " of block rank " + std::to_string(cta) +
         " is not initialised (mbarrier_init)");
  return it->second;
}

// The phase completes when every arrival came and the tx-count is back to 0.
void try_complete(Mbarrier& b) {
  if (b.pending != 0 || b.tx != 0) return;
  ++b.phase;
  b.pending = b.expected;
  wake(&b);
}

void add_tx(const std::pair<int, uint32_t>& key, Mbarrier& b, int64_t delta, const char* op) {
  b.tx += delta;
  if (b.tx > kTxLimit || b.tx < -kTxLimit)
    fail(std::string(op) + ": tx-count " + std::to_string(b.tx) + " out of range on " + describe(key, b));
}

void arrive_at(int cta, uint32_t addr, const char* op) {
  require_live(cta, op);
  const std::pair<int, uint32_t> key{cta, addr};
  Mbarrier& b = bar_at(cta, addr, op);
  if (b.pending == 0)
    fail(std::string(op) + ": more arrivals than pending in this phase on " + describe(key, b));
  --b.pending;
  ++stats().mbarrier_ops;
  try_complete(b);
}

// ---- wgmma -------------------------------------------------------------------
struct Descriptor {
  uint32_t start, lbo, sbo;
  int swizzle;
};

Descriptor decode(uint64_t desc, const char* op) {
  const int base_offset = static_cast<int>((desc >> 49) & 7);
  if (base_offset != 0) fail(std::string(op) + ": descriptor base offset " + std::to_string(base_offset) + " is not emulated");
  return Descriptor{static_cast<uint32_t>(desc & 0x3FFF) << 4, static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4,
                    static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4, static_cast<int>(desc >> 62)};
}

// Shared address of element (row i, k) of a K-major 16-bit operand, in the
// canonical layouts of the PTX ISA: 8-row core matrices; without swizzle each
// core matrix is 8 rows x 16 bytes (LBO apart along K, SBO apart along the
// rows); with a T-byte swizzle each row of an 8-row atom holds T bytes of K
// (SBO apart per 8 rows) and the swizzle XOR applies to the address.
uint32_t operand_addr(const Descriptor& d, int i, int k) {
  const uint32_t kbyte = 2u * static_cast<uint32_t>(k), row = static_cast<uint32_t>(i);
  if (d.swizzle == 0) return d.start + (row / 8) * d.sbo + (kbyte / 16) * d.lbo + (row % 8) * 16 + kbyte % 16;
  const uint32_t t = swizzle_span(d.swizzle);
  return swizzle_addr(d.start + (row / 8) * d.sbo + (row % 8) * t + kbyte, d.swizzle);
}

// The same for an MN-major (transposed) operand, element (i along M or N, k):
// the rows of the layout run along K and hold consecutive i. Without swizzle
// a core matrix is 8 K-rows x 16 bytes (8 consecutive i), SBO apart along
// i and LBO apart per 8 K-rows; with a T-byte swizzle each K-row of an 8-row
// atom holds T bytes of i, the next T bytes of i are LBO further and the
// next 8 K-rows SBO further (the roles of LBO and SBO swap against the
// unswizzled form), and the swizzle XOR applies to the address.
uint32_t operand_addr_mn(const Descriptor& d, int i, int k) {
  const uint32_t ibyte = 2u * static_cast<uint32_t>(i), kr = static_cast<uint32_t>(k);
  if (d.swizzle == 0) return d.start + (ibyte / 16) * d.sbo + (kr / 8) * d.lbo + (kr % 8) * 16 + ibyte % 16;
  const uint32_t t = swizzle_span(d.swizzle);
  return swizzle_addr(d.start + (ibyte / t) * d.lbo + (kr / 8) * d.sbo + (kr % 8) * t + ibyte % t, d.swizzle);
}

double to_double(uint16_t bits, WgmmaType type) {
  return type == WgmmaType::f16 ? f16_to_f32(bits) : bf16_to_f32(bits);
}

// Reads `rows` x 16 of a K-major (or MN-major) operand from the block's async view.
void read_operand(int cta, uint64_t desc, int rows, bool mn_major, WgmmaType type, double (*out)[16], const char* op) {
  const Descriptor d = decode(desc, op);
  const std::vector<unsigned char>& view = async_view(cta);
  for (int i = 0; i < rows; ++i)
    for (int k = 0; k < 16; ++k) {
      const size_t off = dyn_offset(mn_major ? operand_addr_mn(d, i, k) : operand_addr(d, i, k), 2, op,
                                    "descriptor operand");
      uint16_t bits;
      std::memcpy(&bits, view.data() + off, 2);
      out[i][k] = to_double(bits, type);
    }
}

// One wgmma at its completion: A (registers through the issue-time pointers,
// or shared memory) and B read now, D = A B (+ D), exact products summed in
// double and rounded to fp32 once.
void complete_wgmma(int cta, const Wgmma& w, const char* op) {
  double A[64][16], B[128][16];
  if (w.rs) {
    for (int t = 0; t < 128; ++t) {
      const int warp = t / 32, lane = t % 32, g4 = lane / 4, t4 = lane % 4;
      for (int r = 0; r < 4; ++r) {  // a[r] = (16 warp + g + 8 (r & 1), 2 t + 8 (r >> 1) + {0, 1})
        const uint32_t v = w.a[t][r];
        const int row = 16 * warp + g4 + 8 * (r & 1), col = 2 * t4 + 8 * (r >> 1);
        A[row][col] = to_double(static_cast<uint16_t>(v & 0xffffu), w.type);
        A[row][col + 1] = to_double(static_cast<uint16_t>(v >> 16), w.type);
      }
    }
  } else {
    read_operand(cta, w.desc_a, 64, w.mn_a, w.type, A, op);
  }
  read_operand(cta, w.desc_b, w.n, w.mn_b, w.type, B, op);
  for (int t = 0; t < 128; ++t) {
    const int warp = t / 32, lane = t % 32, g4 = lane / 4, t4 = lane % 4;
    for (int j = 0; j < w.n / 8; ++j)
      for (int e = 0; e < 4; ++e) {  // d[4j + e] = (16 warp + g + 8 (e >> 1), 8 j + 2 t + (e & 1))
        const int row = 16 * warp + g4 + 8 * (e >> 1), col = 8 * j + 2 * t4 + (e & 1);
        float& out = w.d[t][4 * j + e];
        double s = w.accumulate ? static_cast<double>(out) : 0.0;
        for (int k = 0; k < 16; ++k) s += A[row][k] * B[col][k];
        out = static_cast<float>(s);
      }
  }
}

WarpgroupMma& warpgroup_mma(const ThreadPos& t) { return g.mma[{t.cta, t.linear / 128}]; }

// The last of the warpgroup's 128 threads to call a collective runs `last`
// (all have called it by then), then the barrier releases them all.
template <typename F>
void warpgroup_collective(const char* op, F&& last) {
  const ThreadPos t = current_thread(op);
  int& arrivals = g.collective[{t.cta, t.linear / 128}];
  if (++arrivals == 128) {
    arrivals = 0;
    last();
  }
  warpgroup_sync(op);
}

}  // namespace

// ---- hooks of the scheduler ---------------------------------------------------
namespace sm90_async {
void begin_cluster(int nctas, size_t dynamic_smem_bytes) {
  g = Cluster{};
  g.nctas = nctas;
  g.dyn_bytes = dynamic_smem_bytes;
  g.async_view.resize(static_cast<size_t>(nctas));
  g.exited.assign(static_cast<size_t>(nctas), false);
}

void cta_exited(int cta) {
  if (cta >= 0 && static_cast<size_t>(cta) < g.exited.size()) g.exited[static_cast<size_t>(cta)] = true;
}

bool pending() { return !g.tma.empty(); }

void deliver_one() {
  const size_t i = static_cast<size_t>(schedule_random() % g.tma.size());
  const TmaLanding t = g.tma[i];
  g.tma[i] = g.tma.back();
  g.tma.pop_back();
  const char* op = "tma_load_2d (landing)";
  require_live(t.cta, op);
  unsigned char* generic = cta_dynamic_smem(t.cta);
  std::vector<unsigned char>& async = async_view(t.cta);
  for (uint32_t r = 0; r < t.rows; ++r)
    for (uint32_t c = 0; c < t.row_bytes; c += 16) {  // the swizzle moves whole 16-byte chunks
      const uint32_t addr = swizzle_addr(t.dst_addr + r * t.row_bytes + c, t.swizzle);
      const size_t off = dyn_offset(addr, 16, op, "destination");
      std::memcpy(generic + off, t.box->data() + r * t.row_bytes + c, 16);
      std::memcpy(async.data() + off, t.box->data() + r * t.row_bytes + c, 16);
    }
  const std::pair<int, uint32_t> key{t.cta, t.bar_addr};
  Mbarrier& b = bar_at(t.cta, t.bar_addr, op);
  add_tx(key, b, -static_cast<int64_t>(t.rows * t.row_bytes), op);  // complete_tx
  try_complete(b);
}

std::string describe_wait(const void* key) {
  for (const auto& b : g.bars)
    if (&b.second == key) return "the " + describe(b.first, b.second);
  return "an mbarrier";
}

void end_cluster() {
  if (!g.tma.empty())
    fail(std::to_string(g.tma.size()) + " TMA loads still in flight when every thread of the cluster had exited");
  for (const auto& m : g.mma)
    if (!m.second.open.empty() || !m.second.groups.empty())
      fail("block rank " + std::to_string(m.first.first) + " warpgroup " + std::to_string(m.first.second) +
           " exited with wgmma operations not waited for (wgmma_wait_group<0>)");
  g = Cluster{};
}
}  // namespace sm90_async

// ---- clusters and distributed shared memory -----------------------------------
uint32_t cluster_ctarank() { return static_cast<uint32_t>(current_thread("cluster_ctarank").cta); }

void sm90_cluster_arrive() {
  yield_point();
  cluster_arrive();
}
void sm90_cluster_wait() {
  yield_point();
  cluster_wait();
}

uint32_t mapa_shared(uint32_t cta_addr, uint32_t cta_rank) {
  yield_point();
  if (cta_rank >= static_cast<uint32_t>(g.nctas))
    fail("mapa_shared: rank " + std::to_string(cta_rank) + " is not in the cluster of " + std::to_string(g.nctas));
  if ((cta_addr & kClusterAddrTag) != 0) fail("mapa_shared: " + hex(cta_addr) + " is already a shared::cluster address");
  (void)dyn_offset(cta_addr, 1, "mapa_shared", "address");
  return kClusterAddrTag | (cta_rank << 24) | cta_addr;
}

namespace {
// The block and offset of a shared::cluster address (a shared::cta address
// is one of the calling block).
std::pair<int, size_t> cluster_target(uint32_t caddr, const char* op) {
  const int own = current_thread(op).cta;
  const int rank = (caddr & kClusterAddrTag) != 0 ? static_cast<int>((caddr >> 24) & 0x7f) : own;
  const uint32_t addr = caddr & 0x00ffffffu;
  if (rank >= g.nctas) fail(std::string(op) + ": rank " + std::to_string(rank) + " is not in the cluster");
  if (addr % 4 != 0) fail(std::string(op) + ": address " + hex(caddr) + " is not 4-byte aligned");
  require_live(rank, op);
  return {rank, dyn_offset(addr, 4, op, "address")};
}
}  // namespace

uint32_t ld_shared_cluster_u32(uint32_t cluster_addr) {
  yield_point();
  const auto t = cluster_target(cluster_addr, "ld_shared_cluster_u32");
  uint32_t v;
  std::memcpy(&v, cta_dynamic_smem(t.first) + t.second, 4);
  return v;
}

void st_shared_cluster_u32(uint32_t cluster_addr, uint32_t value) {
  yield_point();
  const auto t = cluster_target(cluster_addr, "st_shared_cluster_u32");
  std::memcpy(cta_dynamic_smem(t.first) + t.second, &value, 4);
}

void sm90_named_barrier_sync(uint32_t id, uint32_t nthreads) {
  yield_point();
  named_barrier(id, nthreads);
}

// ---- mbarrier -----------------------------------------------------------------
void mbarrier_init(uint64_t* bar, uint32_t count) {
  yield_point();
  const uint32_t a = bar_addr(bar, "mbarrier_init");
  if (count < 1 || count > static_cast<uint32_t>(kTxLimit))
    fail("mbarrier_init: count " + std::to_string(count) + " is not in [1, 2^20 - 1]");
  Mbarrier& b = g.bars[{current_thread("mbarrier_init").cta, a}];
  b = Mbarrier{count, count, 0, 0};
  std::memset(bar, 0, 8);  // the object's bits are opaque; the state lives here
  ++stats().mbarrier_ops;
}

void fence_mbarrier_init() { yield_point(); }

void mbarrier_arrive(uint64_t* bar, uint32_t tx_bytes, bool expect_tx) {
  yield_point();
  const char* op = expect_tx ? "mbarrier_arrive_expect_tx" : "mbarrier_arrive";
  const uint32_t a = bar_addr(bar, op);
  const int cta = current_thread(op).cta;
  if (expect_tx) {
    const std::pair<int, uint32_t> key{cta, a};
    add_tx(key, bar_at(cta, a, op), static_cast<int64_t>(tx_bytes), op);
  }
  arrive_at(cta, a, op);
}

void mbarrier_arrive_cluster(uint64_t* bar, uint32_t cta_rank) {
  yield_point();
  const char* op = "mbarrier_arrive_cluster";
  const uint32_t a = bar_addr(bar, op);
  if (cta_rank >= static_cast<uint32_t>(g.nctas))
    fail(std::string(op) + ": rank " + std::to_string(cta_rank) + " is not in the cluster of " + std::to_string(g.nctas));
  arrive_at(static_cast<int>(cta_rank), a, op);
}

bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
  yield_point(false);
  const char* op = "mbarrier_try_wait_parity";
  const uint32_t a = bar_addr(bar, op);
  const int cta = current_thread(op).cta;
  Mbarrier& b = bar_at(cta, a, op);
  ++stats().mbarrier_ops;
  if ((b.phase & 1u) != (parity & 1u)) return true;  // the phase of this parity has completed
  park(&b);  // no string built here: a deadlock abandons this frame
  return false;  // woken by the phase's completion (the next try succeeds) or timed out
}

// ---- TMA --------------------------------------------------------------------
void prefetch_tensormap(const CUtensorMap* map) {
  yield_point();
  if (reinterpret_cast<uintptr_t>(map) % 64 != 0) fail("prefetch_tensormap: the tensor map is not 64-byte aligned");
  if (map->emu_magic != kTensorMapMagic) fail("prefetch_tensormap: the tensor map was not encoded (encode_tensor_map_2d)");
}

void tma_load_2d(void* smem_dst, const CUtensorMap* map, uint64_t* bar, uint32_t cta_mask, bool multicast, int32_t c0,
                 int32_t c1) {
  yield_point();
  const char* op = multicast ? "tma_load_2d_multicast" : "tma_load_2d";
  if (reinterpret_cast<uintptr_t>(map) % 64 != 0) fail(std::string(op) + ": the tensor map is not 64-byte aligned");
  if (map->emu_magic != kTensorMapMagic) fail(std::string(op) + ": the tensor map was not encoded (encode_tensor_map_2d)");
  const ThreadPos t = current_thread(op);
  const uint32_t dst = addr_of(smem_dst, op, "destination");
  const uint32_t atom = swizzle_atom(map->swizzle);
  if (dst % atom != 0)
    fail(std::string(op) + ": destination at shared " + hex(dst) + " is not aligned to the swizzle atom (" +
         std::to_string(atom) + " bytes)");
  const uint32_t row_bytes = 2 * map->box0, rows = map->box1;
  (void)dyn_offset(dst, static_cast<size_t>(row_bytes) * rows, op, "destination box");
  const uint32_t bar_sh = bar_addr(bar, op);
  (void)bar_at(t.cta, bar_sh, op);
  if (multicast && (cta_mask == 0 || cta_mask >> g.nctas != 0))
    fail(std::string(op) + ": cta_mask " + hex(cta_mask) + " names no block or blocks outside the cluster of " +
         std::to_string(g.nctas));
  // Read the box now (out-of-bounds elements are zero).
  auto box = std::make_shared<std::vector<unsigned char>>(static_cast<size_t>(row_bytes) * rows, 0);
  const unsigned char* base = static_cast<const unsigned char*>(map->base);
  for (uint32_t r = 0; r < rows; ++r) {
    const int64_t y = static_cast<int64_t>(c1) + r;
    if (y < 0 || y >= static_cast<int64_t>(map->dim1)) continue;
    for (uint32_t e = 0; e < map->box0; ++e) {
      const int64_t x = static_cast<int64_t>(c0) + e;
      if (x < 0 || x >= static_cast<int64_t>(map->dim0)) continue;
      std::memcpy(box->data() + r * row_bytes + 2 * e, base + y * map->row_stride_bytes + 2 * x, 2);
    }
  }
  const uint32_t mask = multicast ? cta_mask : 1u << t.cta;
  for (int r = 0; r < g.nctas; ++r)
    if ((mask >> r) & 1u) require_live(r, op);
  for (int r = 0; r < g.nctas; ++r)
    if ((mask >> r) & 1u) g.tma.push_back(TmaLanding{r, dst, bar_sh, map->swizzle, row_bytes, rows, box});
  ++stats().tma_loads;
  stats().tma_multicast += multicast;
  stats().tma_bytes += box->size();
}

// ---- proxies and registers -------------------------------------------------------
void fence_proxy_async_shared() {
  yield_point();
  const int cta = current_thread("fence_proxy_async_shared").cta;
  std::vector<unsigned char>& async = async_view(cta);
  if (!async.empty()) std::memcpy(async.data(), cta_dynamic_smem(cta), g.dyn_bytes);
  ++stats().proxy_fences;
}

void setmaxnreg(int n, bool inc) {
  const char* op = inc ? "setmaxnreg_inc" : "setmaxnreg_dec";
  if (n % 8 != 0 || n < 24 || n > 256)
    fail(std::string(op) + ": N = " + std::to_string(n) + " must be a multiple of 8 in [24, 256]");
  const ThreadPos t = current_thread(op);
  warpgroup_collective(op, [&] {
    g.maxnreg[{t.cta, t.linear / 128}] = n;
    // Once every warpgroup has set its count, the block's registers must fit the 64K register file.
    const int nwg = block_threads() / 128;
    int sum = 0, set = 0;
    for (int w = 0; w < nwg; ++w) {
      auto it = g.maxnreg.find({t.cta, w});
      if (it != g.maxnreg.end()) sum += it->second, ++set;
    }
    if (set == nwg && sum * 128 > 65536)
      fail(std::string(op) + ": the warpgroups' register counts (sum " + std::to_string(sum) +
           " per thread of a warpgroup) exceed the 65536 registers of the SM");
  });
}

// ---- wgmma ------------------------------------------------------------------------
void wgmma_fence() {
  const ThreadPos t = current_thread("wgmma_fence");
  warpgroup_collective("wgmma_fence", [&] {
    warpgroup_mma(t).fenced = true;
    ++stats().wgmma_fences;
  });
}

void wgmma_commit_group() {
  const ThreadPos t = current_thread("wgmma_commit_group");
  warpgroup_collective("wgmma_commit_group", [&] {
    WarpgroupMma& m = warpgroup_mma(t);
    m.groups.push_back(std::move(m.open));
    m.open.clear();
  });
}

void wgmma_wait_group(int n) {
  const ThreadPos t = current_thread("wgmma_wait_group");
  warpgroup_collective("wgmma_wait_group", [&] {
    WarpgroupMma& m = warpgroup_mma(t);
    while (m.groups.size() > static_cast<size_t>(n)) {
      for (const Wgmma& w : m.groups.front()) complete_wgmma(t.cta, w, "wgmma (at wgmma_wait_group)");
      m.groups.erase(m.groups.begin());
    }
    m.fenced = false;  // the threads may now touch the registers: the next wgmma needs a fence
  });
}

void wgmma_m64n128k16(float* d, const uint32_t* a, uint64_t desc_a, uint64_t desc_b, int accumulate, WgmmaType type,
                      const char* op, bool mn_a, bool mn_b, int n) {
  const ThreadPos t = current_thread(op);
  if (n != 128 && n != 64) fail(std::string(op) + ": only N = 64 and 128 are emulated");
  if (a != nullptr && mn_a) fail(std::string(op) + ": imm-trans-a with A from registers (the ISA has no such form)");
  WarpgroupMma& m = warpgroup_mma(t);
  Wgmma& s = m.staging;
  const bool rs = a != nullptr;
  if (m.arrivals == 0) {
    if (!m.fenced)
      fail(std::string(op) + ": no wgmma_fence since the warpgroup's start or its last wgmma_wait_group (the ISA "
           "requires wgmma.fence before the first wgmma.mma_async and between register accesses and a wgmma "
           "that uses those registers)");
    s.type = type;
    s.rs = rs;
    s.mn_a = mn_a;
    s.mn_b = mn_b;
    s.n = n;
    s.desc_a = desc_a;
    s.desc_b = desc_b;
    s.accumulate = accumulate != 0;
  } else if (s.type != type || s.rs != rs || s.mn_a != mn_a || s.mn_b != mn_b || s.n != n || s.desc_b != desc_b ||
             (!rs && s.desc_a != desc_a) ||
             s.accumulate != (accumulate != 0)) {
    fail(std::string(op) + ": the threads of the warpgroup give different descriptors or scale-d");
  }
  s.d[t.linear % 128] = d;
  s.a[t.linear % 128] = a;
  if (++m.arrivals == 128) {
    m.arrivals = 0;
    m.open.push_back(s);
    ++stats().wgmma;
  }
  warpgroup_sync(op);
}

// ---- host --------------------------------------------------------------------------
bool encode_tensor_map_2d(CUtensorMap* map, const void* base, uint64_t dim0, uint64_t dim1, uint64_t row_stride_bytes,
                          uint32_t box0, uint32_t box1, int swizzle) {
  if (map == nullptr || reinterpret_cast<uintptr_t>(map) % 64 != 0) return false;
  if (base == nullptr || reinterpret_cast<uintptr_t>(base) % 16 != 0) return false;
  if (dim0 < 1 || dim1 < 1 || dim0 > (uint64_t(1) << 32) || dim1 > (uint64_t(1) << 32)) return false;
  if (row_stride_bytes % 16 != 0 || row_stride_bytes >= (uint64_t(1) << 40)) return false;
  if (dim1 > 1 && row_stride_bytes < 2 * dim0) return false;  // rows may not overlap
  if (box0 < 1 || box1 < 1 || box0 > 256 || box1 > 256) return false;
  if (swizzle < 0 || swizzle > 3 || (2 * box0) % 16 != 0) return false;
  if (swizzle != 0 && 2 * box0 > swizzle_span(swizzle)) return false;
  std::memset(map, 0, sizeof *map);
  map->emu_magic = kTensorMapMagic;
  map->base = base;
  map->dim0 = dim0;
  map->dim1 = dim1;
  map->row_stride_bytes = row_stride_bytes;
  map->box0 = box0;
  map->box1 = box1;
  map->swizzle = swizzle;
  return true;
}

}  // namespace emu::detail
