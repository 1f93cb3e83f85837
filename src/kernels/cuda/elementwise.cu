// Small elementwise kernels: out = a + b, and C = beta * C over a strided matrix (the k = 0 case of
// a GEMM, which cuBLAS is not asked to handle). One thread per element, grid-stride.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

// kVec4: four elements a step through 16-byte accesses (every pointer 16-byte aligned, n a
// multiple of 4); each element is the same single float32 addition either way.
template <bool kVec4>
__global__ void add_kernel(Add p) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  if constexpr (kVec4) {
    const float4* a = reinterpret_cast<const float4*>(p.a);
    const float4* b = reinterpret_cast<const float4*>(p.b);
    float4* out = reinterpret_cast<float4*>(p.out);
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n / 4; i += stride) {
      const float4 x = a[i], y = b[i];
      out[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    }
  } else {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride)
      p.out[i] = p.a[i] + p.b[i];
  }
}

__global__ void scale_matrix_kernel(ScaleMatrix p) {
  const int64_t n = p.rows * p.cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float* c = p.c + (i / p.cols) * p.ld + i % p.cols;
    *c = p.beta == 0.0f ? 0.0f : p.beta * *c;  // beta 0: C is not read (it may hold NaN)
  }
}

}  // namespace

cudaError_t add(const Add& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  if (p.n % 4 == 0 && aligned_to(p.a, 16) && aligned_to(p.b, 16) && aligned_to(p.out, 16))
    add_kernel<true><<<grid_for(p.n / 4, 256), 256, 0, stream>>>(p);
  else
    add_kernel<false><<<grid_for(p.n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t scale_matrix(const ScaleMatrix& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.cols;
  if (n == 0) return cudaSuccess;
  scale_matrix_kernel<<<grid_for(n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
