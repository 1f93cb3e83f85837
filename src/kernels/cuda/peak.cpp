// Measured ceilings of the GPU (kernels/device_peak.h). Timed with CUDA events on the backend's
// stream; inputs are random (zeros run measurably faster on tensor cores and would flatter MFU).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "core/device.h"
#include "kernels/cuda/context.h"
#include "kernels/device_peak.h"

namespace dsv3::ops {

namespace {

// Median milliseconds of `reps` runs of `body` after `warmup` untimed ones.
template <typename F>
double median_ms(int warmup, int reps, F&& body) {
  for (int i = 0; i < warmup; ++i) body();
  cudaEvent_t start, stop;
  cuda::check(cudaEventCreate(&start), "cudaEventCreate");
  cuda::check(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    cuda::check(cudaEventRecord(start, cuda::stream()), "cudaEventRecord");
    body();
    cuda::check(cudaEventRecord(stop, cuda::stream()), "cudaEventRecord");
    cuda::check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float t = 0;
    cuda::check(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Device memory holding `count` random values of `dtype` in [-1, 1).
std::shared_ptr<void> random_device(int64_t count, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const size_t bytes = size_t(count) * dtype_size(dtype);
  std::vector<char> host(bytes);
  for (int64_t i = 0; i < count; ++i) {
    float v = u(rng);
    if (dtype == DType::BF16)
      reinterpret_cast<uint16_t*>(host.data())[i] = f32_to_bf16(v);
    else
      reinterpret_cast<float*>(host.data())[i] = v;
  }
  void* p = device::cuda_alloc(bytes);
  std::shared_ptr<void> owner(p, [](void* q) { device::cuda_free(q); });
  device::copy(p, Device::CUDA, host.data(), Device::CPU, bytes);
  return owner;
}

}  // namespace

double measure_device_gemm_gflops(DType dtype) {
  device::require_cuda("measure_device_gemm_gflops");
  DSV3_CHECK(dtype == DType::F32 || dtype == DType::BF16,
             "measure_device_gemm_gflops: dtype {} (F32 or BF16)", dtype_name(dtype));
  const int64_t n = 8192;
  auto a = random_device(n * n, dtype, 1), b = random_device(n * n, dtype, 2);
  auto c = random_device(n * n, dtype, 3);
  cuda::BlasGemm g;
  g.trans_b = true;
  g.m = g.n = g.k = n;
  g.a = a.get(), g.b = b.get(), g.c = c.get();
  g.lda = g.ldb = g.ldc = n;
  g.ab_type = g.c_type = dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const double ms = median_ms(3, 10, [&] { cuda::blas_gemm(g, "measure_device_gemm_gflops"); });
  return 2.0 * double(n) * n * n / (ms * 1e-3) / 1e9;
}

double measure_device_copy_gbps() {
  device::require_cuda("measure_device_copy_gbps");
  const size_t bytes = size_t(2) << 30;
  void* src = device::cuda_alloc(bytes);
  std::shared_ptr<void> src_owner(src, [](void* q) { device::cuda_free(q); });
  void* dst = device::cuda_alloc(bytes);
  std::shared_ptr<void> dst_owner(dst, [](void* q) { device::cuda_free(q); });
  cuda::check(cudaMemsetAsync(src, 1, bytes, cuda::stream()), "cudaMemsetAsync");
  const double ms = median_ms(2, 10, [&] {
    cuda::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda::stream()),
                "cudaMemcpyAsync");
  });
  return 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
}

}  // namespace dsv3::ops
