// The CPU emulation of CUDA itself (tests/cuda_emulation): barriers, shuffles and shared memory
// behave as on a GPU, misuse fails the launch instead of passing unnoticed, and the runtime
// enforces the rules the GPU code depends on (capture, copies within allocations, cuBLAS
// arguments). The GPU inference tests that run on top of it are only as good as this.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace {

struct Buffer {
  void* p = nullptr;
  explicit Buffer(size_t bytes) { EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess); }
  ~Buffer() { cudaFree(p); }
  float* f() const { return static_cast<float*>(p); }
};

// ---- kernels under test ----

// Block-wide reversal through shared memory: wrong without the barrier.
__global__ void reverse_kernel(const float* x, float* y) {
  __shared__ float tile[256];
  tile[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  y[threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

// Warp sums by butterfly shuffles, one per warp.
__global__ void warp_sum_kernel(const float* x, float* y) {
  float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) y[(blockIdx.x * blockDim.x + threadIdx.x) / 32] = v;
}

// Lanes 16..31 return before the shuffle: undefined on a GPU, a failed launch here.
__global__ void divergent_shuffle_kernel(float* y) {
  if (threadIdx.x % 32 >= 16) return;
  y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Half the block skips the barrier.
__global__ void divergent_barrier_kernel(float* y) {
  if (threadIdx.x < 32) __syncthreads();
  y[threadIdx.x] = 1.0f;
}

__global__ void dynamic_shared_kernel(float* y) {
  extern __shared__ float buf[];
  buf[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  y[blockIdx.x * blockDim.x + threadIdx.x] = buf[(threadIdx.x + 1) % blockDim.x] + blockIdx.x;
}

__global__ void fill_kernel(float* y, float v) { y[threadIdx.x] = v; }

// Every block adds its index to a count, waits (thread 0 spinning) until all blocks have, and
// then writes what it saw: correct only when the blocks run side by side.
__global__ void all_arrive_kernel(unsigned* count, unsigned* seen) {
  __shared__ unsigned total;
  if (threadIdx.x == 0) {
    atomicAdd(count, 1u);
    while (*static_cast<volatile unsigned*>(count) < gridDim.x) __nanosleep(32);
    total = *count;
  }
  __syncthreads();
  seen[blockIdx.x * blockDim.x + threadIdx.x] = total;
}

cudaError_t launch_all_arrive(unsigned blocks, bool cooperative, unsigned* count, unsigned* seen) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = cooperative ? 1 : 0;
  cudaLaunchConfig_t cfg = {dim3(blocks), dim3(64), 0, nullptr, attr, 1};
  return cudaLaunchKernelEx(&cfg, all_arrive_kernel, count, seen);
}

// __ldcg is a global load: fine on device memory, a fault on shared memory.
__global__ void cached_load_kernel(const float* x, float* y, bool from_shared) {
  __shared__ float tile[32];
  tile[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  y[threadIdx.x] = from_shared ? __ldcg(tile + threadIdx.x) : __ldcg(x + threadIdx.x);
}

// Clears the sticky error a failed launch leaves (a GPU would need a new process).
void reset_errors() { dsv3emu::clear_sticky_error(); }

TEST(CudaEmulation, BarrierOrdersSharedMemory) {
  Buffer x(256 * 4), y(256 * 4);
  std::vector<float> h(256), out(256);
  for (int i = 0; i < 256; ++i) h[size_t(i)] = float(i);
  ASSERT_EQ(cudaMemcpy(x.p, h.data(), 1024, cudaMemcpyHostToDevice), cudaSuccess);
  reverse_kernel<<<1, 256>>>(x.f(), y.f());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(out.data(), y.p, 1024, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(out[size_t(i)], float(255 - i));
}

TEST(CudaEmulation, ShufflesExchangeWithinAWarp) {
  Buffer x(128 * 2 * 4), y(8 * 4);
  std::vector<float> h(256), out(8);
  for (int i = 0; i < 256; ++i) h[size_t(i)] = float(i % 7) + float(i / 32) * 100.0f;
  ASSERT_EQ(cudaMemcpy(x.p, h.data(), 1024, cudaMemcpyHostToDevice), cudaSuccess);
  warp_sum_kernel<<<2, 128>>>(x.f(), y.f());
  ASSERT_EQ(cudaMemcpy(out.data(), y.p, 32, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int w = 0; w < 8; ++w) {
    float want = 0.0f;
    for (int l = 0; l < 32; ++l) want += h[size_t(w * 32 + l)];
    EXPECT_EQ(out[size_t(w)], want) << "warp " << w;
  }
}

TEST(CudaEmulation, DynamicSharedMemoryIsPerBlock) {
  Buffer y(3 * 64 * 4);
  dynamic_shared_kernel<<<3, 64, 64 * sizeof(float)>>>(y.f());
  std::vector<float> out(3 * 64);
  ASSERT_EQ(cudaMemcpy(out.data(), y.p, out.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 64; ++t) EXPECT_EQ(out[size_t(b * 64 + t)], float((t + 1) % 64 + b));
}

TEST(CudaEmulation, MisusedShuffleOrBarrierFailsTheLaunch) {
  Buffer y(64 * 4);
  divergent_shuffle_kernel<<<1, 64>>>(y.f());
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaMemcpy(y.p, y.p, 4, cudaMemcpyDeviceToDevice), cudaErrorLaunchFailure);  // sticky
  reset_errors();
  divergent_barrier_kernel<<<1, 64>>>(y.f());
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  reset_errors();
}

TEST(CudaEmulation, CooperativeBlocksRunSideBySide) {
  int sms = 0, per_sm = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  ASSERT_EQ(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, all_arrive_kernel, 64, 0),
            cudaSuccess);
  const unsigned blocks = unsigned(sms * per_sm);
  ASSERT_GT(blocks, 1u);
  Buffer count(4), seen(blocks * 64 * 4);
  ASSERT_EQ(cudaMemsetAsync(count.p, 0, 4), cudaSuccess);
  ASSERT_EQ(launch_all_arrive(blocks, true, static_cast<unsigned*>(count.p),
                              static_cast<unsigned*>(seen.p)),
            cudaSuccess);
  std::vector<unsigned> out(blocks * 64);
  ASSERT_EQ(cudaMemcpy(out.data(), seen.p, out.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (unsigned v : out) ASSERT_EQ(v, blocks);

  // More blocks than the device holds at once: refused.
  EXPECT_EQ(launch_all_arrive(blocks + 1, true, static_cast<unsigned*>(count.p),
                              static_cast<unsigned*>(seen.p)),
            cudaErrorCooperativeLaunchTooLarge);
  reset_errors();
  // The same wait in a plain launch, whose blocks run one after another: it never ends, and the
  // launch fails instead of hanging.
  ASSERT_EQ(cudaMemsetAsync(count.p, 0, 4), cudaSuccess);
  EXPECT_EQ(launch_all_arrive(2, false, static_cast<unsigned*>(count.p),
                              static_cast<unsigned*>(seen.p)),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  reset_errors();
}

TEST(CudaEmulation, HostPointerArgumentsFailTheLaunch) {
  Buffer y(32 * 4);
  EXPECT_TRUE(dsv3emu::pointer_argument_ok("k", 0, y.f() + 32)) << "one past the end is valid";
  EXPECT_TRUE(dsv3emu::pointer_argument_ok("k", 0, nullptr));
  std::vector<float> host(32);
  fill_kernel<<<1, 32>>>(host.data(), 1.0f);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  EXPECT_EQ(host[0], 0.0f) << "the kernel ran";
  reset_errors();
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 32 * 4), cudaSuccess);
  fill_kernel<<<1, 32>>>(pinned, 2.0f);  // mapped into the device's address space
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(pinned[31], 2.0f);
  cudaFreeHost(pinned);
}

TEST(CudaEmulation, GlobalOnlyLoadsOfSharedMemoryFail) {
  Buffer x(32 * 4), y(32 * 4);
  std::vector<float> h(32, 2.0f);
  ASSERT_EQ(cudaMemcpy(x.p, h.data(), 128, cudaMemcpyHostToDevice), cudaSuccess);
  cached_load_kernel<<<1, 32>>>(x.f(), y.f(), false);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cached_load_kernel<<<1, 32>>>(x.f(), y.f(), true);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  reset_errors();
}

// A 16-byte vector load from an address that is not 16-byte aligned faults on a GPU; here
// UndefinedBehaviorSanitizer stops the program (the kernel files are built with its alignment
// check).
__global__ void misaligned_load_kernel(const float* x, float* y) {
  const float4 v = *reinterpret_cast<const float4*>(x + 1);
  y[threadIdx.x] = v.x;
}

TEST(CudaEmulationDeathTest, MisalignedVectorLoadStops) {
  Buffer x(64), y(32 * 4);
  EXPECT_DEATH(
      {
        misaligned_load_kernel<<<1, 32>>>(x.f(), y.f());
        cudaDeviceSynchronize();
      },
      "misaligned address");
}

TEST(CudaEmulation, InvalidLaunchShapesAreRefused) {
  Buffer y(64 * 4);
  fill_kernel<<<dim3(1, 70000), 32>>>(y.f(), 1.0f);  // grid y beyond 65535
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  fill_kernel<<<1, 2048>>>(y.f(), 1.0f);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  fill_kernel<<<1, 32, 64 * 1024>>>(y.f(), 1.0f);  // dynamic shared memory beyond 48 KiB
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // not sticky
}

TEST(CudaEmulation, NewDeviceMemoryIsNotZero) {
  Buffer y(16);
  float h[4];
  ASSERT_EQ(cudaMemcpy(h, y.p, 16, cudaMemcpyDeviceToHost), cudaSuccess);
  for (float v : h) EXPECT_TRUE(std::isnan(v));
  int32_t ids[4];
  ASSERT_EQ(cudaMemcpy(ids, y.p, 16, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int32_t v : ids) EXPECT_GT(v, 1 << 20) << "not -1, which kernels read as 'no token'";
}

// Work is deferred until the host waits, as on a GPU: a result read before the wait, or a
// pinned source rewritten before its copy ran, shows; a non-blocking stream is not waited for
// by the legacy stream's synchronous copies.
TEST(CudaEmulation, WorkRunsWhenTheHostWaits) {
  Buffer d(32 * sizeof(float));
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 32 * sizeof(float)), cudaSuccess);
  for (int i = 0; i < 32; ++i) pinned[i] = 0.0f;

  // Device to pinned host, asynchronous: nothing before the wait.
  fill_kernel<<<1, 32>>>(d.f(), 7.0f);
  ASSERT_EQ(cudaMemcpyAsync(pinned, d.p, 4, cudaMemcpyDeviceToHost, nullptr), cudaSuccess);
  EXPECT_EQ(pinned[0], 0.0f) << "read before the host waited";
  ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  EXPECT_EQ(pinned[0], 7.0f);

  // A pinned source is read when the copy runs; a pageable one when the call returns.
  float back = 0.0f;
  pinned[0] = 1.0f;
  ASSERT_EQ(cudaMemcpyAsync(d.p, pinned, 4, cudaMemcpyHostToDevice, nullptr), cudaSuccess);
  pinned[0] = 2.0f;
  ASSERT_EQ(cudaMemcpy(&back, d.p, 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, 2.0f);
  std::vector<float> pageable{3.0f};
  ASSERT_EQ(cudaMemcpyAsync(d.p, pageable.data(), 4, cudaMemcpyHostToDevice, nullptr),
            cudaSuccess);
  pageable[0] = 4.0f;
  ASSERT_EQ(cudaMemcpy(&back, d.p, 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, 3.0f);

  // Events: no elapsed time until both records have run.
  cudaEvent_t start = nullptr, stop = nullptr;
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(start, nullptr), cudaSuccess);
  fill_kernel<<<1, 32>>>(d.f(), 5.0f);
  ASSERT_EQ(cudaEventRecord(stop, nullptr), cudaSuccess);
  float ms = -1.0f;
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaErrorNotReady);
  cudaGetLastError();
  ASSERT_EQ(cudaEventSynchronize(stop), cudaSuccess);
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
  EXPECT_GE(ms, 0.0f);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);

  // A non-blocking stream's work runs as soon as it is queued, the earliest a GPU may run it:
  // before the legacy stream's pending work, unless it waits for an event recorded there.
  cudaStream_t side = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking), cudaSuccess);
  fill_kernel<<<1, 32>>>(d.f(), 6.0f);
  fill_kernel<<<1, 32, 0, side>>>(d.f(), 9.0f);
  ASSERT_EQ(cudaMemcpy(&back, d.p, 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, 6.0f) << "the side stream's fill did not run before the legacy stream's";
  cudaEvent_t ready = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), cudaSuccess);
  fill_kernel<<<1, 32>>>(d.f(), 7.0f);
  ASSERT_EQ(cudaEventRecord(ready, nullptr), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(side, ready, 0), cudaSuccess);
  fill_kernel<<<1, 32, 0, side>>>(d.f(), 8.0f);
  ASSERT_EQ(cudaMemcpy(&back, d.p, 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, 8.0f) << "the side stream's fill ran before the work it waited for";
  ASSERT_EQ(cudaStreamSynchronize(side), cudaSuccess);
  ASSERT_EQ(cudaEventDestroy(ready), cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(side), cudaSuccess);
  ASSERT_EQ(cudaFreeHost(pinned), cudaSuccess);
}

TEST(CudaEmulation, CopiesMustStayInsideAnAllocation) {
  Buffer y(64);
  std::vector<char> h(128);
  EXPECT_EQ(cudaMemcpy(y.p, h.data(), 65, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(h.data(), static_cast<char*>(y.p) + 8, 64, cudaMemcpyDeviceToHost),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(h.data(), h.data() + 64, 8, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(y.p, h.data(), 64, cudaMemcpyHostToDevice), cudaSuccess);
  cudaPointerAttributes a{};
  ASSERT_EQ(cudaPointerGetAttributes(&a, static_cast<char*>(y.p) + 63), cudaSuccess);
  EXPECT_EQ(a.type, cudaMemoryTypeDevice);
  ASSERT_EQ(cudaPointerGetAttributes(&a, h.data()), cudaSuccess);
  EXPECT_EQ(a.type, cudaMemoryTypeUnregistered);
  cudaGetLastError();
}

TEST(CudaEmulation, CaptureRecordsAndReplays) {
  Buffer y(32 * 4);
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  fill_kernel<<<1, 32, 0, s>>>(y.f(), 7.0f);
  float h[32];
  EXPECT_EQ(cudaMemcpy(h, y.p, 4, cudaMemcpyDeviceToHost), cudaErrorStreamCaptureUnsupported);
  cudaGraph_t g = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated)
      << "a synchronous copy during a capture must invalidate it";
  cudaGetLastError();
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  fill_kernel<<<1, 32, 0, s>>>(y.f(), 7.0f);
  ASSERT_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, g, 0), cudaSuccess);
  cudaGraphDestroy(g);
  ASSERT_EQ(cudaMemcpy(h, y.p, 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_TRUE(std::isnan(h[0])) << "captured work must not run at capture";
  ASSERT_EQ(cudaGraphLaunch(exec, nullptr), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(h, y.p, 128, cudaMemcpyDeviceToHost), cudaSuccess);
  for (float v : h) EXPECT_EQ(v, 7.0f);
  // Work on the legacy stream during the capture of a blocking stream breaks it; of a
  // non-blocking stream, it runs (the two streams do not synchronise).
  cudaStream_t blocking = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&blocking, 0), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  fill_kernel<<<1, 32>>>(y.f(), 1.0f);
  EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureImplicit);
  EXPECT_EQ(cudaStreamEndCapture(blocking, &g), cudaErrorStreamCaptureInvalidated);
  cudaGetLastError();
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  fill_kernel<<<1, 32>>>(y.f(), 1.0f);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
  cudaGraphDestroy(g);
  cudaGraphExecDestroy(exec);
  cudaStreamDestroy(blocking);
  cudaStreamDestroy(s);
}

// A kernel's arguments are copied when it is captured: a replay uses the captured values.
TEST(CudaEmulation, CaptureCopiesArguments) {
  Buffer y(32 * 4);
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  float value = 3.0f;
  cudaGraph_t g = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  fill_kernel<<<1, 32, 0, s>>>(y.f(), value);
  ASSERT_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
  value = 5.0f;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, g, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, nullptr), cudaSuccess);
  float h = 0.0f;
  ASSERT_EQ(cudaMemcpy(&h, y.p, 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(h, 3.0f);
  cudaGraphDestroy(g);
  cudaGraphExecDestroy(exec);
  cudaStreamDestroy(s);
}

// A barrier left out between a write and a read of shared memory shows in one of the two
// thread orders the emulation alternates between from launch to launch.
__global__ void missing_barrier_kernel(float* y, float value) {
  __shared__ float v;
  if (threadIdx.x == 0) v = value;
  // (no __syncthreads here: the bug)
  y[threadIdx.x] = v;
}

// Only block 0 writes its shared value; every block reads its own.
__global__ void one_block_writes_kernel(float* y) {
  __shared__ float v;
  if (blockIdx.x == 0 && threadIdx.x == 0) v = 5.0f;
  __syncthreads();
  if (threadIdx.x == 0) y[blockIdx.x] = v;
}

// Too much static shared memory for any GPU (48 KiB at most).
__global__ void oversized_static_shared_kernel(float* y) {
  __shared__ float big[13 * 1024];
  big[threadIdx.x] = 1.0f;
  y[threadIdx.x] = big[threadIdx.x];
}

TEST(CudaEmulation, StaticSharedMemoryIsPerBlockAndStartsAsGarbage) {
  Buffer y(4 * 4);
  one_block_writes_kernel<<<4, 32>>>(y.f());
  std::vector<float> out(4);
  ASSERT_EQ(cudaMemcpy(out.data(), y.p, 16, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(out[0], 5.0f);
  for (int b = 1; b < 4; ++b) EXPECT_TRUE(std::isnan(out[size_t(b)])) << "block " << b;
  oversized_static_shared_kernel<<<1, 32>>>(y.f());
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  reset_errors();
}

TEST(CudaEmulation, AMissingBarrierShowsInOneOfTheThreadOrders) {
  Buffer y(64 * 4);
  bool wrong = false;
  for (int launch = 1; launch <= 3; ++launch) {  // consecutive launches: both orders
    missing_barrier_kernel<<<1, 64>>>(y.f(), float(launch));
    std::vector<float> out(64);
    ASSERT_EQ(cudaMemcpy(out.data(), y.p, 256, cudaMemcpyDeviceToHost), cudaSuccess);
    for (float v : out) wrong = wrong || v != float(launch);
  }
  EXPECT_TRUE(wrong);
}

// Column-major cuBLAS semantics against a direct loop, with a transpose, leading dimensions
// larger than the rows, and beta.
TEST(CudaEmulation, GemmExFollowsCublasConventions) {
  cublasHandle_t h = nullptr;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  const int m = 5, n = 3, k = 4, lda = 7, ldb = 6, ldc = 8;
  // op(A) = A^T: A stored k x m (lda >= k); op(B) = B: stored k x n (ldb >= k).
  std::vector<float> a(size_t(lda * m)), b(size_t(ldb * n)), c(size_t(ldc * n), 1.0f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(int(i % 5) - 2);
  for (size_t i = 0; i < b.size(); ++i) b[i] = float(int(i % 3) + 1);
  Buffer da(a.size() * 4), db(b.size() * 4), dc(c.size() * 4);
  cudaMemcpy(da.p, a.data(), a.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(db.p, b.data(), b.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dc.p, c.data(), c.size() * 4, cudaMemcpyHostToDevice);
  const float alpha = 2.0f, beta = 0.5f;
  ASSERT_EQ(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, da.p, CUDA_R_32F, lda, db.p,
                         CUDA_R_32F, ldb, &beta, dc.p, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  std::vector<float> got(c.size());
  cudaMemcpy(got.data(), dc.p, got.size() * 4, cudaMemcpyDeviceToHost);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float want = 0.0f;
      for (int l = 0; l < k; ++l) want += a[size_t(l + i * lda)] * b[size_t(l + j * ldb)];
      EXPECT_FLOAT_EQ(got[size_t(i + j * ldc)], alpha * want + beta * 1.0f) << i << "," << j;
    }
  EXPECT_EQ(got[size_t(m)], 1.0f) << "rows past m within ldc are not written";
  // A leading dimension too small for the operand, and an operand past its allocation.
  EXPECT_EQ(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, da.p, CUDA_R_32F, k - 1,
                         db.p, CUDA_R_32F, ldb, &beta, dc.p, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, da.p, CUDA_R_32F, lda + 1,
                         db.p, CUDA_R_32F, ldb, &beta, dc.p, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_INVALID_VALUE);
  // FP32 inputs with a BF16 output: not a combination cuBLAS offers.
  EXPECT_EQ(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, da.p, CUDA_R_32F, lda, db.p,
                         CUDA_R_32F, ldb, &beta, dc.p, CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_NOT_SUPPORTED);
  cudaGetLastError();
  cublasDestroy(h);
}

TEST(CudaEmulation, Bfloat16RoundsToNearestEven) {
  EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16_rn(1.0f)), 0x3f80);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even 1.0.
  EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16_rn(1.00390625f)), 0x3f80);
  EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16_rn(1.01171875f)), 0x3f82);  // 1 + 3 * 2^-8
  EXPECT_TRUE(std::isnan(__bfloat162float(__float2bfloat16_rn(NAN))));
}

}  // namespace
