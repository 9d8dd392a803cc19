// Runtime of the host emulation of the CUDA device code (see emu_cuda.h):
// the block and cluster scheduler (CUDA threads as fibers), barriers, warp
// collectives, shared memory, cp.async groups, ldmatrix and mma.sync. The
// sm_90a instructions (mbarrier, TMA, wgmma) are in emu_sm90_runtime.cpp,
// on the scheduling services at the end of this file.
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
constexpr size_t kDynAlign = 1024;  // the largest alignment TMA / wgmma ask of shared memory

struct CpCopy {
  unsigned char* dst;
  uint64_t group;  // index of the group the copy belongs to
  unsigned char data[16];
};

// AtGroup: in a named barrier, warpgroup collective or cluster barrier;
// Parked: waiting for wake(key) (an mbarrier phase).
enum class State { Ready, Running, AtBarrier, AtWarp, AtGroup, Parked, Exited };

struct Fiber {
  Context ctx;
  char* stack = nullptr;  // usable stack (above the guard page)
  uint3 tid{};
  int index = 0;  // in g_fibers: cta * threads per block + linear
  int cta = 0, linear = 0, warp = 0, lane = 0;
  State state = State::Ready;
  std::vector<CpCopy> cp;  // issued copies not yet performed, in issue order
  size_t cp_head = 0;
  uint64_t groups_committed = 0;
  void* asan_fake = nullptr;
  const void* park_key = nullptr;  // Parked: what it waits for
  bool may_time_out = false;     // Parked in a try_wait (which may return false spuriously)
  bool cluster_arrived = false;  // barrier.cluster.arrive done, wait not yet
  uint64_t cluster_phase = 0;    // the cluster barrier phase it arrived in

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

// A barrier of a given number of threads: bar.sync id, n (named barriers) and
// the warpgroup collectives (wgmma, setmaxnreg).
struct GroupBarrier {
  const char* op = nullptr;  // what the waiting threads called
  int expected = 0;
  std::vector<int> waiters;  // fibers (index) that arrived in this phase
};

struct Cta {  // one block of the running cluster
  uint3 idx{};
  uint64_t linear = 0;  // blockIdx, linearised (x fastest)
  std::vector<Warp> warps;
  unsigned char* dyn = nullptr;  // dynamic shared memory
  int live = 0, at_barrier = 0;
  int bar_count = 0, bar_result = 0;  // __syncthreads_count: predicates of this phase, of the last one
  uint64_t phase = 0;                 // __syncthreads phases run (picks the schedule mode)
  GroupBarrier named[16];
  std::vector<GroupBarrier> warpgroups;
};

using Buffer = std::unique_ptr<unsigned char, void (*)(unsigned char*)>;

struct HeldStore {  // st_global_for_peers, not yet visible
  uint64_t writer;  // block (linear) x threads per block + thread
  void* dst;
  unsigned char bytes[16];
  size_t n;
};

struct Launch {
  dim3 grid, block;
  int nthreads = 0;    // per block
  int cluster_x = 1;   // blocks per cluster (along x)
  bool cluster_launch = false;  // emu::launch_cluster: random picks, no static __shared__
  size_t dyn_bytes = 0;
  uint32_t dyn_base = 0;  // shared window address of dynamic shared memory byte 0
  Body body = nullptr;
  void* ctx = nullptr;

  std::vector<Cta> ctas;        // of the running cluster, by rank
  std::vector<Buffer> dyn_mem;  // their dynamic shared memory
  std::deque<int> runq;         // Ready fibers
  bool run_ahead = false;  // this barrier phase: a warp released from a collective runs first
  uint64_t seed = 0;
  int live = 0;                // live threads of the cluster
  std::vector<int> parked;     // Parked fibers
  // Threads made ready (other than by a try_wait timeout): when nothing can
  // run, parked try_waits time out (return false) once per change of it.
  uint64_t progress = 0, progress_at_timeout = ~uint64_t(0);
  int cluster_arrivals = 0;    // barrier.cluster: arrivals in this phase
  uint64_t cluster_phase = 0;
  Fiber* cur = nullptr;
  Context sched;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  std::exception_ptr error;
  std::mt19937_64 rng;
  // How pending TMA operations land in the running cluster (drawn per
  // cluster): at random points, or as late as possible (only when no fiber
  // can run), so that a read of a box nobody waited for sees the 0xFF fill.
  bool late_delivery = false;
  std::vector<HeldStore> held;  // in issue order
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

Cta& cta_of(Launch& l, const Fiber& f) { return l.ctas[f.cta]; }
Fiber& fiber_at(Launch& l, int cta, int linear) { return *g_fibers[cta * l.nthreads + linear]; }

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

void make_ready(Launch& l, Fiber& f, bool front = false, bool progress = true) {
  f.state = State::Ready;
  l.progress += progress;
  if (front) l.runq.push_front(f.index);
  else l.runq.push_back(f.index);
}

// The schedule of the next barrier phase. Four modes: warps one after the
// other in forward, reverse or shuffled order ("run-ahead": a warp released
// from a collective goes first, so it runs to the next __syncthreads before
// the next warp moves), or all threads in lockstep (released lanes queue
// behind the others) in shuffled order. The mode rotates with the phase and
// the block, so with four or more blocks every phase of a kernel sees every
// mode; a missing barrier then shows as stale or clobbered data. The
// shuffles come from the seed (emu::set_schedule_seed, or the environment
// variable EMU_SCHEDULE_SEED), so a failure is reproducible. (Cluster
// launches pick the next fiber at random instead; see run_cluster.)
void pick_schedule(Launch& l, Cta& c, std::vector<int>& order) {
  const uint64_t mode = (c.phase++ + c.linear + l.seed) % 4;
  if (mode == 1) std::reverse(order.begin(), order.end());
  if (mode >= 2) std::shuffle(order.begin(), order.end(), l.rng);
  l.run_ahead = mode != 3;
}

// Every live thread of the block reached __syncthreads.
void release_barrier(Launch& l, Cta& c) {
  std::vector<int> waiting;
  waiting.reserve(l.nthreads);
  const int rank = static_cast<int>(&c - l.ctas.data());
  for (int i = 0; i < l.nthreads; ++i)
    if (fiber_at(l, rank, i).state == State::AtBarrier) waiting.push_back(rank * l.nthreads + i);
  pick_schedule(l, c, waiting);
  for (int i : waiting) make_ready(l, *g_fibers[i]);
  for (Warp& w : c.warps) w.at_barrier = 0;
  c.at_barrier = 0;
  c.bar_result = c.bar_count;  // read by every waiter before anyone can complete the next barrier
  c.bar_count = 0;
  ++g_stats.syncthreads;
}

// Every live thread of the cluster arrived at barrier.cluster.
void release_cluster_barrier(Launch& l) {
  l.cluster_arrivals = 0;
  ++l.cluster_phase;
  ++g_stats.cluster_barriers;
  std::vector<int> still;
  for (int i : l.parked) {
    Fiber& f = *g_fibers[i];
    if (f.park_key == &l.cluster_phase) make_ready(l, f);
    else still.push_back(i);
  }
  l.parked.swap(still);
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
  Cta& c = cta_of(l, f);
  --c.live;
  --l.live;
  if (c.live == 0) sm90_async::cta_exited(f.cta);
  Warp& w = c.warps[f.warp];
  const unsigned bit = 1u << f.lane;
  w.exited |= bit;
  if (w.arrived != 0 && (w.mask & bit) != 0) {
    record(l, std::make_exception_ptr(Error("lane " + std::to_string(f.lane) + " of warp " + std::to_string(f.warp) +
                                            " exited while lanes " + hex(w.arrived) + " wait for it in " + w.op +
                                            " (mask " + hex(w.mask) + ")" + where())));
  }
  if (f.cluster_arrived)
    record(l, std::make_exception_ptr(Error("emu: exited between cluster_arrive and cluster_wait" + where())));
  if (c.at_barrier > 0 && c.at_barrier == c.live) release_barrier(l, c);
  if (l.cluster_arrivals > 0 && l.cluster_arrivals == l.live) release_cluster_barrier(l);
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
  s << "deadlock: no CUDA thread can run and no asynchronous operation is pending; " << l.live << " live";
  for (Cta& c : l.ctas) {
    s << "; block (" << c.idx.x << "," << c.idx.y << "," << c.idx.z << "): " << c.live << " live, " << c.at_barrier
      << " in __syncthreads";
    for (size_t w = 0; w < c.warps.size(); ++w) {
      const Warp& wp = c.warps[w];
      if (wp.arrived != 0)
        s << "; warp " << w << ": lanes " << hex(wp.arrived) << " wait in " << wp.op << " (mask " << hex(wp.mask)
          << "), lanes " << hex(wp.at_barrier) << " in __syncthreads";
    }
    for (int id = 0; id < 16; ++id)
      if (!c.named[id].waiters.empty())
        s << "; " << c.named[id].waiters.size() << " of " << c.named[id].expected << " threads in named barrier "
          << id;
    for (size_t g = 0; g < c.warpgroups.size(); ++g)
      if (!c.warpgroups[g].waiters.empty())
        s << "; warpgroup " << g << ": " << c.warpgroups[g].waiters.size() << " of 128 threads in "
          << c.warpgroups[g].op;
  }
  if (l.cluster_arrivals > 0) s << "; " << l.cluster_arrivals << " threads arrived at the cluster barrier";
  // Parked threads, grouped by what they wait for.
  std::vector<std::pair<std::string, int>> waits;
  for (int i : l.parked) {
    const Fiber& f = *g_fibers[i];
    const std::string what = f.may_time_out ? sm90_async::describe_wait(f.park_key) : "the cluster barrier";
    auto it = std::find_if(waits.begin(), waits.end(), [&](const auto& p) { return p.first == what; });
    if (it == waits.end()) waits.emplace_back(what, 1);
    else ++it->second;
  }
  for (const auto& w : waits) s << "; " << w.second << " threads wait on " << w.first;
  return s.str();
}

// Nothing can run: the parked try_waits return false (a time-out), which is
// progress only if the kernel then does something else (e.g. arrives itself).
bool time_out_try_waits(Launch& l) {
  l.progress_at_timeout = l.progress;
  std::vector<int> still;
  for (int i : l.parked) {
    Fiber& f = *g_fibers[i];
    if (f.may_time_out) make_ready(l, f, false, false);
    else still.push_back(i);
  }
  const bool woke = still.size() != l.parked.size();
  l.parked.swap(still);
  return woke;
}

// The threads of one cluster (or block) run until all have exited. A
// cluster launch picks the next fiber at random among the runnable ones,
// and delivers a pending asynchronous operation (TMA) at random points or,
// for every other cluster (drawn from the seed), only when nothing else can
// run; any launch delivers one when nothing else can run.
void run_threads(Launch& l) {
  while (!l.error) {
    const bool async = sm90_async::pending();
    if (async && (l.runq.empty() || (!l.late_delivery && l.rng() % 8 == 0))) {
      l.cur = nullptr;
      try {
        sm90_async::deliver_one();
        ++l.progress;  // a poll may now see the landed data
      } catch (const Error&) {
        record(l, std::current_exception());
      }
      continue;
    }
    if (l.runq.empty() && l.progress != l.progress_at_timeout && time_out_try_waits(l)) continue;
    if (l.runq.empty()) {
      if (l.live > 0) l.error = std::make_exception_ptr(Error(describe_deadlock(l)));
      break;
    }
    if (l.cluster_launch && l.runq.size() > 1) std::swap(l.runq.front(), l.runq[l.rng() % l.runq.size()]);
    Fiber& f = *g_fibers[l.runq.front()];
    l.runq.pop_front();
    l.cur = &f;
    threadIdx = f.tid;
    blockIdx = l.ctas[f.cta].idx;
    f.state = State::Running;
    void* fake = nullptr;
    asan_start(&fake, f.stack, kStackBytes);
    ctx_switch(l.sched, f.ctx);
    asan_finish(fake, nullptr, nullptr);
  }
  l.cur = nullptr;
}

bool static_section_untouched() {
  const char* p = static_lo();
  for (size_t i = 0; i < static_bytes(); ++i)
    if (static_cast<unsigned char>(p[i]) != kGarbage) return false;
  return true;
}

// Runs the cluster whose first block is `first` (cluster_x blocks along x).
void run_cluster(Launch& l, uint3 first) {
  if (static_bytes() > 0) std::memset(static_lo(), kGarbage, static_bytes());
  const int nwarps = (l.nthreads + 31) / 32;
  const int last = l.nthreads - 32 * (nwarps - 1);  // lanes of the last warp
  l.runq.clear();
  l.parked.clear();
  l.live = l.cluster_x * l.nthreads;
  l.cluster_arrivals = 0;
  for (int r = 0; r < l.cluster_x; ++r) {
    Cta& c = l.ctas[r];
    c.idx = uint3{first.x + static_cast<unsigned>(r), first.y, first.z};
    c.linear = (static_cast<uint64_t>(c.idx.z) * l.grid.y + c.idx.y) * l.grid.x + c.idx.x;
    c.phase = 0;
    std::memset(c.dyn, kGarbage, l.dyn_bytes);
    for (Warp& w : c.warps) {
      w.op = nullptr;
      w.mask = w.arrived = w.at_barrier = 0;
      w.exited = 0;
    }
    if (last < 32) c.warps[nwarps - 1].exited = ~((1u << last) - 1u);
    c.live = l.nthreads;
    c.at_barrier = 0;
    c.bar_count = c.bar_result = 0;
    for (GroupBarrier& b : c.named) b = GroupBarrier{};
    c.warpgroups.assign((l.nthreads + 127) / 128, GroupBarrier{});
    std::vector<int> order(l.nthreads);
    for (int i = 0; i < l.nthreads; ++i) {
      Fiber& f = fiber_at(l, r, i);
      f.index = r * l.nthreads + i;
      f.cta = r;
      f.linear = i;
      f.tid = uint3{static_cast<unsigned>(i) % l.block.x, (static_cast<unsigned>(i) / l.block.x) % l.block.y,
                    static_cast<unsigned>(i) / (l.block.x * l.block.y)};
      f.warp = i / 32;
      f.lane = i % 32;
      f.cp.clear();
      f.cp_head = 0;
      f.groups_committed = 0;
      f.asan_fake = nullptr;
      f.park_key = nullptr;
      f.cluster_arrived = false;
#if EMU_ASAN
      __asan_unpoison_memory_region(f.stack, kStackBytes);  // frames of the previous block's fibers
#endif
      ctx_init(f.ctx, f.stack, kStackBytes, &fiber_main, &f);
      order[i] = f.index;
    }
    pick_schedule(l, c, order);
    for (int i : order) make_ready(l, *g_fibers[i]);
  }
  sm90_async::begin_cluster(l.cluster_x, l.dyn_bytes);
  run_threads(l);
  if (!l.error) {
    try {
      sm90_async::end_cluster();
    } catch (const Error&) {
      record(l, std::current_exception());
    }
  }
  if (!l.error && l.cluster_launch && !static_section_untouched())
    l.error = std::make_exception_ptr(
        Error("emu::launch_cluster: the kernel wrote a static __shared__ variable; they are one instance per kernel "
              "in the emulation, so cluster kernels must use dynamic shared memory only"));
  g_stats.blocks += static_cast<uint64_t>(l.cluster_x);
  g_stats.threads += static_cast<uint64_t>(l.cluster_x) * static_cast<uint64_t>(l.nthreads);
  ++g_stats.clusters;
}

// A barrier of `expected` threads (named barrier, warpgroup collective): the
// last to arrive goes on, the others wait.
void group_barrier(Launch& l, Fiber& f, GroupBarrier& b, const char* op, int expected) {
  if (b.waiters.empty()) {
    b.op = op;
    b.expected = expected;
  } else if ((b.op != op && std::strcmp(b.op, op) != 0) || b.expected != expected) {
    fail(std::string("threads of one barrier call different operations: this thread calls ") + op + " (" +
         std::to_string(expected) + " threads), " + std::to_string(b.waiters.size()) + " threads wait in " + b.op +
         " (" + std::to_string(b.expected) + " threads)");
  }
  if (static_cast<int>(b.waiters.size()) + 1 == expected) {
    for (int i : b.waiters) make_ready(l, *g_fibers[i]);
    b.waiters.clear();
    return;
  }
  b.waiters.push_back(f.index);
  f.state = State::AtGroup;
  yield(l, f);
}

void park_fiber(Launch& l, Fiber& f, const void* key, bool may_time_out) {
  f.state = State::Parked;
  f.park_key = key;
  f.may_time_out = may_time_out;
  l.parked.push_back(f.index);
  yield(l, f);
}

// Warp barrier of a collective `op` among the lanes of `mask`.
void warp_barrier(Launch& l, Fiber& f, const char* op, unsigned mask) {
  Warp& w = cta_of(l, f).warps[f.warp];
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
      if (others & (1u << lane)) make_ready(l, fiber_at(l, f.cta, f.warp * 32 + lane), l.run_ahead);
    return;  // the last lane to arrive goes on
  }
  f.state = State::AtWarp;
  yield(l, f);
}

bool in_range(const void* p, size_t bytes, const void* lo, size_t size) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(lo);
  return lo != nullptr && a >= b && a - b <= size && bytes <= size - (a - b);
}

// In the calling thread's block's shared memory.
bool in_smem(Launch& l, const void* p, size_t bytes) {
  return in_range(p, bytes, cta_of(l, *l.cur).dyn, l.dyn_bytes) || in_range(p, bytes, static_lo(), static_bytes());
}

void check_smem16(Launch& l, const void* p, const char* op, const char* what) {
  if (!in_smem(l, p, 16)) {
    std::ostringstream s;
    s << op << ": " << what << " " << p << " (16 bytes) is not in shared memory (dynamic ["
      << static_cast<void*>(cta_of(l, *l.cur).dyn) << ", +" << l.dyn_bytes << "), static ["
      << static_cast<void*>(static_lo()) << ", +" << static_bytes() << "))";
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

namespace {
void run_grid(const char* api, dim3 grid, dim3 block, unsigned cluster_x, bool cluster_launch,
              size_t dynamic_smem_bytes, Body body, void* ctx) {
  const std::string name(api);
  if (tl_launch != nullptr) throw Error(name + ": called from inside a kernel (dynamic parallelism is not emulated)");
  const uint64_t nthreads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      nthreads > 1024) {
    throw Error(name + ": invalid block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," +
                std::to_string(block.z) + "): each dimension >= 1, x, y <= 1024, z <= 64, at most 1024 threads");
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    throw Error(name + ": invalid grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
                std::to_string(grid.z) + "): x in [1, 2^31 - 1], y and z in [1, 65535]");
  }
  if (cluster_x < 1 || cluster_x > 8 || grid.x % cluster_x != 0) {
    throw Error(name + ": invalid cluster size " + std::to_string(cluster_x) + " for grid.x " +
                std::to_string(grid.x) + ": 1..8 blocks (the portable limit), dividing grid.x");
  }
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  static const bool death_callback = [] {
    if (&__sanitizer_set_death_callback != nullptr) __sanitizer_set_death_callback(&report_cuda_thread_on_death);
    return true;
  }();
  (void)death_callback;
  if (dynamic_smem_bytes > g_smem_limit) {
    throw Error(name + ": " + std::to_string(dynamic_smem_bytes) +
                " bytes of dynamic shared memory exceed the limit of " + std::to_string(g_smem_limit) +
                " (emu::set_smem_limit)");
  }
  while (g_fibers.size() < cluster_x * nthreads) g_fibers.push_back(std::make_unique<Fiber>());

  Launch l;
  l.grid = grid;
  l.block = block;
  l.nthreads = static_cast<int>(nthreads);
  l.cluster_x = static_cast<int>(cluster_x);
  l.cluster_launch = cluster_launch;
  l.body = body;
  l.ctx = ctx;
  // The environment seed varies every launch's schedule; set_schedule_seed
  // still tells launches apart under it.
  l.seed = g_seed;
  if (const char* env = std::getenv("EMU_SCHEDULE_SEED")) l.seed ^= std::strtoull(env, nullptr, 0);
  l.rng.seed(l.seed);
  l.dyn_bytes = dynamic_smem_bytes;
  // emu::launch: the static section first in the window, the dynamic memory
  // at the next 1024-byte boundary (as aligned as its host buffer, for TMA
  // and wgmma); a cluster launch has no static shared memory: address 0.
  l.dyn_base = cluster_launch ? 0 : static_cast<uint32_t>((static_bytes() + kDynAlign - 1) & ~(kDynAlign - 1));
  l.ctas.resize(cluster_x);
  for (Cta& c : l.ctas) {
    c.warps.resize((nthreads + 31) / 32);
    // Exactly the requested size (ASan flags any byte past it), 1024-byte aligned.
    l.dyn_mem.emplace_back(static_cast<unsigned char*>(::operator new[](dynamic_smem_bytes, std::align_val_t(kDynAlign))),
                           [](unsigned char* p) { ::operator delete[](p, std::align_val_t(kDynAlign)); });
    c.dyn = l.dyn_mem.back().get();
  }
  ++g_stats.launches;

  // Blocks (clusters) in order, x fastest; a cluster launch shuffles the
  // clusters' order (a last-block-reduces pattern meets varied orders).
  std::vector<uint3> firsts;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; x += cluster_x) firsts.push_back(uint3{x, y, z});
  if (cluster_launch) std::shuffle(firsts.begin(), firsts.end(), l.rng);

  tl_launch = &l;
  gridDim = grid;
  blockDim = block;
  for (size_t i = 0; i < firsts.size() && !l.error; ++i) {
    l.late_delivery = cluster_launch && l.rng() % 2 == 0;
    run_cluster(l, firsts[i]);
  }
  for (const HeldStore& h : l.held) std::memcpy(h.dst, h.bytes, h.n);  // the launch's end: all visible
  l.held.clear();
  tl_launch = nullptr;
  blockIdx = uint3{0, 0, 0};
  if (l.error) std::rethrow_exception(l.error);
}
}  // namespace

void run_launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, Body body, void* ctx) {
  run_grid("emu::launch", grid, block, 1, false, dynamic_smem_bytes, body, ctx);
}

void run_cluster_launch(dim3 grid, dim3 block, unsigned cluster_x, size_t dynamic_smem_bytes, Body body, void* ctx) {
  run_grid("emu::launch_cluster", grid, block, cluster_x, true, dynamic_smem_bytes, body, ctx);
}

int syncthreads_count(int predicate) {
  Launch& l = need("__syncthreads");
  Fiber& f = *l.cur;
  Cta& c = cta_of(l, f);
  Warp& w = c.warps[f.warp];
  const unsigned bit = 1u << f.lane;
  if (w.arrived != 0 && (w.mask & bit) != 0)
    fail(std::string("__syncthreads: lanes ") + hex(w.arrived) + " of this warp wait for this lane in " + w.op);
  f.state = State::AtBarrier;
  w.at_barrier |= bit;
  c.bar_count += predicate != 0;
  if (++c.at_barrier == c.live) release_barrier(l, c);
  yield(l, f);
  return c.bar_result;
}

void syncthreads() { (void)syncthreads_count(0); }

// ---- global stores that other CTAs read after a fence -----------------------
namespace {
uint64_t writer_id(const Launch& l) {
  const Fiber& f = *l.cur;
  return l.ctas[static_cast<size_t>(f.cta)].linear * static_cast<uint64_t>(l.nthreads) + static_cast<uint64_t>(f.linear);
}
}  // namespace

void held_store(void* dst, const void* src, size_t bytes) {
  Launch& l = need("st_global_for_peers");
  if (bytes > sizeof(HeldStore::bytes)) fail("st_global_for_peers: at most 16 bytes per store");
  HeldStore h{writer_id(l), dst, {}, bytes};
  std::memcpy(h.bytes, src, bytes);
  l.held.push_back(h);
  ++g_stats.held_stores;
}

void threadfence() {
  Launch& l = need("__threadfence");
  const uint64_t me = writer_id(l);
  size_t kept = 0;
  for (size_t i = 0; i < l.held.size(); ++i) {
    if (l.held[i].writer == me) std::memcpy(l.held[i].dst, l.held[i].bytes, l.held[i].n);
    else l.held[kept++] = l.held[i];
  }
  l.held.resize(kept);
}

unsigned ballot(const char* op, unsigned mask, int predicate) {
  Launch& l = need(op);
  Fiber& f = *l.cur;
  Warp& w = cta_of(l, f).warps[f.warp];
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
  return ~cta_of(l, *l.cur).warps[l.cur->warp].exited;
}

uint64_t shfl(const char* op, unsigned mask, uint64_t value, int rule, int arg, int width) {
  Launch& l = need(op);
  Fiber& f = *l.cur;
  Warp& w = cta_of(l, f).warps[f.warp];
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

unsigned char* dynamic_smem() {
  Launch& l = need("dynamic_smem");
  return cta_of(l, *l.cur).dyn;
}

uint32_t smem_offset(const void* p) {
  Launch& l = need("smem_addr");
  if (in_range(p, 0, static_lo(), static_bytes())) {
    if (l.cluster_launch)
      fail("smem_addr: a static __shared__ variable in a cluster launch (one instance per kernel in the emulation: "
           "cluster kernels must use dynamic shared memory only)");
    return static_cast<uint32_t>(static_cast<const char*>(p) - static_lo());
  }
  const unsigned char* dyn = cta_of(l, *l.cur).dyn;
  if (in_range(p, 0, dyn, l.dyn_bytes))
    return l.dyn_base + static_cast<uint32_t>(static_cast<const unsigned char*>(p) - dyn);
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
  Warp& w = cta_of(l, f).warps[f.warp];
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
  Warp& w = cta_of(l, f).warps[f.warp];
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

// ---------------------------------------------------------------------------
// Services of the sm_90a instructions (emu_sm90_runtime.cpp): the calling
// thread, the blocks' memory, yield points, parking, and the barriers that
// are scheduling (named, warpgroup, cluster).
// ---------------------------------------------------------------------------
ThreadPos current_thread(const char* op) {
  Launch& l = need(op);
  const Fiber& f = *l.cur;
  return ThreadPos{f.cta, f.linear, f.warp, f.lane};
}
int cluster_size() { return need("cluster_nctarank").cluster_x; }
int block_threads() { return need("block_threads").nthreads; }
unsigned char* cta_dynamic_smem(int rank) { return tl_launch->ctas.at(static_cast<size_t>(rank)).dyn; }
size_t dynamic_smem_bytes() { return tl_launch->dyn_bytes; }
uint32_t dynamic_smem_base() { return tl_launch->dyn_base; }
uint64_t schedule_random() { return tl_launch->rng(); }

void yield_point(bool progress) {
  Launch& l = need("yield_point");
  make_ready(l, *l.cur, false, progress);
  yield(l, *l.cur);
}

void park(const void* key) {
  Launch& l = need("park");
  park_fiber(l, *l.cur, key, true);
}

void wake(const void* key) {
  Launch& l = *tl_launch;
  std::vector<int> still;
  for (int i : l.parked) {
    Fiber& f = *g_fibers[i];
    if (f.park_key == key) make_ready(l, f);
    else still.push_back(i);
  }
  l.parked.swap(still);
}

void warpgroup_sync(const char* op) {
  Launch& l = need(op);
  Fiber& f = *l.cur;
  const int wg = f.linear / 128;
  if ((wg + 1) * 128 > l.nthreads)
    fail(std::string(op) + ": warpgroup " + std::to_string(wg) + " is incomplete (" + std::to_string(l.nthreads) +
         " threads per block; a warpgroup is 128)");
  group_barrier(l, f, cta_of(l, f).warpgroups[static_cast<size_t>(wg)], op, 128);
}

void named_barrier(uint32_t id, uint32_t nthreads) {
  Launch& l = need("named_barrier_sync");
  Fiber& f = *l.cur;
  if (id < 1 || id > 15) fail("named_barrier_sync: id " + std::to_string(id) + " is not in 1..15");
  if (nthreads == 0 || nthreads % 32 != 0 || nthreads > static_cast<uint32_t>(l.nthreads))
    fail("named_barrier_sync: " + std::to_string(nthreads) + " threads: a multiple of 32 in [32, " +
         std::to_string(l.nthreads) + "]");
  GroupBarrier& b = cta_of(l, f).named[id];
  if (b.waiters.size() + 1 == nthreads) ++g_stats.named_barriers;
  group_barrier(l, f, b, "named_barrier_sync", static_cast<int>(nthreads));
}

void cluster_arrive() {
  Launch& l = need("cluster_arrive");
  Fiber& f = *l.cur;
  if (f.cluster_arrived) fail("cluster_arrive: arrived again without cluster_wait");
  f.cluster_arrived = true;
  f.cluster_phase = l.cluster_phase;
  if (++l.cluster_arrivals == l.live) release_cluster_barrier(l);
}

void cluster_wait() {
  Launch& l = need("cluster_wait");
  Fiber& f = *l.cur;
  if (!f.cluster_arrived) fail("cluster_wait: no cluster_arrive before it");
  f.cluster_arrived = false;
  if (l.cluster_phase == f.cluster_phase) park_fiber(l, f, &l.cluster_phase, false);
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
