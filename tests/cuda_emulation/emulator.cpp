// The CPU emulation of CUDA declared in include/cuda_emulation.h (cuBLAS's part of
// include/cublas_v2.h is cublas.cpp's).
//
// Kernels: the blocks of a launch run one after another, in a shuffled order (a cooperative
// launch's side by side, taking turns where a thread pauses in a spin-wait); the threads of a block run as fibers
// on one host thread, switching only where a thread waits: at __syncthreads and at
// warp shuffles. A block's warps run one at a time, each as far as it can before the next. A barrier opens when every thread it needs has arrived; a thread that waits
// for a barrier no other thread can reach (a shuffle after some lanes returned, __syncthreads
// in divergent code) fails the launch, and the failure is sticky, as a fault on a GPU is.
//
// Memory: device and pinned allocations come from the host heap, recorded by address so that
// copies, GEMM operands and cudaPointerGetAttributes can be checked against them.
#include <execinfo.h>
#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cuda_emulation.h"
#include "emulator_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define DSV3EMU_ASAN 1
#endif

namespace dsv3emu {

uint3 g_thread_idx{0, 0, 0}, g_block_idx{0, 0, 0};
dim3 g_block_dim, g_grid_dim;

namespace {

// ---- errors ----

cudaError_t g_last_error = cudaSuccess;    // returned and cleared by cudaGetLastError
cudaError_t g_sticky_error = cudaSuccess;  // a failed kernel: every later call reports it

cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess) g_last_error = e;
  return e;
}

// A failed kernel: said once on stderr (the only place its reason can go), then sticky.
void kernel_failed(const std::string& why) {
  std::fprintf(stderr, "cuda emulation: %s\n", why.c_str());
  g_sticky_error = g_last_error = cudaErrorLaunchFailure;
}

// ---- memory ----

enum class Kind { Device, Pinned };
struct Allocation {
  size_t bytes;
  Kind kind;
};
std::map<uintptr_t, Allocation> g_allocations;  // by start address
size_t g_device_bytes = 0;
constexpr size_t kDeviceMemory = size_t(16) << 30;  // what cudaMemGetInfo reports as total
size_t g_device_limit = kDeviceMemory;  // allocations past it fail (set_device_memory_limit)

// The allocation holding [p, p + n), if one does.
const Allocation* find_allocation(const void* p, size_t n, uintptr_t* start = nullptr) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocations.upper_bound(a);
  if (it == g_allocations.begin()) return nullptr;
  --it;
  if (a < it->first || n > it->second.bytes || a - it->first > it->second.bytes - n) return nullptr;
  if (start) *start = it->first;
  return &it->second;
}

bool is_device(const void* p) {
  const Allocation* a = find_allocation(p, 1);
  return a && a->kind == Kind::Device;
}

bool is_pinned(const void* p) {
  const Allocation* a = find_allocation(p, 1);
  return a && a->kind == Kind::Pinned;
}

// Device bytes [p, p + n) must lie inside one device allocation.
bool device_range_ok(const void* p, size_t n, const char* what) {
  const Allocation* a = find_allocation(p, n ? n : 1);
  if (a && a->kind == Kind::Device) return true;
  std::fprintf(stderr, "cuda emulation: %s: device range %p + %zu bytes is not inside one device "
               "allocation\n", what, p, n);
  return false;
}

// The garbage of never-written memory: 0x7fc17fc1 is NaN as a float and as both of its
// bfloat16 halves, and as an int32 a large positive number, not -1 (which dsv3's kernels read
// as "no token").
void poison(void* p, size_t n) {
  static const unsigned char kPattern[4] = {0xc1, 0x7f, 0xc1, 0x7f};
  unsigned char* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = kPattern[i % 4];
}

cudaError_t allocate(void** p, size_t n, Kind kind) {
  if (!p) return set_error(cudaErrorInvalidValue);
  if (kind == Kind::Device && g_device_bytes + n > g_device_limit)
    return set_error(cudaErrorMemoryAllocation);
  void* mem = nullptr;
  if (posix_memalign(&mem, 256, n ? n : 1) != 0) return set_error(cudaErrorMemoryAllocation);
  // New device memory holds garbage on a GPU: here a pattern, so that code reading memory it
  // never wrote shows it.
  if (kind == Kind::Device) poison(mem, n);
  g_allocations[reinterpret_cast<uintptr_t>(mem)] = {n, kind};
  if (kind == Kind::Device) g_device_bytes += n;
  *p = mem;
  return cudaSuccess;
}

cudaError_t release(void* p, Kind kind) {
  if (!p) return cudaSuccess;
  auto it = g_allocations.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_allocations.end() || it->second.kind != kind)
    return set_error(kind == Kind::Device ? cudaErrorInvalidDevicePointer : cudaErrorInvalidValue);
  if (kind == Kind::Device) g_device_bytes -= it->second.bytes;
  g_allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}

// ---- streams and graph capture ----
//
// Work is deferred, as on a GPU: each stream keeps a queue, and queued work runs only when the
// host waits for it (cudaStreamSynchronize, cudaDeviceSynchronize, cudaEventSynchronize, a
// synchronous copy to the host, cudaFree). So host code that reads a result, or rewrites the
// source of an asynchronous copy, before waiting sees what a GPU would let it see. The legacy
// stream (nullptr) is ordered with every blocking stream: before one of them runs an item,
// the other's earlier items run. Non-blocking streams are ordered with nothing: their items
// run as soon as they are queued (after the events they wait on), the earliest a GPU may run
// them, so work that forgets to wait for its inputs reads them unwritten.

struct Pending {
  uint64_t seq;  // the order in which work was queued, over all streams
  std::function<void()> work;
};
struct Stream {
  unsigned flags = 0;
  std::deque<Pending> queue;
};
Stream g_legacy;                 // the legacy default stream, cudaStream_t nullptr
std::set<Stream*> g_streams;     // streams from cudaStreamCreateWithFlags, not yet destroyed
uint64_t g_next_seq = 1;
constexpr uint64_t kEverything = ~uint64_t(0);

Stream& stream_of(cudaStream_t s) { return s ? *reinterpret_cast<Stream*>(s) : g_legacy; }
bool blocking(const Stream& st) { return &st == &g_legacy || !(st.flags & cudaStreamNonBlocking); }

// Runs `st`'s queued items numbered up to `upto`, each after the earlier items of the streams
// it is ordered with. After a failure (a sticky error) the rest is dropped, as a faulted GPU
// context runs nothing more.
void drain(Stream& st, uint64_t upto) {
  while (!st.queue.empty() && st.queue.front().seq <= upto) {
    const uint64_t seq = st.queue.front().seq;
    if (&st == &g_legacy) {
      for (Stream* other : g_streams)
        if (blocking(*other)) drain(*other, seq - 1);
    } else if (blocking(st)) {
      drain(g_legacy, seq - 1);
    }
    Pending item = std::move(st.queue.front());
    st.queue.pop_front();
    if (g_sticky_error == cudaSuccess) item.work();
  }
}

// Everything queued anywhere, in the order it was queued.
void drain_all() {
  for (;;) {
    Stream* first = g_legacy.queue.empty() ? nullptr : &g_legacy;
    for (Stream* st : g_streams)
      if (!st->queue.empty() && (!first || st->queue.front().seq < first->queue.front().seq))
        first = st;
    if (!first) return;
    drain(*first, first->queue.front().seq);
  }
}

// The host waits for the legacy stream and so for the blocking streams' queued work.
void drain_blocking() {
  drain(g_legacy, kEverything);
  for (Stream* st : g_streams)
    if (blocking(*st)) drain(*st, kEverything);
}

cudaError_t sticky_or_success() {
  return g_sticky_error != cudaSuccess ? set_error(g_sticky_error) : cudaSuccess;
}

struct Graph {
  std::vector<std::function<void()>> nodes;  // in the order they were queued
};

// The capture in progress (one at a time is all the code under test needs).
struct Capture {
  cudaStream_t stream = nullptr;
  bool active = false;
  bool invalidated = false;
  Graph* graph = nullptr;
  bool non_blocking = false;  // the captured stream was made with cudaStreamNonBlocking
} g_capture;

// Queues `work` on stream `s`, records it into the capture, or refuses it; `seq` (optional)
// receives the item's number. `synchronous`: an API that waits for the device (not allowed
// while capturing); the caller waits.
cudaError_t submit(cudaStream_t s, bool synchronous, const char* what, std::function<void()> work,
                   uint64_t* seq = nullptr) {
  if (g_sticky_error != cudaSuccess) return set_error(g_sticky_error);
  if (g_capture.active) {
    if (s == g_capture.stream && !synchronous) {
      g_capture.graph->nodes.push_back(std::move(work));
      return cudaSuccess;
    }
    // A synchronous call is not allowed during a (global or thread-local) capture; the legacy
    // stream synchronises with every blocking stream, so work on it breaks the capture of one.
    if (synchronous) {
      std::fprintf(stderr, "cuda emulation: %s, a synchronous call, while a stream is being "
                   "captured: the capture is invalidated\n", what);
      g_capture.invalidated = true;
      return set_error(cudaErrorStreamCaptureUnsupported);
    }
    if (s == nullptr && !g_capture.non_blocking) {
      std::fprintf(stderr, "cuda emulation: %s on the legacy stream while a blocking stream is "
                   "being captured: the capture is invalidated\n", what);
      g_capture.invalidated = true;
      return set_error(cudaErrorStreamCaptureImplicit);
    }
  }
  const uint64_t n = g_next_seq++;
  Stream& st = stream_of(s);
  st.queue.push_back({n, std::move(work)});
  if (seq) *seq = n;
  if (!blocking(st)) drain(st, n);
  return sticky_or_success();
}

// ---- fibers ----

constexpr size_t kStackBytes = size_t(256) << 10;
constexpr size_t kPage = 4096;

// A fiber stack with an inaccessible guard page below it, so an overflow faults.
struct FiberStack {
  char* base = nullptr;
  FiberStack() {
    void* m = mmap(nullptr, kStackBytes + kPage, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      std::perror("cuda emulation: fiber stack");
      std::abort();
    }
    mprotect(m, kPage, PROT_NONE);
    base = static_cast<char*>(m);
  }
  ~FiberStack() { munmap(base, kStackBytes + kPage); }
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;
  char* stack() const { return base + kPage; }
};

// A finished fiber never returns from its last switch, so AddressSanitizer's redzones of its
// frames stay marked on the stack the next block's fiber reuses: cleared on every reuse.
void unpoison_stack(char* stack, size_t bytes) {
#ifdef DSV3EMU_ASAN
  __asan_unpoison_memory_region(stack, bytes);
#else
  (void)stack, (void)bytes;
#endif
}

// Switching between fibers. On x86-64 a few instructions that save and restore the callee-saved
// registers and the stack pointer: ucontext's swapcontext also saves the signal mask, a system
// call per switch, which made the emulated tests ten times slower. Elsewhere, ucontext.
#if defined(__x86_64__)
extern "C" void dsv3emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl dsv3emu_switch
  .type dsv3emu_switch, @function
dsv3emu_switch:
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
  .size dsv3emu_switch, .-dsv3emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

struct Context {
  void* sp = nullptr;
  const void* stack = nullptr;  // its stack's lowest address and size (for AddressSanitizer)
  size_t stack_bytes = 0;
};
// A new fiber's stack, laid out as dsv3emu_switch leaves a suspended one: the control words,
// six registers, and `entry` as the return address (at a 16-byte boundary, so that `entry`
// starts with the stack aligned as after a call).
void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  unpoison_stack(stack, bytes);
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 16);  // the return address slot, 16-aligned
  sp[0] = reinterpret_cast<uint64_t>(entry);
  sp -= 6;
  for (int i = 0; i < 6; ++i) sp[i] = 0;  // r15 r14 r13 r12 rbx rbp
  sp -= 1;
  const uint32_t mxcsr = 0x1f80, fpu_cw = 0x037f;  // the ABI's initial values
  sp[0] = uint64_t(mxcsr) | (uint64_t(fpu_cw) << 32);
  c.sp = sp;
  c.stack = stack;
  c.stack_bytes = bytes;
}
void raw_switch(Context& from, Context& to) { dsv3emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
  const void* stack = nullptr;
  size_t stack_bytes = 0;
};
void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  unpoison_stack(stack, bytes);
  c.stack = stack;
  c.stack_bytes = bytes;
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void raw_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// AddressSanitizer must be told when the stack changes (it checks accesses against the current
// stack's bounds). `finished`: `from` never runs again.
void switch_context(Context& from, Context& to, bool finished = false) {
#ifdef DSV3EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake_stack, to.stack, to.stack_bytes);
  raw_switch(from, to);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  (void)finished;
  raw_switch(from, to);
#endif
}

// The scheduler runs on the host thread's own stack (asked once: for the main thread the answer
// comes from reading /proc/self/maps).
void set_thread_stack(Context& c) {
  if (c.stack) return;
  pthread_attr_t attr;
  void* addr = nullptr;
  size_t bytes = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &addr, &bytes);
    pthread_attr_destroy(&attr);
  }
  c.stack = addr;
  c.stack_bytes = bytes;
}

// Yielded: at __nanosleep, a spin-wait's pause; ready again once the other blocks have had a turn.
enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Yielded, Done };

struct Thread {
  Context ctx;
  State state = State::Ready;
  uint3 idx{0, 0, 0};
  int linear = 0;
};

struct WarpExchange {
  uint32_t value[32];                                               // shuffles
  alignas(16) unsigned char record[32][internal::kWarpRecordBytes];  // internal::warp_gather
  const char* what[32];  // the instruction each lane gathers for
};

uint64_t g_kernels_run = 0;  // kernel executions so far
uint64_t g_blocks_run = 0;   // block executions so far

// A block of the running launch.
struct Block {
  const char* kernel = "";
  const std::function<void()>* body = nullptr;
  std::vector<Thread> threads;
  std::vector<WarpExchange> warps;
  std::unique_ptr<unsigned char[]> shared;  // dynamic shared memory, exactly as large as asked
  size_t dynamic_bytes = 0, shared_limit = 0;  // the launch's dynamic size, its total limit
  struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
  };
  // Static __shared__ variables of the running block, by declaration site.
  struct StaticSlot {
    std::unique_ptr<void, FreeDeleter> storage;
    size_t bytes;
  };
  std::map<const void*, StaticSlot> statics;
  size_t static_bytes = 0;
  int current = -1;
  bool failed = false;
  Context scheduler;
  uint3 idx{0, 0, 0};
  uint64_t serial = 0;    // g_blocks_run when it started
  size_t first_stack = 0;  // its threads' fiber stacks: g_stacks[first_stack + i]
};
Block g_single;            // the block of a plain launch (one at a time), reused
Block* g_cur = &g_single;  // the block being run
std::vector<std::unique_ptr<FiberStack>> g_stacks;

// A cooperative launch runs its blocks side by side (a GPU guarantees them co-resident), so a
// block may wait for another: a spin-wait pauses at __nanosleep and the other blocks take
// turns. A launch whose spin-waits pause this often has blocks waiting on each other forever.
bool g_cooperative = false;
uint64_t g_yields = 0;  // pauses in the running launch
constexpr uint64_t kMaxYields = uint64_t(1) << 22;
// The emulated device, for occupancy and cooperative launches: an H100's SM count is 132; a
// few here, each holding at most two blocks, keep a cooperative launch's fibers few.
constexpr int kEmulatedSMs = 4, kBlocksPerSM = 2;

// The running thread returns for good.
[[noreturn]] void exit_thread() {
  Thread& t = g_cur->threads[size_t(g_cur->current)];
  t.state = State::Done;
  switch_context(t.ctx, g_cur->scheduler, true);
  std::abort();  // never resumed
}

void fiber_main() {
#ifdef DSV3EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);  // the first entry
#endif
  (*g_cur->body)();
  exit_thread();
}

// The running thread waits in `state` until the scheduler releases it.
void wait_as(State state) {
  Thread& t = g_cur->threads[size_t(g_cur->current)];
  t.state = state;
  switch_context(t.ctx, g_cur->scheduler);
  if (g_cur->failed) exit_thread();  // the launch failed while this thread waited
}

std::string where(const Thread& t) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "block (%u, %u, %u) thread (%u, %u, %u)", g_block_idx.x,
                g_block_idx.y, g_block_idx.z, t.idx.x, t.idx.y, t.idx.z);
  return buf;
}

void fail_block(const std::string& why) {
  g_cur->failed = true;
  kernel_failed(std::string("kernel ") + g_cur->kernel + ": " + why);
}

// Gives each thread of block b a fresh fiber, ready to run the kernel from its start.
void start_block(Block& b) {
  for (size_t i = 0; i < b.threads.size(); ++i) {
    Thread& t = b.threads[i];
    t.state = State::Ready;
    make_context(t.ctx, g_stacks[b.first_stack + i]->stack(), kStackBytes, fiber_main);
  }
}

// Lets every fiber of a failed block that waits (at a barrier or paused) leave through wait_as;
// their stacks are reused.
void drain_block(Block& b) {
  b.failed = true;
  for (size_t i = 0; i < b.threads.size(); ++i) {
    Thread& t = b.threads[i];
    if (t.state == State::Done || t.state == State::Ready) continue;
    b.current = int(i);
    switch_context(b.scheduler, t.ctx);
  }
}

enum class Step { Finished, Paused, Failed };

// Runs the threads of block g_cur until they have all returned (Finished), the launch fails, or
// no thread can go on but some paused in a spin-wait (Paused: they run again at the block's
// next turn, after the other blocks have had theirs).
Step step_block() {
  Block& b = *g_cur;
  std::vector<Thread>& ts = b.threads;
  const int n = int(ts.size());
  const int warps = (n + 31) / 32;
  // Threads run to their next barrier in ascending order in even launches, descending in odd
  // ones: a read that a missing barrier leaves unordered after a write sees the write in one
  // of the two.
  const bool descending = (g_kernels_run & 1) != 0;
  for (Thread& t : ts)  // paused in a spin-wait at the end of the block's last turn
    if (t.state == State::Yielded) t.state = State::Ready;
  // Runs the ready threads of warp w (lanes in the launch's order) to their next wait.
  const auto run_warp = [&](int w) {
    const int lo = w * 32, hi = std::min(n, lo + 32);
    for (int k = lo; k < hi; ++k) {
      const int i = descending ? lo + hi - 1 - k : k;
      Thread& t = ts[size_t(i)];
      if (t.state != State::Ready) continue;
      b.current = i;
      g_thread_idx = t.idx;
      switch_context(b.scheduler, t.ctx);
      if (b.failed) return;
    }
  };
  for (;;) {
    // One warp at a time, as far as it can go (through its shuffles and other warp-wide steps)
    // before the next starts: the warps drift as far apart as __syncthreads allows, so a read
    // that a missing barrier leaves racing with another warp's write (a tile reloaded while
    // another warp still reads it) sees the write in one of the two warp orders.
    for (int k = 0; k < warps && !b.failed; ++k) {
      const int w = descending ? warps - 1 - k : k;
      const int lo = w * 32, hi = std::min(n, lo + 32);
      for (;;) {
        run_warp(w);
        if (b.failed || hi - lo < 32) break;
        int waiting = 0;
        for (int i = lo; i < hi; ++i) waiting += ts[size_t(i)].state == State::AtWarpBarrier;
        if (waiting != 32) break;  // none waiting, or lanes stuck (diagnosed below)
        for (int i = lo; i < hi; ++i) ts[size_t(i)].state = State::Ready;
      }
    }
    if (b.failed) break;
    bool released = false;
    // A warp barrier opens when all 32 lanes wait at it.
    for (int w = 0; w < warps; ++w) {
      const int lo = w * 32, hi = std::min(n, lo + 32);
      int waiting = 0;
      for (int i = lo; i < hi; ++i) waiting += ts[size_t(i)].state == State::AtWarpBarrier;
      if (waiting == 0) continue;
      if (hi - lo < 32) {
        fail_block("a warp-wide instruction (shuffle, ldmatrix, mma) in a warp of " +
                   std::to_string(hi - lo) + " threads (the block size is not a multiple of 32)");
        break;
      }
      if (waiting == 32) {
        for (int i = lo; i < hi; ++i) ts[size_t(i)].state = State::Ready;
        released = true;
      }
    }
    if (b.failed) break;
    int done = 0, at_block = 0, paused = 0;
    for (const Thread& t : ts) {
      done += t.state == State::Done;
      at_block += t.state == State::AtBlockBarrier;
      paused += t.state == State::Yielded;
    }
    if (done == n) break;
    if (!released && at_block == n - done && at_block > 0) {
      if (done > 0) {
        fail_block("__syncthreads reached by " + std::to_string(at_block) + " threads while " +
                   std::to_string(done) + " have returned");
        break;
      }
      for (Thread& t : ts) t.state = State::Ready;
      released = true;
    }
    if (!released && paused > 0) {  // spinning: the other blocks' turn (then ready again)
      b.current = -1;
      return Step::Paused;
    }
    if (!released) {  // threads wait at barriers no one else can reach
      for (const Thread& t : ts) {
        if (t.state == State::AtWarpBarrier) {
          fail_block("a warp-wide instruction (shuffle, ldmatrix, mma) at " + where(t) +
                     " waits for lanes of its warp that returned or wait elsewhere");
          break;
        }
      }
      if (!b.failed) fail_block("threads wait at different barriers (divergent __syncthreads)");
      break;
    }
  }
  if (b.failed) {
    drain_block(b);
    b.current = -1;
    return Step::Failed;
  }
  b.current = -1;
  return Step::Finished;
}

// Sets up block b of a launch: its index, fresh poisoned shared memory, its fiber stacks.
void prepare_block(Block& b, const LaunchConfig& cfg, uint3 idx, size_t first_stack) {
  const int n = int(cfg.block.x * cfg.block.y * cfg.block.z);
  b.idx = idx;
  b.failed = false;
  b.current = -1;
  b.first_stack = first_stack;
  b.serial = ++g_blocks_run;
  b.threads.assign(size_t(n), Thread{});
  b.warps.assign(size_t((n + 31) / 32), WarpExchange{});
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[size_t(i)];
    t.linear = i;
    t.idx = {unsigned(i) % cfg.block.x, (unsigned(i) / cfg.block.x) % cfg.block.y,
             unsigned(i) / (cfg.block.x * cfg.block.y)};
  }
  // Dynamic shared memory starts as garbage on a GPU: the poison pattern here. A fresh
  // allocation of the launch's size per block, so AddressSanitizer sees overruns.
  b.shared.reset(new unsigned char[cfg.shared]);
  poison(b.shared.get(), cfg.shared);
  b.statics.clear();
  b.static_bytes = 0;
  set_thread_stack(b.scheduler);
  while (g_stacks.size() < first_stack + size_t(n))
    g_stacks.push_back(std::make_unique<FiberStack>());
  start_block(b);
}

void run_kernel(const char* name, const LaunchConfig& cfg, size_t shared_limit,
                const std::function<void()>& body) {
  ++g_kernels_run;
  g_block_dim = cfg.block;
  g_grid_dim = cfg.grid;
  g_cooperative = cfg.cooperative;
  g_yields = 0;
  // A GPU runs blocks in no promised order: here in a shuffled one (seeded by the launch
  // count, so a run is reproducible), so that code relying on an order fails here too.
  std::vector<uint3> order;
  order.reserve(size_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z);
  for (unsigned z = 0; z < cfg.grid.z; ++z)
    for (unsigned y = 0; y < cfg.grid.y; ++y)
      for (unsigned x = 0; x < cfg.grid.x; ++x) order.push_back({x, y, z});
  std::mt19937_64 rng(g_kernels_run);
  std::shuffle(order.begin(), order.end(), rng);
  const auto setup = [&](Block& b) {
    b.kernel = name;
    b.body = &body;
    b.dynamic_bytes = cfg.shared;
    b.shared_limit = shared_limit;
  };
  if (!cfg.cooperative) {  // one block after another
    for (const uint3& idx : order) {
      g_cur = &g_single;
      setup(g_single);
      prepare_block(g_single, cfg, idx, 0);
      g_block_idx = idx;
      Step step;
      while ((step = step_block()) == Step::Paused) {
      }
      if (step == Step::Failed) break;
    }
    g_cur = &g_single;
    return;
  }
  // Cooperative: every block started, then turns in the shuffled order until all have returned.
  const size_t n = size_t(cfg.block.x) * cfg.block.y * cfg.block.z;
  std::vector<std::unique_ptr<Block>> blocks;
  for (size_t i = 0; i < order.size(); ++i) {
    blocks.push_back(std::make_unique<Block>());
    g_cur = blocks.back().get();
    setup(*g_cur);
    prepare_block(*g_cur, cfg, order[i], i * n);
  }
  std::vector<Block*> live;
  for (auto& b : blocks) live.push_back(b.get());
  bool failed = false;
  while (!live.empty() && !failed) {
    std::vector<Block*> still;
    for (Block* b : live) {
      g_cur = b;
      g_block_idx = b->idx;
      const Step step = step_block();
      if (step == Step::Failed) {
        failed = true;
        break;
      }
      if (step == Step::Paused) still.push_back(b);
    }
    live.swap(still);
  }
  if (failed)
    for (auto& b : blocks) {
      if (b->failed) continue;
      g_cur = b.get();
      g_block_idx = b->idx;
      drain_block(*b);
    }
  g_cur = &g_single;
  g_cooperative = false;
}

}  // namespace

void sync_block() {
  if (g_cur->current < 0) {
    std::fprintf(stderr, "cuda emulation: __syncthreads outside a kernel\n");
    std::abort();
  }
  wait_as(State::AtBlockBarrier);
}

void pause_thread() {
  if (g_cur->current < 0) {
    std::fprintf(stderr, "cuda emulation: __nanosleep outside a kernel\n");
    std::abort();
  }
  if (++g_yields > kMaxYields)
    internal::fail_thread(
        g_cooperative
            ? "a spin-wait that never ends: the blocks of this cooperative launch wait on each "
              "other"
            : "a spin-wait that never ends: the launch is not cooperative, so its blocks run one "
              "after another here (a GPU promises no more), and a block waiting for another "
              "may wait forever");
  wait_as(State::Yielded);
}

uint32_t warp_exchange(unsigned mask, uint32_t mine, int lane_arg, bool xor_lane, int width,
                       const char* what) {
  if (g_cur->current < 0) {
    std::fprintf(stderr, "cuda emulation: %s outside a kernel\n", what);
    std::abort();
  }
  const Thread& t = g_cur->threads[size_t(g_cur->current)];
  if (mask != 0xffffffffu || width != 32) {
    fail_block(std::string(what) + " at " + where(t) +
               ": only full-warp shuffles (mask 0xffffffff, width 32) are emulated");
    exit_thread();
  }
  const int lane = t.linear % 32;
  WarpExchange& w = g_cur->warps[size_t(t.linear / 32)];
  w.value[lane] = mine;
  wait_as(State::AtWarpBarrier);  // every lane has written
  const int src = (xor_lane ? (lane ^ lane_arg) : lane_arg) & 31;
  const uint32_t got = w.value[src];
  wait_as(State::AtWarpBarrier);  // every lane has read: the slots may be written again
  return got;
}

uint32_t warp_ballot(unsigned mask, bool pred, const char* what) {
  // A full-warp exchange in which every lane reads every lane's predicate.
  if (g_cur->current < 0) {
    std::fprintf(stderr, "cuda emulation: %s outside a kernel\n", what);
    std::abort();
  }
  const Thread& t = g_cur->threads[size_t(g_cur->current)];
  if (mask != 0xffffffffu) {
    fail_block(std::string(what) + " at " + where(t) +
               ": only full-warp ballots (mask 0xffffffff) are emulated");
    exit_thread();
  }
  WarpExchange& w = g_cur->warps[size_t(t.linear / 32)];
  w.value[t.linear % 32] = pred ? 1u : 0u;
  wait_as(State::AtWarpBarrier);  // every lane has written
  uint32_t bits = 0;
  for (int lane = 0; lane < 32; ++lane)
    if (w.value[lane]) bits |= 1u << lane;
  wait_as(State::AtWarpBarrier);  // every lane has read: the slots may be written again
  return bits;
}

void* dynamic_shared_base() { return g_cur->shared.get(); }

namespace internal {

int thread_linear() { return g_cur->threads[size_t(g_cur->current)].linear; }
uint64_t block_serial() { return g_cur->serial; }
bool cooperative_launch() { return g_cooperative; }

const unsigned char* warp_gather(const void* mine, size_t bytes, const char* what) {
  if (g_cur->current < 0) {
    std::fprintf(stderr, "cuda emulation: %s outside a kernel\n", what);
    std::abort();
  }
  if (bytes > kWarpRecordBytes) std::abort();  // the emulator's own mistake
  const Thread& t = g_cur->threads[size_t(g_cur->current)];
  WarpExchange& w = g_cur->warps[size_t(t.linear / 32)];
  std::memcpy(w.record[t.linear % 32], mine, bytes);
  w.what[t.linear % 32] = what;
  wait_as(State::AtWarpBarrier);  // every lane has written
  for (int lane = 0; lane < 32; ++lane)
    if (std::strcmp(w.what[lane], what) != 0)
      fail_thread(std::string("lanes of one warp at different warp-wide instructions (") + what +
                  " and " + w.what[lane] + ")");
  return &w.record[0][0];
}

void warp_release() { wait_as(State::AtWarpBarrier); }

bool in_shared_memory(const void* p, size_t bytes) {
  const auto inside = [&](const void* base, size_t size) {
    const auto a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(base);
    return a >= b && bytes <= size && a - b <= size - bytes;
  };
  if (inside(g_cur->shared.get(), g_cur->dynamic_bytes)) return true;
  for (const auto& [site, slot] : g_cur->statics) {
    (void)site;
    if (inside(slot.storage.get(), slot.bytes)) return true;
  }
  return false;
}

bool in_global_memory(const void* p, size_t bytes) { return find_allocation(p, bytes) != nullptr; }

bool device_range(const void* p, size_t bytes, const char* what) {
  return device_range_ok(p, bytes, what);
}

cudaError_t enqueue(cudaStream_t s, const char* what, std::function<void()> work) {
  return submit(s, false, what, std::move(work));
}

void fail_queued_work(const std::string& why) { kernel_failed(why); }

void fail_thread(std::string why) {
  {
    // Every string is gone before the fiber leaves for good (it never unwinds): the caller's
    // message was moved in here, and this one ends with the block.
    const std::string message =
        std::move(why) + " at " + where(g_cur->threads[size_t(g_cur->current)]);
    fail_block(message);
  }
  exit_thread();
}

}  // namespace internal


void* block_shared_slot(const void* site, size_t bytes, size_t align) {
  auto it = g_cur->statics.find(site);
  if (it != g_cur->statics.end()) return it->second.storage.get();
  // A GPU's limits: 48 KiB of static shared memory, and static plus dynamic within the launch's
  // limit (raised by the opt-in).
  g_cur->static_bytes += bytes;
  if (g_cur->static_bytes > 48 * 1024 ||
      g_cur->static_bytes + g_cur->dynamic_bytes > g_cur->shared_limit) {
    fail_block("static shared memory of " + std::to_string(g_cur->static_bytes) +
               " bytes (with " + std::to_string(g_cur->dynamic_bytes) +
               " dynamic) is over the limit");
    exit_thread();
  }
  void* p = nullptr;
  if (posix_memalign(&p, std::max<size_t>(align, 16), bytes ? bytes : 1) != 0) std::abort();
  poison(p, bytes);
  g_cur->statics.emplace(site,
                         Block::StaticSlot{std::unique_ptr<void, Block::FreeDeleter>(p), bytes});
  return p;
}

void check_global_load(const void* p, size_t bytes, const char* what) {
  // Device memory, or pinned host memory (mapped into the device's address space).
  if (find_allocation(p, bytes)) return;
  const Thread& t = g_cur->threads[size_t(g_cur->current)];
  fail_block(std::string(what) + " at " + where(t) + " reads " + std::to_string(bytes) +
             " bytes that are not global memory (shared or local memory faults on a GPU)");
  exit_thread();
}

bool pointer_argument_ok(const char* kernel, int index, const void* p) {
  if (!p || find_allocation(p, 0)) return true;  // device or pinned; one past the end too
  kernel_failed(std::string("kernel ") + kernel + ": argument " + std::to_string(index) +
                " is not device or pinned memory (a host pointer faults on a GPU)");
  return false;
}

void clear_sticky_error() { g_sticky_error = g_last_error = cudaSuccess; }

uint64_t kernels_run() { return g_kernels_run; }
size_t device_bytes_in_use() { return g_device_bytes; }
void set_device_memory_limit(size_t bytes) { g_device_limit = std::min(bytes, kDeviceMemory); }
uint64_t blocks_run() { return g_blocks_run; }

namespace {
HostCalls g_host_calls;
}  // namespace

// DSV3_EMU_TRACE_HOST_CALLS=1: a backtrace on stderr at each counted call, to find where a
// wait or an allocation comes from (pipe it through c++filt).
void trace_host_call(const char* api) {
  static const bool on = std::getenv("DSV3_EMU_TRACE_HOST_CALLS") != nullptr;
  if (!on) return;
  void* frames[16];
  const int n = backtrace(frames, 16);
  std::fprintf(stderr, "cuda emulation: %s from\n", api);
  backtrace_symbols_fd(frames, n, 2);
}
void note_host_wait(const char* api) {
  ++g_host_calls.waits[api];
  trace_host_call(api);
}
void note_allocation(const char* api) {
  ++g_host_calls.allocations[api];
  trace_host_call(api);
}
HostCalls host_calls() { return g_host_calls; }
void poison_device(void* p, size_t n, cudaStream_t s) {
  if (n == 0) return;
  if (!device_range_ok(p, n, "poison_device")) {
    set_error(cudaErrorInvalidValue);
    return;
  }
  submit(s, false, "poison_device", [=] { poison(p, n); });
}
uint64_t HostCalls::total_waits() const {
  uint64_t n = 0;
  for (const auto& [api, count] : waits) n += count;
  return n;
}
uint64_t HostCalls::total_allocations() const {
  uint64_t n = 0;
  for (const auto& [api, count] : allocations) n += count;
  return n;
}

namespace {
// An H100's opt-in limit of dynamic shared memory per block; 48 KiB without the opt-in.
constexpr int kSharedOptin = 227 * 1024;
std::map<const void*, int> g_max_dynamic_shared;  // per kernel, as raised by cudaFuncSetAttribute
}  // namespace

static int resident_blocks(int threads, size_t dynamic_shared) {
  if (threads < 1 || threads > 1024) return 0;
  // An SM: 2,048 threads and 228 KiB of shared memory (1 KiB of it reserved per block).
  const size_t by_shared = size_t(228 * 1024) / (dynamic_shared + 1024);
  return int(std::min<size_t>({size_t(kBlocksPerSM), size_t(2048 / threads), by_shared}));
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > kSharedOptin) return set_error(cudaErrorInvalidValue);
  g_max_dynamic_shared[kernel] = bytes;
  return cudaSuccess;
}

void enqueue_kernel(const char* name, const void* kernel, const LaunchConfig& cfg,
                    std::function<void()> body) {
  const uint64_t threads = uint64_t(cfg.block.x) * cfg.block.y * cfg.block.z;
  auto raised = g_max_dynamic_shared.find(kernel);
  const size_t shared_limit =
      std::max<size_t>(48 * 1024, raised == g_max_dynamic_shared.end() ? 0 : size_t(raised->second));
  // The limits of every GPU dsv3 targets (compute capability 8.0 and later).
  if (threads == 0 || threads > 1024 || cfg.block.z > 64 || cfg.grid.x == 0 || cfg.grid.y == 0 ||
      cfg.grid.z == 0 || cfg.grid.x > 0x7fffffffu || cfg.grid.y > 65535 || cfg.grid.z > 65535 ||
      cfg.shared > shared_limit) {
    std::fprintf(stderr, "cuda emulation: kernel %s: invalid launch grid (%u, %u, %u) block "
                 "(%u, %u, %u) shared %zu bytes\n", name, cfg.grid.x, cfg.grid.y, cfg.grid.z,
                 cfg.block.x, cfg.block.y, cfg.block.z, cfg.shared);
    set_error(cudaErrorInvalidConfiguration);
    return;
  }
  if (cfg.cooperative) {
    // Every block must be resident at once (cudaLaunchCooperativeKernel's rule).
    const uint64_t blocks = uint64_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
    const uint64_t resident = uint64_t(kEmulatedSMs) * resident_blocks(int(threads), cfg.shared);
    if (blocks > resident) {
      std::fprintf(stderr, "cuda emulation: kernel %s: a cooperative launch of %llu blocks, more "
                   "than the %llu the device holds at once\n", name,
                   static_cast<unsigned long long>(blocks), static_cast<unsigned long long>(resident));
      set_error(cudaErrorCooperativeLaunchTooLarge);
      return;
    }
  }
  submit(cfg.stream, false, name,
         [name, cfg, shared_limit, body = std::move(body)] {
           run_kernel(name, cfg, shared_limit, body);
         });
}

}  // namespace dsv3emu

using namespace dsv3emu;

// ---- runtime API ----

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return set_error(cudaErrorInvalidValue);
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = kSharedOptin; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = kEmulatedSMs; return cudaSuccess;
    case cudaDevAttrCooperativeLaunch: *value = 1; return cudaSuccess;
  }
  return set_error(cudaErrorInvalidValue);
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* kernel,
                                                          int block_size, size_t dynamic_shared) {
  (void)kernel;
  *blocks = resident_blocks(block_size, dynamic_shared);
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = g_last_error;
  g_last_error = g_sticky_error;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    case cudaErrorNotReady: return "cudaErrorNotReady";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulated kernel failed)";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    default: return cudaGetErrorName(e);
  }
}

cudaError_t cudaDeviceSynchronize() {
  if (g_capture.active) {
    g_capture.invalidated = true;
    return set_error(cudaErrorStreamCaptureUnsupported);
  }
  note_host_wait("cudaDeviceSynchronize");
  drain_all();
  return sticky_or_success();
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = g_device_limit > g_device_bytes ? g_device_limit - g_device_bytes : 0;
  *total_bytes = kDeviceMemory;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t n) {
  if (g_capture.active) {  // not a stream-ordered call: not allowed in a thread-local capture
    g_capture.invalidated = true;
    return set_error(cudaErrorStreamCaptureUnsupported);
  }
  note_allocation("cudaMalloc");
  return allocate(p, n, Kind::Device);
}
// cudaFree and cudaFreeHost wait for the device first, as CUDA's do: queued work may use the
// memory.
cudaError_t cudaFree(void* p) {
  if (g_capture.active) {
    g_capture.invalidated = true;
    return set_error(cudaErrorStreamCaptureUnsupported);
  }
  note_host_wait("cudaFree");
  drain_all();
  return release(p, Kind::Device);
}
cudaError_t cudaMallocHost(void** p, size_t n) {
  note_allocation("cudaMallocHost");
  return allocate(p, n, Kind::Pinned);
}
cudaError_t cudaFreeHost(void* p) {
  note_host_wait("cudaFreeHost");
  drain_all();
  return release(p, Kind::Pinned);
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  if (!pool || device != 0) return set_error(cudaErrorInvalidValue);
  static char the_pool;
  *pool = reinterpret_cast<cudaMemPool_t>(&the_pool);
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  if (!pool || !value || attr != cudaMemPoolAttrReleaseThreshold)
    return set_error(cudaErrorInvalidValue);
  return cudaSuccess;
}

cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t s) {
  if (g_capture.active && s == g_capture.stream) {
    std::fprintf(stderr, "cuda emulation: cudaMallocAsync inside a capture is not emulated\n");
    return set_error(cudaErrorNotSupported);
  }
  note_allocation("cudaMallocAsync");
  return allocate(p, n, Kind::Device);
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  if (!p) return cudaSuccess;
  auto it = g_allocations.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_allocations.end() || it->second.kind != Kind::Device)
    return set_error(cudaErrorInvalidDevicePointer);
  if (g_capture.active) {  // a captured free would run again at every replay
    std::fprintf(stderr, "cuda emulation: cudaFreeAsync inside a capture is not emulated\n");
    g_capture.invalidated = true;
    return set_error(cudaErrorNotSupported);
  }
  return submit(s, false, "cudaFreeAsync", [p] { release(p, Kind::Device); });
}

namespace {

// Checks one side of a copy: device memory where the kind says device, host memory (not a
// device allocation) where it says host.
bool copy_side_ok(const void* p, size_t n, bool device, const char* what) {
  if (device) return device_range_ok(p, n, what);
  if (is_device(p)) {
    std::fprintf(stderr, "cuda emulation: %s: %p is device memory where the copy kind says host\n",
                 what, p);
    return false;
  }
  return true;
}

// The extent in bytes of `rows` rows of `width` bytes, `pitch` apart.
size_t pitched_extent(size_t pitch, size_t width, size_t rows) {
  return rows == 0 ? 0 : pitch * (rows - 1) + width;
}

cudaError_t copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                   size_t height, cudaMemcpyKind kind, cudaStream_t s, bool synchronous,
                   const char* what) {
  if (width == 0 || height == 0) return cudaSuccess;
  if (dpitch < width || spitch < width) return set_error(cudaErrorInvalidValue);
  bool dst_dev, src_dev;
  switch (kind) {
    case cudaMemcpyHostToHost: dst_dev = src_dev = false; break;
    case cudaMemcpyHostToDevice: dst_dev = true, src_dev = false; break;
    case cudaMemcpyDeviceToHost: dst_dev = false, src_dev = true; break;
    case cudaMemcpyDeviceToDevice: dst_dev = src_dev = true; break;
    default: dst_dev = is_device(dst), src_dev = is_device(src); break;
  }
  if (!copy_side_ok(dst, pitched_extent(dpitch, width, height), dst_dev, what) ||
      !copy_side_ok(src, pitched_extent(spitch, width, height), src_dev, what))
    return set_error(cudaErrorInvalidValue);
  // When the host side is pageable memory, the driver stages it: a host-to-device copy reads
  // its source before the call returns (the grouped GEMM's pointer arrays in
  // kernels/cuda/context.cpp rely on this, which CUDA's notes only say "might" happen), and a synchronous copy to pageable memory returns when
  // it is done. Pinned memory is read and written when the copy runs, in stream order.
  const bool staged_source = !src_dev && !is_pinned(src);
  std::shared_ptr<std::vector<char>> staged;
  if (staged_source) {
    staged = std::make_shared<std::vector<char>>(width * height);
    for (size_t r = 0; r < height; ++r)
      std::memcpy(staged->data() + r * width, static_cast<const char*>(src) + r * spitch, width);
  }
  uint64_t seq = 0;
  const cudaError_t e = submit(s, synchronous, what, [=] {
    for (size_t r = 0; r < height; ++r)
      std::memmove(static_cast<char*>(dst) + r * dpitch,
                   staged ? staged->data() + r * width : static_cast<const char*>(src) + r * spitch,
                   width);
  }, &seq);
  if (e != cudaSuccess) return e;
  // A synchronous copy waits unless it is device to device; one between host buffers is
  // synchronous even when asynchronous.
  if ((synchronous && !(src_dev && dst_dev)) || (!src_dev && !dst_dev)) {
    note_host_wait(what);
    drain(stream_of(s), seq);
    return sticky_or_success();
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  return copy2d(dst, n, src, n, n, 1, kind, nullptr, true, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t s) {
  return copy2d(dst, n, src, n, n, 1, kind, s, false, "cudaMemcpyAsync");
}
cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                         size_t height, cudaMemcpyKind kind) {
  return copy2d(dst, dpitch, src, spitch, width, height, kind, nullptr, true, "cudaMemcpy2D");
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  if (!device_range_ok(p, n, "cudaMemsetAsync")) return set_error(cudaErrorInvalidValue);
  return submit(s, false, "cudaMemsetAsync", [=] { std::memset(p, value, n); });
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p) {
  *attr = {};
  const Allocation* a = find_allocation(p, 1);
  if (!a) return cudaSuccess;  // an ordinary host pointer: "unregistered", not an error
  attr->type = a->kind == Kind::Device ? cudaMemoryTypeDevice : cudaMemoryTypeHost;
  attr->devicePointer = const_cast<void*>(p);
  if (a->kind == Kind::Pinned) attr->hostPointer = const_cast<void*>(p);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  Stream* st = new Stream{flags, {}};
  g_streams.insert(st);
  *s = reinterpret_cast<cudaStream_t>(st);
  return cudaSuccess;
}
// Work queued on a destroyed stream still runs, as on a GPU.
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  Stream* st = reinterpret_cast<Stream*>(s);
  if (!st || !g_streams.count(st)) return set_error(cudaErrorInvalidResourceHandle);
  note_host_wait("cudaStreamDestroy");
  drain(*st, kEverything);
  g_streams.erase(st);
  delete st;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (g_capture.active && s == g_capture.stream) {
    g_capture.invalidated = true;
    return set_error(cudaErrorStreamCaptureUnsupported);
  }
  note_host_wait("cudaStreamSynchronize");
  if (s == nullptr)
    drain_blocking();
  else
    drain(stream_of(s), kEverything);
  return sticky_or_success();
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  if (s == nullptr || g_capture.active) return set_error(cudaErrorStreamCaptureUnsupported);
  g_capture = {s, true, false, new Graph,
               (reinterpret_cast<Stream*>(s)->flags & cudaStreamNonBlocking) != 0};
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  if (!g_capture.active || s != g_capture.stream) return set_error(cudaErrorInvalidValue);
  Graph* g = g_capture.graph;
  const bool invalidated = g_capture.invalidated;
  g_capture = {};
  if (invalidated) {
    delete g;
    *graph = nullptr;
    return set_error(cudaErrorStreamCaptureInvalidated);
  }
  *graph = reinterpret_cast<cudaGraph_t>(g);
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (!graph) return set_error(cudaErrorInvalidValue);
  *exec = reinterpret_cast<cudaGraphExec_t>(new Graph(*reinterpret_cast<Graph*>(graph)));
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  if (!exec) return set_error(cudaErrorInvalidResourceHandle);
  // The nodes as they are now: the executable graph may be destroyed before the launch runs.
  auto nodes = std::make_shared<const std::vector<std::function<void()>>>(
      reinterpret_cast<const Graph*>(exec)->nodes);
  return submit(s, false, "cudaGraphLaunch", [nodes] {
    for (const auto& node : *nodes) {
      if (g_sticky_error != cudaSuccess) return;
      node();
    }
  });
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete reinterpret_cast<Graph*>(graph);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete reinterpret_cast<Graph*>(exec);
  return cudaSuccess;
}

namespace {
struct Event {
  std::chrono::steady_clock::time_point at;
  Stream* stream = nullptr;  // where it was last recorded
  uint64_t seq = 0;          // the record's place in that stream's queue
  bool done = false;         // the record has run
};
}  // namespace

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new Event);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
// Work queued on s after the wait runs after the event's last record (at once if it was never
// recorded): the wait, when s reaches it, runs the recording stream up to the record.
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  const Event* ev = reinterpret_cast<Event*>(e);
  Stream* from = ev->stream;
  const uint64_t seq = ev->seq;
  if (!from) return sticky_or_success();
  return submit(s, false, "cudaStreamWaitEvent", [from, seq] {
    if (from == &g_legacy || g_streams.count(from)) drain(*from, seq);
  });
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<Event*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  Event* ev = reinterpret_cast<Event*>(e);
  ev->done = false;
  ev->stream = &stream_of(s);
  return submit(s, false, "cudaEventRecord", [ev] {
    ev->at = std::chrono::steady_clock::now();
    ev->done = true;
  }, &ev->seq);
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  Event* ev = reinterpret_cast<Event*>(e);
  note_host_wait("cudaEventSynchronize");
  if (ev->stream == &g_legacy || g_streams.count(ev->stream)) drain(*ev->stream, ev->seq);
  return sticky_or_success();
}
// Both events must have been reached, or CUDA answers cudaErrorNotReady.
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  const Event* a = reinterpret_cast<Event*>(start);
  const Event* b = reinterpret_cast<Event*>(stop);
  if (!a->done || !b->done) return set_error(cudaErrorNotReady);
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}
