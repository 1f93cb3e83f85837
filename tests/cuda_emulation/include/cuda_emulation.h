#pragma once
// A CPU emulation of the part of CUDA that dsv3's backend uses: the kernel language
// (threadIdx, __shared__, __syncthreads, warp shuffles, atomics, bfloat16), the runtime (device
// memory, copies, streams, events, graph capture), the two cuBLAS GEMMs, and the warp-level
// tensor-core instructions of the BF16 attention kernels (mma.sync, ldmatrix, cp.async).
//
// Why: the backend's GPU tests (tests/gpu/) need a GPU, which is not always at hand; built
// against these headers instead of the toolkit's, the same sources and tests (the GPU inference
// tests, the op table's CUDA cases, `dsv3 parity --device cuda`) run on the CPU in every test
// run. It checks the code's logic (indexing, launch shapes, the host-side plan, graph capture
// rules, cuBLAS argument rules, copies within their allocations) and runs every block's threads
// as fibers, so shared memory, barriers and shuffles behave as on a GPU for code without data
// races. It does not check speed, races, the memory model or the GPU's own rounding of expf.
//
// Semantics kept strict where a GPU is undefined or fails:
// - a shuffle needs all 32 lanes of the warp at the same shuffle (a full mask), and
//   __syncthreads every live thread of the block; otherwise the launch fails (sticky error);
// - new device memory and each block's shared memory (dynamic and static) hold a pattern that
//   is NaN as floats, not zeros;
// - copies and GEMM operands must lie inside one device allocation;
// - a launch, copy or GEMM on the legacy stream while a stream is being captured invalidates
//   the capture; synchronous copies and allocations during a capture do too.
// - the blocks of a launch run in a shuffled order (seeded by the launch count), since a GPU
//   promises none.
// - a kernel's pointer arguments must point into device or pinned memory;
// - work is deferred: it runs when the host waits for it (a stream, event or device
//   synchronisation, a synchronous copy to the host, cudaFree), so reading a result before
//   waiting, or rewriting a pinned buffer an asynchronous copy has not read yet, shows.
// Queued work runs on one host thread in a valid order for its streams; blocks run one at a
// time, so atomics are plain and fences empty.
#include <math.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- the kernel language ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
// Every `__shared__` declaration is rewritten (rewrite_launches.cmake); one left over is an error.
#define __shared__ __shared___declaration_not_rewritten_for_the_emulation
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

namespace dsv3emu {
extern uint3 g_thread_idx, g_block_idx;
extern dim3 g_block_dim, g_grid_dim;
void sync_block();
void pause_thread();
uint32_t warp_exchange(unsigned mask, uint32_t mine, int lane_arg, bool xor_lane, int width,
                       const char* what);
uint32_t warp_ballot(unsigned mask, bool pred, const char* what);
void* dynamic_shared_base();
void clear_sticky_error();  // for the emulation's own tests of failing launches
uint64_t kernels_run();     // kernel executions so far (graph replays included)
uint64_t blocks_run();      // block executions so far
// Device memory: the bytes allocated now, and a lower limit past which cudaMalloc fails with
// cudaErrorMemoryAllocation and which cudaMemGetInfo's free bytes count to (for tests of what
// an out-of-memory error leaves behind; any value above the emulated 16 GiB restores it).
size_t device_bytes_in_use();
void set_device_memory_limit(size_t bytes);
// Host calls that wait for the device (synchronisations, synchronous copies other than device
// to device, cudaFree) and allocations (cudaMalloc, cudaMallocAsync, cudaMallocHost) so far,
// each counted under its API's name: tests check that a training step in its steady state
// waits only where it must and allocates nothing.
struct HostCalls {
  std::map<std::string, uint64_t> waits, allocations;
  uint64_t total_waits() const;
  uint64_t total_allocations() const;
};
HostCalls host_calls();
template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_base());
}
// A static `__shared__` variable (rewrite_launches.cmake turns `__shared__ T name[N];` into
// `auto& name = block_shared<T[N]>([] {});`, the lambda making each declaration its own site):
// storage of the running block, fresh and poisoned when the block first reaches the
// declaration, as a GPU's shared memory starts as garbage in every block.
void* block_shared_slot(const void* site, size_t bytes, size_t align);
template <typename T, typename Site>
T& block_shared(Site) {
  static const char site = 0;
  return *static_cast<T*>(block_shared_slot(&site, sizeof(T), alignof(T)));
}
}  // namespace dsv3emu

#define threadIdx (static_cast<const uint3&>(::dsv3emu::g_thread_idx))
#define blockIdx (static_cast<const uint3&>(::dsv3emu::g_block_idx))
#define blockDim (static_cast<const dim3&>(::dsv3emu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::dsv3emu::g_grid_dim))

inline void __syncthreads() { ::dsv3emu::sync_block(); }
// A spin-wait's pause: the other threads and, in a cooperative launch, the other blocks run.
inline void __nanosleep(unsigned) { ::dsv3emu::pause_thread(); }

inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline int __float_as_int(float f) { return int(__float_as_uint(f)); }
inline float __int_as_float(int i) { return __uint_as_float(uint32_t(i)); }

// Shuffles: lane `src` (or lane ^ xor_mask) of the warp, all 32 lanes taking part.
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask, int width = 32) {
  return __uint_as_float(
      ::dsv3emu::warp_exchange(mask, __float_as_uint(v), lane_mask, true, width, "__shfl_xor_sync"));
}
inline int __shfl_xor_sync(unsigned mask, int v, int lane_mask, int width = 32) {
  return int(::dsv3emu::warp_exchange(mask, uint32_t(v), lane_mask, true, width, "__shfl_xor_sync"));
}
inline float __shfl_sync(unsigned mask, float v, int src_lane, int width = 32) {
  return __uint_as_float(
      ::dsv3emu::warp_exchange(mask, __float_as_uint(v), src_lane, false, width, "__shfl_sync"));
}
inline int __shfl_sync(unsigned mask, int v, int src_lane, int width = 32) {
  return int(::dsv3emu::warp_exchange(mask, uint32_t(v), src_lane, false, width, "__shfl_sync"));
}

// Bit l: lane l's predicate; all 32 lanes take part.
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return ::dsv3emu::warp_ballot(mask, pred != 0, "__ballot_sync");
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }

// A warp barrier: every lane of the mask must arrive (a collective exchange of nothing), so the
// lanes' earlier shared-memory writes are done before any lane goes on.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)::dsv3emu::warp_exchange(mask, 0u, 0, true, 32, "__syncwarp");
}

// Every thread runs on one host thread, switching only at waits: atomics are plain
// read-modify-writes, fences have nothing to order.
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p = old + v;
  return old;
}
inline int atomicAdd(int* p, int v) {
  const int old = *p;
  *p = old + v;
  return old;
}
inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}
inline int atomicCAS(int* p, int compare, int v) {
  const int old = *p;
  if (old == compare) *p = v;
  return old;
}
inline void __threadfence() {}
// Cache-hinted loads are global-memory instructions (ld.global.cg): on shared or local memory
// they fault on a GPU, so here they fail the launch.
namespace dsv3emu {
void check_global_load(const void* p, size_t bytes, const char* what);
}
template <typename T>
inline T __ldcg(const T* p) {
  ::dsv3emu::check_global_load(p, sizeof(T), "__ldcg");
  return *p;
}

// CUDA's integer min and max (the device library's overloads; one type here, as dsv3 uses them).
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a < b ? b : a; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a < b ? b : a; }

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __log2f(float x) { return log2f(x); }
inline float2 make_float2(float x, float y) { return {x, y}; }
#define __align__(n) alignas(n)

// ---- bfloat16 (cuda_bf16.h) ----
struct __nv_bfloat16 {
  uint16_t x;
};
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float(uint32_t(b.x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};  // NaN stays NaN
  return {uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};                  // nearest even
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {u}; }
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;  // x in the low half
};
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

// ---- tensor-core and asynchronous-copy instructions (tensor_core.cpp) ----
// kernels/cuda/mma_bf16.cuh calls these in the emulated build where a GPU build has inline PTX:
// cp.async.cg 16 bytes (valid false: zero-fill), its commit_group / wait_group, ldmatrix .x4
// (row: this lane's row address), mma.sync.m16n8k16 bf16 x bf16 + float32, ex2.approx.ftz.
namespace dsv3emu {
void cp_async16(void* smem, const void* gmem, bool valid);
void cp_async_commit();
void cp_async_wait(int pending_groups);
void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans);
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
float ex2_approx_ftz(float x);
}  // namespace dsv3emu

// ---- the runtime (cuda_runtime_api.h) ----
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
  cudaErrorCooperativeLaunchTooLarge = 720,
  cudaErrorNotSupported = 801,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureImplicit = 906,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaMemoryType {
  cudaMemoryTypeUnregistered = 0,
  cudaMemoryTypeHost = 1,
  cudaMemoryTypeDevice = 2,
  cudaMemoryTypeManaged = 3,
};
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
  void* devicePointer;
  void* hostPointer;
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
constexpr unsigned cudaStreamNonBlocking = 0x01;
constexpr unsigned cudaEventDisableTiming = 0x02;

struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUevent_st;
using cudaEvent_t = CUevent_st*;
struct CUgraph_st;
using cudaGraph_t = CUgraph_st*;
struct CUgraphExec_st;
using cudaGraphExec_t = CUgraphExec_st*;

cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMalloc(void** p, size_t n);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t n);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t s);
namespace dsv3emu {
// Queues the fill of device memory with the emulation's garbage pattern (as new allocations
// hold): code that hands out reused device memory calls it so that reads of unwritten memory
// still show.
void poison_device(void* p, size_t n, cudaStream_t s);
}  // namespace dsv3emu
// The default memory pool: one per device; its release threshold is the one attribute dsv3
// sets (the emulation's pool holds nothing, so the value changes nothing).
struct CUmemPoolHandle_st;
using cudaMemPool_t = CUmemPoolHandle_st*;
enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold = 4 };
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
cudaError_t cudaFreeAsync(void* p, cudaStream_t s);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t s = nullptr);
cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                         size_t height, cudaMemcpyKind kind);
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s = nullptr);
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop);
cudaError_t cudaGetDevice(int* device);
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
// The emulated device has a few SMs of two resident blocks each (emulator.cpp).
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* kernel,
                                                          int block_size, size_t dynamic_shared);
template <typename... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*kernel)(P...),
                                                          int block_size, size_t dynamic_shared) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      blocks, reinterpret_cast<const void*>(kernel), block_size, dynamic_shared);
}
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
namespace dsv3emu {
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);
}
// Raises a kernel's dynamic shared memory limit (the only attribute dsv3 sets).
inline cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::dsv3emu::set_max_dynamic_shared(kernel, value);
}
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ---- kernel launches ----
// tests/cuda_emulation/rewrite_launches.cmake turns `kernel<<<grid, block, smem, stream>>>(args)`
// into `::dsv3emu::launch("kernel", kernel, {grid, block, smem, stream}, args)`.
namespace dsv3emu {
struct LaunchConfig {
  dim3 grid;
  dim3 block;
  size_t shared = 0;
  cudaStream_t stream = nullptr;
  // Cooperative (cudaLaunchAttributeCooperative): the blocks run side by side, so one may wait
  // for another; refused when the device cannot hold them all at once.
  bool cooperative = false;
};
void enqueue_kernel(const char* name, const void* kernel, const LaunchConfig& cfg,
                    std::function<void()> body);

// A pointer argument must be null or point into (or just past) device or pinned memory: a
// kernel handed a host pointer faults on a GPU. Otherwise the launch fails (sticky error).
// Pointers inside structure arguments are not seen.
bool pointer_argument_ok(const char* kernel, int index, const void* p);

template <typename... P, typename... A>
void launch(const char* name, void (*kernel)(P...), const LaunchConfig& cfg, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong argument count");
  // The arguments are copied at launch, converted to the parameter types, as CUDA does.
  std::tuple<std::decay_t<P>...> params{static_cast<std::decay_t<P>>(std::forward<A>(args))...};
  const bool pointers_ok = std::apply(
      [name](const auto&... v) {
        int index = 0;
        bool ok = true;
        auto check = [&](const auto& x) {
          if constexpr (std::is_pointer_v<std::decay_t<decltype(x)>>)
            ok = pointer_argument_ok(name, index, static_cast<const void*>(x)) && ok;
          ++index;
        };
        (check(v), ...);
        return ok;
      },
      params);
  if (!pointers_ok) return;
  enqueue_kernel(name, reinterpret_cast<const void*>(kernel), cfg,
                 [kernel, params]() { std::apply(kernel, params); });
}
}  // namespace dsv3emu

// cudaLaunchKernelEx with the attributes dsv3 sets: programmatic stream serialization (the
// emulation runs a stream's kernels one after another, so a programmatic launch is a plain one;
// griddepcontrol is a no-op off sm_90: kernels/cuda/common.cuh) and cooperative.
enum cudaLaunchAttributeID {
  cudaLaunchAttributeCooperative = 2,
  cudaLaunchAttributeProgrammaticStreamSerialization = 6,
};
union cudaLaunchAttributeValue {
  int cooperative;
  int programmaticStreamSerializationAllowed;
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
// CUDA's field order (gridDim, blockDim, ...: names the emulation's macros take), for callers'
// positional initialisation.
struct cudaLaunchConfig_t {
  dim3 grid;
  dim3 block;
  size_t dynamicSmemBytes = 0;
  cudaStream_t stream = nullptr;
  cudaLaunchAttribute* attrs = nullptr;
  unsigned numAttrs = 0;
};
template <typename... P, typename... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(P...),
                               A&&... args) {
  bool cooperative = false;
  for (unsigned i = 0; i < config->numAttrs; ++i) {
    const cudaLaunchAttribute& a = config->attrs[i];
    if (a.id == cudaLaunchAttributeCooperative) cooperative = a.val.cooperative != 0;
    else if (a.id != cudaLaunchAttributeProgrammaticStreamSerialization) return cudaErrorInvalidValue;
  }
  ::dsv3emu::launch("kernel (cudaLaunchKernelEx)", kernel,
                    {config->grid, config->block, config->dynamicSmemBytes, config->stream,
                     cooperative},
                    std::forward<A>(args)...);
  return cudaGetLastError();
}
