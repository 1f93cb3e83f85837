// The memory functions of core/device.h on CUDA (compiled only when the backend is built).
//
// Everything runs on one stream, the legacy default stream (0), so a copy or a kernel launch is
// ordered after everything queued before it without explicit events. Kernels in kernels/cuda/
// launch on the same stream (kernels/cuda/context.h). A later multi-stream design (overlapping
// communication) changes this in one place.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "core/device.h"

namespace dsv3::device {
namespace {

// Set by the first successful allocation: until then no pointer can be a device pointer, and
// is_cuda_pointer answers without asking the runtime (a CPU run of a CUDA build pays nothing).
std::atomic<bool> g_allocated{false};

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("{}: CUDA error {} ({})", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

}  // namespace

bool cuda_built() { return true; }

int cuda_device_count() {
  // Asked once: the answer cannot change during a run, and the first call initialises the
  // runtime (slow); with no driver or no GPU it fails, which means zero devices here.
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the error so later calls do not see it
      return 0;
    }
    return n;
  }();
  return count;
}

void require_cuda(const char* what) {
  if (cuda_device_count() > 0) return;
  int driver = 0;
  cudaDriverGetVersion(&driver);
  fail("{}: CUDA device requested but no CUDA device is visible ({}; check nvidia-smi and "
       "CUDA_VISIBLE_DEVICES)",
       what, driver ? "the driver is loaded but reports no GPU" : "no CUDA driver is loaded");
}

namespace {
// The ops' stream-ordered scratch (cudaMallocAsync: BF16 operands, per-row losses, pointer
// tables) comes from the device's default memory pool. Its default release threshold (0) hands
// unused pool memory back to the driver at every synchronisation, and a training step waits
// once per MoE layer, so the same scratch would be mapped anew many times a step. Keeping it
// in the pool makes a repeat allocation a pool lookup. Done once, before the first allocation.
void keep_pool_memory() {
  static const bool done = [] {
    int device = 0;
    cudaMemPool_t pool = nullptr;
    check(cudaGetDevice(&device), "memory pool");
    check(cudaDeviceGetDefaultMemPool(&pool, device), "memory pool");
    uint64_t keep_all = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all),
          "memory pool");
    return true;
  }();
  (void)done;
}
}  // namespace

void* cuda_alloc(size_t bytes) {
  require_cuda("cuda_alloc");
  keep_pool_memory();
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 256);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    fail("cuda_alloc: cannot allocate {} MiB of device memory ({} of {} MiB free): {}",
         bytes >> 20, free_b >> 20, total_b >> 20, cudaGetErrorString(e));
  }
  g_allocated.store(true, std::memory_order_relaxed);
  return p;
}

void cuda_free(void* p) {
  // Called from destructors: never throws. cudaFree synchronises the device.
  if (p) cudaFree(p);
}

void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t n) {
  if (n == 0) return;
  if (dst_device == Device::CPU && src_device == Device::CPU) {
    std::memmove(dst, src, n);
    return;
  }
  require_cuda("copy");
  if (dst_device == Device::CUDA && src_device == Device::CPU) {
    // Queued, not waited for: from pageable memory (dsv3's host tensors) the driver stages the
    // source before the call returns, or, as CUDA allows, makes the copy synchronous; either way
    // the source may be reused at once. A pinned source would be read later.
    check(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, nullptr), "copy");
    return;
  }
  // cudaMemcpyDefault: the runtime tells host from device pointers (unified addressing). The
  // plain (not Async) copy on the legacy stream waits for queued kernels; into host memory it
  // returns when done, between device buffers it is queued.
  check(cudaMemcpy(dst, src, n, cudaMemcpyDefault), "copy");
}

namespace {

// The wait check's device record (set_wait_check).
struct WaitCheck {
  const void* record = nullptr;
  size_t bytes = 0;
  void (*check)(const void*) = nullptr;
};
WaitCheck g_wait_check;

// Pinned host memory the readbacks land in: asynchronous copies into pageable memory would
// each be a wait. Grown on demand (the GPU is driven from one host thread).
struct Staging {
  char* base = nullptr;
  size_t capacity = 0;
  char* reserve(size_t bytes) {
    if (bytes <= capacity) return base;
    if (base) cudaFreeHost(base);
    base = nullptr;
    capacity = 0;
    void* p = nullptr;
    check(cudaMallocHost(&p, bytes), "copy_to_host");
    base = static_cast<char*>(p);
    capacity = bytes;
    return base;
  }
};
Staging g_staging;

size_t round_up16(size_t n) { return (n + 15) / 16 * 16; }

// Staging bytes in front of the regions for the wait check's record (0 when no check is set).
size_t record_space() { return g_wait_check.check ? round_up16(g_wait_check.bytes) : 0; }

// The wait shared by copy_to_host and synchronize: the wait check's record is queued into the
// front of the staging memory, `wait` waits, then the check runs on the copy (and may throw).
template <typename Wait>
void wait_and_check(char* staging, Wait wait) {
  if (g_wait_check.check)
    check(cudaMemcpyAsync(staging, g_wait_check.record, g_wait_check.bytes,
                          cudaMemcpyDeviceToHost, nullptr),
          "wait check");
  wait();
  if (g_wait_check.check) g_wait_check.check(staging);
}

}  // namespace

void set_wait_check(const void* record, size_t bytes, void (*check_fn)(const void*)) {
  g_wait_check = {record, bytes, check_fn};
}

void copy_to_host(std::span<const ToHost> regions) {
  require_cuda("copy_to_host");
  size_t total = record_space();
  for (const ToHost& r : regions) total += round_up16(r.bytes);
  char* staging = g_staging.reserve(std::max<size_t>(total, 16));
  size_t at = record_space();
  for (const ToHost& r : regions) {
    if (r.bytes)
      check(cudaMemcpyAsync(staging + at, r.src, r.bytes, cudaMemcpyDeviceToHost, nullptr),
            "copy_to_host");
    at += round_up16(r.bytes);
  }
  // The regions are copied out before the check, which may throw.
  wait_and_check(staging, [&] {
    check(cudaStreamSynchronize(nullptr), "copy_to_host");
    size_t from = record_space();
    for (const ToHost& r : regions) {
      if (r.bytes) std::memcpy(r.dst, staging + from, r.bytes);
      from += round_up16(r.bytes);
    }
  });
}

void zero(void* p, Device device, size_t n) {
  if (n == 0) return;
  if (device == Device::CPU) {
    std::memset(p, 0, n);
    return;
  }
  check(cudaMemsetAsync(p, 0, n, nullptr), "zero");
}

void synchronize(Device device) {
  if (device != Device::CUDA) return;
  char* staging = g_staging.reserve(std::max<size_t>(record_space(), 16));
  wait_and_check(staging, [] { check(cudaDeviceSynchronize(), "synchronize"); });
}

double cuda_elapsed_ms(const std::function<void()>& f) {
  require_cuda("cuda_elapsed_ms");
  cudaEvent_t start = nullptr, stop = nullptr;
  check(cudaEventCreate(&start), "cuda_elapsed_ms");
  if (cudaError_t e = cudaEventCreate(&stop); e != cudaSuccess) {
    cudaEventDestroy(start);
    check(e, "cuda_elapsed_ms");
  }
  float ms = 0.0f;
  cudaError_t e = cudaEventRecord(start, nullptr);
  if (e == cudaSuccess) {
    try {
      f();
    } catch (...) {
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
      throw;
    }
    e = cudaEventRecord(stop, nullptr);
  }
  if (e == cudaSuccess) e = cudaEventSynchronize(stop);
  if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  check(e, "cuda_elapsed_ms");
  return double(ms);
}

bool is_cuda_pointer(const void* p) {
  if (!p || !g_allocated.load(std::memory_order_relaxed)) return false;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

}  // namespace dsv3::device
