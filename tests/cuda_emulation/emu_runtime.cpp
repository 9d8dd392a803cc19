// Runtime of the host emulation of the CUDA device code (see emu_cuda.h):
// the block scheduler (CUDA threads as fibers), barriers, warp collectives,
// shared memory, cp.async groups, ldmatrix and mma.sync.
#include "emu_cuda.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <sstream>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

// Bounds of the static __shared__ variables (emu_cuda.h puts them in this
// section; the linker defines these symbols when the section exists).
extern "C" {
extern char __start_emu_shared[] __attribute__((weak));
extern char __stop_emu_shared[] __attribute__((weak));
// Sanitizer runtimes (ASan, UBSan) provide it when linked in.
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));
}

// ---------------------------------------------------------------------------
// Context switch. x86-64: a minimal switch of the callee-saved registers (no
// signal-mask system call, unlike swapcontext); elsewhere ucontext.
// ---------------------------------------------------------------------------
#if defined(__x86_64__)
extern "C" void emu_ctx_switch(void** save_sp, void* new_sp);
extern "C" void emu_ctx_trampoline();
asm(R"(
  .pushsection .text
  .globl emu_ctx_switch
  .type emu_ctx_switch,@function
emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_ctx_switch,.-emu_ctx_switch
  .globl emu_ctx_trampoline
  .type emu_ctx_trampoline,@function
emu_ctx_trampoline:
  movq %r13, %rdi
  callq *%r12
  ud2
  .size emu_ctx_trampoline,.-emu_ctx_trampoline
  .popsection
)");
#endif

namespace emu {
namespace detail {
namespace {

struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

#if !defined(__x86_64__)
void (*g_uc_fn)(void*) = nullptr;
void uc_entry(unsigned hi, unsigned lo) {
  g_uc_fn(reinterpret_cast<void*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

void ctx_init(Context& c, char* stack, size_t size, void (*fn)(void*), void* arg) {
#if defined(__x86_64__)
  const uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 80);
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  sp[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpucw) << 32);
  sp[1] = 0;                                        // r15
  sp[2] = 0;                                        // r14
  sp[3] = reinterpret_cast<uint64_t>(arg);          // r13 -> first argument
  sp[4] = reinterpret_cast<uint64_t>(fn);           // r12 -> called by the trampoline
  sp[5] = 0;                                        // rbx
  sp[6] = 0;                                        // rbp (ends frame-pointer unwinding)
  sp[7] = reinterpret_cast<uint64_t>(&emu_ctx_trampoline);
  sp[8] = 0;
  sp[9] = 0;
  c.sp = sp;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  g_uc_fn = fn;  // makecontext passes int arguments only: the pointer goes in two halves
  const uintptr_t a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&c.uc, reinterpret_cast<void (*)()>(&uc_entry), 2, static_cast<unsigned>(a >> 32),
              static_cast<unsigned>(a & 0xffffffffu));
#endif
}

void ctx_switch(Context& from, Context& to) {
#if defined(__x86_64__)
  emu_ctx_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------
constexpr size_t kStackBytes = 128 * 1024;
constexpr unsigned kFull = 0xffffffffu;
constexpr unsigned char kGarbage = 0xff;

struct CpCopy {
  unsigned char* dst;
  uint64_t group;  // index of the group the copy belongs to
  unsigned char data[16];
};

enum class State { Ready, Running, AtBarrier, AtWarp, Exited };

struct Fiber {
  Context ctx;
  char* stack = nullptr;  // usable stack (above the guard page)
  uint3 tid{};
  int linear = 0, warp = 0, lane = 0;
  State state = State::Ready;
  std::vector<CpCopy> cp;  // issued copies not yet performed, in issue order
  size_t cp_head = 0;
  uint64_t groups_committed = 0;
  void* asan_fake = nullptr;

  Fiber() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    mprotect(m, page, PROT_NONE);  // stack overflow faults instead of corrupting the neighbour
    stack = static_cast<char*>(m) + page;
  }
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;
};

struct Slot {  // what a lane publishes for a collective
  uint32_t u[6];
  float c[4];
  const void* p;
  uint64_t v;
};

struct Warp {
  const char* op = nullptr;  // collective the arrived lanes wait in
  unsigned mask = 0;
  unsigned arrived = 0;
  unsigned exited = 0;  // lanes that returned or do not exist
  unsigned at_barrier = 0;
  uint64_t generation = 0;      // warp barriers completed
  uint64_t mma_generation = 0;  // generation whose product mma_d holds
  float mma_d[32][4];
  Slot slot[32];
};

struct Launch {
  dim3 grid, block;
  int nthreads = 0;
  unsigned char* dyn = nullptr;
  size_t dyn_bytes = 0;
  Body body = nullptr;
  void* ctx = nullptr;

  std::vector<Warp> warps;
  std::deque<int> runq;  // Ready fibers
  bool run_ahead = false;  // this barrier phase: a warp released from a collective runs first
  uint64_t phase = 0, block_linear = 0, seed = 0;
  int live = 0, at_barrier = 0;
  int bar_count = 0, bar_result = 0;  // __syncthreads_count: predicates of this phase, of the last one
  Fiber* cur = nullptr;
  Context sched;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  std::exception_ptr error;
  std::mt19937_64 rng;
};

std::mutex g_launch_mutex;  // static __shared__ storage and the fiber pool are process-wide
std::vector<std::unique_ptr<Fiber>> g_fibers;
Stats g_stats;
size_t g_smem_limit = 227 * 1024;
uint64_t g_seed = 0;
thread_local Launch* tl_launch = nullptr;

char* static_lo() { return __start_emu_shared; }
char* static_hi() { return __stop_emu_shared; }
size_t static_bytes() { return static_lo() != nullptr ? static_cast<size_t>(static_hi() - static_lo()) : 0; }

std::string where() {
  std::ostringstream s;
  if (tl_launch != nullptr && tl_launch->cur != nullptr) {
    const uint3 t = tl_launch->cur->tid;
    s << " [block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z << ") thread (" << t.x << "," << t.y
      << "," << t.z << "), warp " << tl_launch->cur->warp << " lane " << tl_launch->cur->lane << "]";
  }
  return s.str();
}

void record(Launch& l, std::exception_ptr e) {
  if (!l.error) l.error = e;
}

Launch& need(const char* op) {
  if (tl_launch == nullptr || tl_launch->cur == nullptr)
    throw Error(std::string(op) + ": called outside a kernel launched by emu::launch");
  return *tl_launch;
}

std::string hex(unsigned v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

// ---------------------------------------------------------------------------
// Scheduling
// ---------------------------------------------------------------------------
void asan_start(void** fake, const void* bottom, size_t size) {
#if EMU_ASAN
  __sanitizer_start_switch_fiber(fake, bottom, size);
#else
  (void)fake, (void)bottom, (void)size;
#endif
}
void asan_finish(void* fake, const void** bottom, size_t* size) {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, bottom, size);
#else
  (void)fake, (void)bottom, (void)size;
#endif
}

// The running fiber gives the CPU back to the scheduler (until made Ready).
void yield(Launch& l, Fiber& f, bool exiting = false) {
  asan_start(exiting ? nullptr : &f.asan_fake, l.sched_bottom, l.sched_size);
  ctx_switch(f.ctx, l.sched);
  asan_finish(f.asan_fake, &l.sched_bottom, &l.sched_size);
}

void make_ready(Launch& l, Fiber& f, bool front = false) {
  f.state = State::Ready;
  if (front) l.runq.push_front(f.linear);
  else l.runq.push_back(f.linear);
}

// The schedule of the next barrier phase. Four modes: warps one after the
// other in forward, reverse or shuffled order ("run-ahead": a warp released
// from a collective goes first, so it runs to the next __syncthreads before
// the next warp moves), or all threads in lockstep (released lanes queue
// behind the others) in shuffled order. The mode rotates with the phase and
// the block, so with four or more blocks every phase of a kernel sees every
// mode; a missing barrier then shows as stale or clobbered data. The
// shuffles come from the seed (emu::set_schedule_seed, or the environment
// variable EMU_SCHEDULE_SEED), so a failure is reproducible.
void pick_schedule(Launch& l, std::vector<int>& order) {
  const uint64_t mode = (l.phase++ + l.block_linear + l.seed) % 4;
  if (mode == 1) std::reverse(order.begin(), order.end());
  if (mode >= 2) std::shuffle(order.begin(), order.end(), l.rng);
  l.run_ahead = mode != 3;
}

// Every live thread reached __syncthreads.
void release_barrier(Launch& l) {
  std::vector<int> waiting;
  waiting.reserve(l.nthreads);
  for (int i = 0; i < l.nthreads; ++i)
    if (g_fibers[i]->state == State::AtBarrier) waiting.push_back(i);
  pick_schedule(l, waiting);
  for (int i : waiting) make_ready(l, *g_fibers[i]);
  for (Warp& w : l.warps) w.at_barrier = 0;
  l.at_barrier = 0;
  l.bar_result = l.bar_count;  // read by every waiter before anyone can complete the next barrier
  l.bar_count = 0;
  ++g_stats.syncthreads;
}

void perform_copies(Fiber& f, uint64_t groups_below) {
  while (f.cp_head < f.cp.size() && f.cp[f.cp_head].group < groups_below) {
    std::memcpy(f.cp[f.cp_head].dst, f.cp[f.cp_head].data, 16);
    ++f.cp_head;
  }
  if (f.cp_head == f.cp.size()) {
    f.cp.clear();
    f.cp_head = 0;
  }
}

[[noreturn]] void thread_exit(Launch& l, Fiber& f) {
  perform_copies(f, UINT64_MAX);  // copies still in flight land anyway
  f.state = State::Exited;
  --l.live;
  Warp& w = l.warps[f.warp];
  const unsigned bit = 1u << f.lane;
  w.exited |= bit;
  if (w.arrived != 0 && (w.mask & bit) != 0) {
    record(l, std::make_exception_ptr(Error("lane " + std::to_string(f.lane) + " of warp " + std::to_string(f.warp) +
                                            " exited while lanes " + hex(w.arrived) + " wait for it in " + w.op +
                                            " (mask " + hex(w.mask) + ")" + where())));
  }
  if (l.at_barrier > 0 && l.at_barrier == l.live) release_barrier(l);
  yield(l, f, true);
  std::fprintf(stderr, "emu: an exited CUDA thread was resumed\n");
  std::abort();
}

void fiber_main(void* arg) {
  Fiber& f = *static_cast<Fiber*>(arg);
  Launch& l = *tl_launch;
  asan_finish(nullptr, &l.sched_bottom, &l.sched_size);
  try {
    l.body(l.ctx);
  } catch (const Error&) {
    record(l, std::current_exception());
  } catch (const std::exception& e) {
    record(l, std::make_exception_ptr(Error(std::string("kernel threw: ") + e.what() + where())));
  } catch (...) {
    record(l, std::make_exception_ptr(Error("kernel threw a non-standard exception" + where())));
  }
  thread_exit(l, f);
}

std::string describe_deadlock(Launch& l) {
  std::ostringstream s;
  s << "deadlock: no CUDA thread can run in block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z
    << "); " << l.live << " live, " << l.at_barrier << " in __syncthreads";
  for (size_t w = 0; w < l.warps.size(); ++w) {
    const Warp& wp = l.warps[w];
    if (wp.arrived != 0)
      s << "; warp " << w << ": lanes " << hex(wp.arrived) << " wait in " << wp.op << " (mask " << hex(wp.mask)
        << "), lanes " << hex(wp.at_barrier) << " in __syncthreads";
  }
  return s.str();
}

void run_block(Launch& l) {
  std::memset(l.dyn, kGarbage, l.dyn_bytes);
  if (static_bytes() > 0) std::memset(static_lo(), kGarbage, static_bytes());
  for (Warp& w : l.warps) {
    w.op = nullptr;
    w.mask = w.arrived = w.at_barrier = 0;
    w.exited = 0;
  }
  const int nwarps = static_cast<int>(l.warps.size());
  const int last = l.nthreads - 32 * (nwarps - 1);  // lanes of the last warp
  if (last < 32) l.warps[nwarps - 1].exited = ~((1u << last) - 1u);
  l.runq.clear();
  l.live = l.nthreads;
  std::vector<int> order(l.nthreads);
  l.at_barrier = 0;
  l.bar_count = l.bar_result = 0;
  for (int i = 0; i < l.nthreads; ++i) {
    Fiber& f = *g_fibers[i];
    f.linear = i;
    f.tid = uint3{static_cast<unsigned>(i) % l.block.x, (static_cast<unsigned>(i) / l.block.x) % l.block.y,
                  static_cast<unsigned>(i) / (l.block.x * l.block.y)};
    f.warp = i / 32;
    f.lane = i % 32;
    f.cp.clear();
    f.cp_head = 0;
    f.groups_committed = 0;
    f.asan_fake = nullptr;
#if EMU_ASAN
    __asan_unpoison_memory_region(f.stack, kStackBytes);  // frames of the previous block's fibers
#endif
    ctx_init(f.ctx, f.stack, kStackBytes, &fiber_main, &f);
    order[i] = i;
  }
  pick_schedule(l, order);
  for (int i : order) make_ready(l, *g_fibers[i]);
  while (!l.error) {
    if (l.runq.empty()) {
      if (l.live > 0) l.error = std::make_exception_ptr(Error(describe_deadlock(l)));
      break;
    }
    Fiber& f = *g_fibers[l.runq.front()];
    l.runq.pop_front();
    l.cur = &f;
    threadIdx = f.tid;
    f.state = State::Running;
    void* fake = nullptr;
    asan_start(&fake, f.stack, kStackBytes);
    ctx_switch(l.sched, f.ctx);
    asan_finish(fake, nullptr, nullptr);
  }
  l.cur = nullptr;
  ++g_stats.blocks;
  g_stats.threads += static_cast<uint64_t>(l.nthreads);
}

// Warp barrier of a collective `op` among the lanes of `mask`.
void warp_barrier(Launch& l, Fiber& f, const char* op, unsigned mask) {
  Warp& w = l.warps[f.warp];
  const unsigned bit = 1u << f.lane;
  if ((mask & bit) == 0) fail(std::string(op) + ": mask " + hex(mask) + " does not include the calling lane");
  if ((mask & w.exited) != 0)
    fail(std::string(op) + ": lanes " + hex(mask & w.exited) + " of the mask " + hex(mask) +
         " have exited or do not exist");
  if ((mask & w.at_barrier) != 0)
    fail(std::string(op) + ": lanes " + hex(mask & w.at_barrier) + " of the mask " + hex(mask) +
         " wait in __syncthreads instead");
  if (w.arrived == 0) {
    w.op = op;
    w.mask = mask;
  } else if ((w.op != op && std::strcmp(w.op, op) != 0) || w.mask != mask) {
    fail(std::string("lanes of one warp call different collectives: this lane calls ") + op + " (mask " + hex(mask) +
         "), lanes " + hex(w.arrived) + " wait in " + w.op + " (mask " + hex(w.mask) + ")");
  }
  w.arrived |= bit;
  if (w.arrived == mask) {
    const unsigned others = mask & ~bit;
    w.arrived = 0;
    w.op = nullptr;
    ++w.generation;
    for (int lane = 0; lane < 32; ++lane)
      if (others & (1u << lane)) make_ready(l, *g_fibers[f.warp * 32 + lane], l.run_ahead);
    return;  // the last lane to arrive goes on
  }
  f.state = State::AtWarp;
  yield(l, f);
}

bool in_range(const void* p, size_t bytes, const void* lo, size_t size) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(lo);
  return lo != nullptr && a >= b && a - b <= size && bytes <= size - (a - b);
}

bool in_smem(const Launch& l, const void* p, size_t bytes) {
  return in_range(p, bytes, l.dyn, l.dyn_bytes) || in_range(p, bytes, static_lo(), static_bytes());
}

void check_smem16(const Launch& l, const void* p, const char* op, const char* what) {
  if (!in_smem(l, p, 16)) {
    std::ostringstream s;
    s << op << ": " << what << " " << p << " (16 bytes) is not in shared memory (dynamic [" << static_cast<void*>(l.dyn)
      << ", +" << l.dyn_bytes << "), static [" << static_cast<void*>(static_lo()) << ", +" << static_bytes() << "))";
    fail(s.str());
  }
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::ostringstream s;
    s << op << ": " << what << " " << p << " is not 16-byte aligned";
    fail(s.str());
  }
}

}  // namespace

// A sanitizer report inside a kernel names the host stack only: add the CUDA thread.
void report_cuda_thread_on_death() {
  if (tl_launch != nullptr && tl_launch->cur != nullptr)
    std::fprintf(stderr, "emu: the report above comes from a kernel:%s\n", where().c_str());
}

// ---------------------------------------------------------------------------
// Interface
// ---------------------------------------------------------------------------
void fail(const std::string& what) { throw Error("emu: " + what + where()); }

void run_launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, Body body, void* ctx) {
  if (tl_launch != nullptr) throw Error("emu::launch: called from inside a kernel (dynamic parallelism is not emulated)");
  const uint64_t nthreads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      nthreads > 1024) {
    throw Error("emu::launch: invalid block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," +
                std::to_string(block.z) + "): each dimension >= 1, x, y <= 1024, z <= 64, at most 1024 threads");
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    throw Error("emu::launch: invalid grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
                std::to_string(grid.z) + "): x in [1, 2^31 - 1], y and z in [1, 65535]");
  }
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  static const bool death_callback = [] {
    if (&__sanitizer_set_death_callback != nullptr) __sanitizer_set_death_callback(&report_cuda_thread_on_death);
    return true;
  }();
  (void)death_callback;
  if (dynamic_smem_bytes > g_smem_limit) {
    throw Error("emu::launch: " + std::to_string(dynamic_smem_bytes) + " bytes of dynamic shared memory exceed the limit of " +
                std::to_string(g_smem_limit) + " (emu::set_smem_limit)");
  }
  while (g_fibers.size() < nthreads) g_fibers.push_back(std::make_unique<Fiber>());

  Launch l;
  l.grid = grid;
  l.block = block;
  l.nthreads = static_cast<int>(nthreads);
  l.body = body;
  l.ctx = ctx;
  l.warps.resize((nthreads + 31) / 32);
  l.seed = g_seed;
  if (const char* env = std::getenv("EMU_SCHEDULE_SEED")) l.seed = std::strtoull(env, nullptr, 0);
  l.rng.seed(l.seed);
  l.dyn_bytes = dynamic_smem_bytes;
  // Exactly the requested size (ASan flags any byte past it); 128-byte aligned.
  std::unique_ptr<unsigned char, void (*)(unsigned char*)> dyn(
      static_cast<unsigned char*>(::operator new[](dynamic_smem_bytes, std::align_val_t(128))),
      [](unsigned char* p) { ::operator delete[](p, std::align_val_t(128)); });
  l.dyn = dyn.get();
  ++g_stats.launches;

  tl_launch = &l;
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z && !l.error; ++z)
    for (unsigned y = 0; y < grid.y && !l.error; ++y)
      for (unsigned x = 0; x < grid.x && !l.error; ++x) {
        blockIdx = uint3{x, y, z};
        l.block_linear = (static_cast<uint64_t>(z) * grid.y + y) * grid.x + x;
        l.phase = 0;
        run_block(l);
      }
  tl_launch = nullptr;
  if (l.error) std::rethrow_exception(l.error);
}

int syncthreads_count(int predicate) {
  Launch& l = need("__syncthreads");
  Fiber& f = *l.cur;
  Warp& w = l.warps[f.warp];
  const unsigned bit = 1u << f.lane;
  if (w.arrived != 0 && (w.mask & bit) != 0)
    fail(std::string("__syncthreads: lanes ") + hex(w.arrived) + " of this warp wait for this lane in " + w.op);
  f.state = State::AtBarrier;
  w.at_barrier |= bit;
  l.bar_count += predicate != 0;
  if (++l.at_barrier == l.live) release_barrier(l);
  yield(l, f);
  return l.bar_result;
}

void syncthreads() { (void)syncthreads_count(0); }

unsigned ballot(const char* op, unsigned mask, int predicate) {
  Launch& l = need(op);
  Fiber& f = *l.cur;
  Warp& w = l.warps[f.warp];
  w.slot[f.lane].v = predicate != 0;
  warp_barrier(l, f, op, mask);
  unsigned r = 0;
  for (int lane = 0; lane < 32; ++lane)
    if ((mask >> lane) & 1u) r |= static_cast<unsigned>(w.slot[lane].v) << lane;
  warp_barrier(l, f, op, mask);
  return r;
}

void syncwarp(unsigned mask) {
  Launch& l = need("__syncwarp");
  warp_barrier(l, *l.cur, "__syncwarp", mask);
}

unsigned activemask() {
  Launch& l = need("__activemask");
  return ~l.warps[l.cur->warp].exited;
}

uint64_t shfl(const char* op, unsigned mask, uint64_t value, int rule, int arg, int width) {
  Launch& l = need(op);
  Fiber& f = *l.cur;
  Warp& w = l.warps[f.warp];
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail(std::string(op) + ": width " + std::to_string(width) + " is not a power of two in [1, 32]");
  w.slot[f.lane].v = value;
  warp_barrier(l, f, op, mask);
  const int lane = f.lane, seg = lane & ~(width - 1);
  int src = lane;
  switch (rule) {
    case kShflIdx:
      src = seg + (arg & (width - 1));
      break;
    case kShflXor:
      src = lane ^ arg;  // lanes of a later group (or past the warp) read their own value
      if (src < 0 || src > 31 || src >= seg + width) src = lane;
      break;
    case kShflDown:
      src = (lane - seg) + arg < width ? lane + arg : lane;
      break;
    case kShflUp:
      src = (lane - seg) - arg >= 0 ? lane - arg : lane;
      break;
  }
  if ((mask & (1u << src)) == 0)
    fail(std::string(op) + ": reads lane " + std::to_string(src) + ", which is not in the mask " + hex(mask));
  const uint64_t r = w.slot[src].v;
  if (lane == __builtin_ctz(mask)) ++g_stats.shfl;
  warp_barrier(l, f, op, mask);
  return r;
}

unsigned char* dynamic_smem() { return need("dynamic_smem").dyn; }

uint32_t smem_offset(const void* p) {
  Launch& l = need("smem_addr");
  if (in_range(p, 0, static_lo(), static_bytes()))
    return static_cast<uint32_t>(static_cast<const char*>(p) - static_lo());
  if (in_range(p, 0, l.dyn, l.dyn_bytes))
    return static_cast<uint32_t>(((static_bytes() + 15) & ~size_t(15)) +
                                 static_cast<size_t>(static_cast<const unsigned char*>(p) - l.dyn));
  std::ostringstream s;
  s << "smem_addr: " << p << " is not in shared memory";
  fail(s.str());
}

void cp_async(void* dst, const void* src, int cp_size, int src_bytes) {
  Launch& l = need("cp_async16");
  Fiber& f = *l.cur;
  if (cp_size != 16) fail("cp.async: only 16-byte copies are emulated");
  if (src_bytes < 0 || src_bytes > cp_size)
    fail("cp.async: src_bytes " + std::to_string(src_bytes) + " is outside [0, " + std::to_string(cp_size) + "]");
  check_smem16(l, dst, "cp.async", "destination");
  if (src_bytes > 0) {
    if (reinterpret_cast<uintptr_t>(src) % 16 != 0) {
      std::ostringstream s;
      s << "cp.async: source " << src << " is not 16-byte aligned";
      fail(s.str());
    }
    if (in_smem(l, src, 1)) fail("cp.async: the source lies in shared memory (it must be global memory)");
  }
  CpCopy c;
  c.dst = static_cast<unsigned char*>(dst);
  c.group = f.groups_committed;  // the open group
  if (src_bytes > 0) std::memcpy(c.data, src, static_cast<size_t>(src_bytes));  // read at issue: ASan checks here
  std::memset(c.data + src_bytes, 0, static_cast<size_t>(16 - src_bytes));
  f.cp.push_back(c);
  ++g_stats.cp_async;
  g_stats.cp_async_bytes += static_cast<uint64_t>(src_bytes);
  g_stats.cp_async_zfill += static_cast<uint64_t>(16 - src_bytes);
}

void cp_async_commit() {
  Launch& l = need("cp_async_commit");
  ++l.cur->groups_committed;
}

void cp_async_wait(int n) {
  Launch& l = need("cp_async_wait");
  Fiber& f = *l.cur;
  const uint64_t allowed = static_cast<uint64_t>(n);
  if (f.groups_committed > allowed) perform_copies(f, f.groups_committed - allowed);
}

void ldmatrix(uint32_t* r, int num, bool trans, const void* p, const char* op) {
  Launch& l = need(op);
  Fiber& f = *l.cur;
  Warp& w = l.warps[f.warp];
  if (f.lane < 8 * num) check_smem16(l, p, op, "row address");  // lanes >= 8*num: address unused
  w.slot[f.lane].p = p;
  warp_barrier(l, f, op, kFull);
  const int lane = f.lane;
  for (int j = 0; j < num; ++j) {
    uint16_t lo, hi;
    if (!trans) {  // row lane/4 of matrix j, columns 2(lane%4), 2(lane%4)+1
      const unsigned char* row = static_cast<const unsigned char*>(w.slot[8 * j + lane / 4].p);
      std::memcpy(&lo, row + 4 * (lane % 4), 2);
      std::memcpy(&hi, row + 4 * (lane % 4) + 2, 2);
    } else {  // element (2(lane%4) + h, lane/4) of matrix j: the transposed matrix
      const unsigned char* r0 = static_cast<const unsigned char*>(w.slot[8 * j + 2 * (lane % 4)].p);
      const unsigned char* r1 = static_cast<const unsigned char*>(w.slot[8 * j + 2 * (lane % 4) + 1].p);
      std::memcpy(&lo, r0 + 2 * (lane / 4), 2);
      std::memcpy(&hi, r1 + 2 * (lane / 4), 2);
    }
    r[j] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  if (lane == 0) ++g_stats.ldmatrix;
  warp_barrier(l, f, op, kFull);
}

// mma.sync.aligned.m16n8k{16,8}.row.col.f32.{f16,bf16}.{f16,bf16}.f32, PTX
// ISA fragment layouts (groupID g = lane >> 2, threadID_in_group t = lane & 3):
//   A (16 x k, row): a[i] holds rows g (i even) / g + 8 (i odd), columns
//     2t, 2t + 1 (+8 for i >= 2); low half = lower column.
//   B (k x 8, col): b[i] holds rows (k) 2t, 2t + 1 (+8 for i = 1), column g.
//   C, D (16 x 8): d[i] = (g + 8 * (i >= 2), 2t + (i & 1)).
void mma_m16n8(float* d, const uint32_t* a, const uint32_t* b, int k, MmaType type, const char* op) {
  Launch& l = need(op);
  Fiber& f = *l.cur;
  Warp& w = l.warps[f.warp];
  const int na = k / 4, nb = k / 8;
  Slot& mine = w.slot[f.lane];
  for (int i = 0; i < na; ++i) mine.u[i] = a[i];
  for (int i = 0; i < nb; ++i) mine.u[na + i] = b[i];
  for (int i = 0; i < 4; ++i) mine.c[i] = d[i];
  warp_barrier(l, f, op, kFull);
  // The first lane past the barrier computes the whole warp's D from every
  // lane's fragments (what each lane would compute for itself, done once).
  if (w.mma_generation != w.generation) {
    w.mma_generation = w.generation;
    auto half = [&](int src, int reg, int h) {
      const uint16_t bits = static_cast<uint16_t>(w.slot[src].u[reg] >> (16 * h));
      return type == MmaType::f16 ? f16_to_f32(bits) : bf16_to_f32(bits);
    };
    double A[16][16], B[16][8];
    for (int row = 0; row < 16; ++row)  // lane (row % 8) * 4 + (col % 8) / 2, register row / 8 + 2 (col / 8), half col % 2
      for (int col = 0; col < k; ++col) A[row][col] = half((row & 7) * 4 + ((col & 7) >> 1), (row >> 3) + 2 * (col >> 3), col & 1);
    for (int kk = 0; kk < k; ++kk)  // lane n * 4 + (kk % 8) / 2, register kk / 8, half kk % 2
      for (int n = 0; n < 8; ++n) B[kk][n] = half(n * 4 + ((kk & 7) >> 1), na + (kk >> 3), kk & 1);
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
        double s = static_cast<double>(w.slot[lane].c[i]);
        for (int kk = 0; kk < k; ++kk) s += A[row][kk] * B[kk][col];
        w.mma_d[lane][i] = static_cast<float>(s);
      }
    }
    ++g_stats.mma;
  }
  float out[4];
  for (int i = 0; i < 4; ++i) out[i] = w.mma_d[f.lane][i];
  warp_barrier(l, f, op, kFull);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

}  // namespace detail

Stats& stats() { return detail::g_stats; }
void reset_stats() { detail::g_stats = Stats{}; }
void set_smem_limit(size_t bytes) {
  std::lock_guard<std::mutex> lock(detail::g_launch_mutex);
  detail::g_smem_limit = bytes;
}
size_t smem_limit() { return detail::g_smem_limit; }
void set_schedule_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(detail::g_launch_mutex);
  detail::g_seed = seed;
}

}  // namespace emu
