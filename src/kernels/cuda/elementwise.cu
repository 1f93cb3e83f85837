// Small elementwise kernels: y += x, and C = beta * C over a strided matrix (the k = 0 case of
// a GEMM, which cuBLAS is not asked to handle). One thread per element, grid-stride.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

__global__ void add_inplace_kernel(AddInplace p) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += int64_t(gridDim.x) * blockDim.x)
    p.y[i] += p.x[i];
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

cudaError_t add_inplace(const AddInplace& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  add_inplace_kernel<<<grid_for(p.n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t scale_matrix(const ScaleMatrix& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.cols;
  if (n == 0) return cudaSuccess;
  scale_matrix_kernel<<<grid_for(n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
