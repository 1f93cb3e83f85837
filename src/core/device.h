#pragma once
// The memory side of the backend interface (DESIGN.md section 3, habit 6): allocate, free,
// copy and fill bytes on a device. The CPU needs none of this; for CUDA the functions are in
// core/cuda/device.cpp when the backend is built, and in device_nocuda.cpp (which only fails,
// with a message that says why) when it is not.
//
// Every function that touches CUDA memory throws dsv3::Error, never returns an error code.
#include <cstddef>
#include <functional>
#include <initializer_list>
#include <span>

#include "core/tensor.h"

namespace dsv3::device {

// True when this build contains the CUDA backend.
bool cuda_built();
// The number of CUDA devices visible to this process (0 when none, or when not built).
int cuda_device_count();
// Throws "CUDA device requested but ..." unless CUDA is built and a device is visible.
void require_cuda(const char* what);

// Device memory (CUDA). alloc returns memory aligned to at least 256 bytes; a zero-byte request
// still returns a valid pointer. The memory is not initialised.
void* cuda_alloc(size_t bytes);
void cuda_free(void* p);

// Copies n bytes between any two devices (host <-> device, device <-> device, host <-> host),
// ordered after all work already queued on the backend's stream. Into host memory: complete on
// return (the host waits for the device). Host to device: the source may be reused once this
// returns, and the host does not wait for queued work (the copy runs in stream order, so
// every later kernel sees it).
void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t n);
// Device memory read back to the host, several regions with one wait: each region is queued
// as an asynchronous copy into pinned staging memory, the host waits once for the stream, runs
// the wait check (below), then copies the regions out of the staging memory.
struct ToHost {
  void* dst;        // host memory
  const void* src;  // device memory
  size_t bytes;
};
// Queued on the legacy stream, as every copy here: kernels/cuda/context.h's stream().
void copy_to_host(std::span<const ToHost> regions);
inline void copy_to_host(std::initializer_list<ToHost> regions) {
  copy_to_host(std::span<const ToHost>(regions.begin(), regions.size()));
}
// Sets n bytes to zero (asynchronously on the device's stream for CUDA).
void zero(void* p, Device device, size_t n);
// Waits for all queued device work (no-op for the CPU), then runs the wait check.
void synchronize(Device device);
// The wait check: `bytes` of device memory at `record` come back with every wait above (in
// the same wait), and `check` inspects that copy and may throw (the kernels' index checks raise
// a recorded bad token id or position there: kernels/cuda/index_errors.h).
void set_wait_check(const void* record, size_t bytes, void (*check)(const void* host_copy));
// Milliseconds of device time the work that `f` queues on the backend's stream takes, measured
// with CUDA events recorded before and after it (waits for that work to finish). For benchmarks:
// unlike a host clock it leaves out launch latency and host work between launches.
double cuda_elapsed_ms(const std::function<void()>& f);

// True when p points into memory from cuda_alloc (or any other CUDA device allocation). Costs
// nothing while this process has never allocated device memory; otherwise one runtime query.
// Ops whose arguments are raw pointers (gemm, the layout moves) dispatch on it.
bool is_cuda_pointer(const void* p);

}  // namespace dsv3::device
