// The optimizer's arithmetic: the squared norm of a gradient (float64, fixed grid, no atomics),
// scaling in place, and the AdamW update (one thread per element, the CPU's formula).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

// The grid is always kSumSquaresBlocks x kSumSquaresThreads, whatever n and the GPU: each
// thread's elements, each block's tree and so the partials are fixed, and the host adds the
// partials in order. float64 throughout: the norm of ~1e9 squares keeps its digits.
__global__ void sum_squares_kernel(SumSquares p) {
  __shared__ double part[kSumSquaresThreads];
  double acc = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const double x = p.x[i];
    acc += x * x;
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kSumSquaresThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) p.partial[blockIdx.x] = part[0];
}

__global__ void scale_inplace_kernel(ScaleInplace p) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += int64_t(gridDim.x) * blockDim.x)
    p.x[i] *= p.factor;
}

__global__ void adamw_update_kernel(AdamWUpdate a) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < a.n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = a.grad[i] * a.clip_scale;
    const float mi = a.b1 * a.m[i] + (1.0f - a.b1) * gi;
    const float vi = a.b2 * a.v[i] + (1.0f - a.b2) * gi * gi;
    a.m[i] = mi;
    a.v[i] = vi;
    a.param[i] = a.param[i] * a.decay - a.step_size * mi / (sqrtf(vi) * a.inv_sqrt_bc2 + a.eps);
  }
}

}  // namespace

cudaError_t sum_squares(const SumSquares& p, cudaStream_t stream) {
  // Launched even for n = 0: the partials must be written (zeros) for the host to add.
  sum_squares_kernel<<<kSumSquaresBlocks, kSumSquaresThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t scale_inplace(const ScaleInplace& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  scale_inplace_kernel<<<grid_for(p.n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t adamw_update(const AdamWUpdate& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  adamw_update_kernel<<<grid_for(p.n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
