// The optimizer's arithmetic: the squared norm of a gradient (float64, fixed grid, no atomics),
// scaling in place, and the AdamW update (one thread per element, the CPU's formula).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

// The grid is always kSumSquaresBlocks x kSumSquaresThreads, whatever n and the GPU: each
// thread's elements, each block's tree and so the partials are fixed, and the host adds the
// partials in order. float64 throughout: the norm of ~1e9 squares keeps its digits.
// block_sum_squares: block `block` of that grid over x[0, n), its partial to every thread.
__device__ __forceinline__ double block_sum_squares(const float* x, int64_t n, int64_t block,
                                                    double* part) {
  double acc = 0.0;
  for (int64_t i = block * kSumSquaresThreads + threadIdx.x; i < n;
       i += int64_t(kSumSquaresBlocks) * kSumSquaresThreads) {
    const double v = x[i];
    acc += v * v;
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kSumSquaresThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  return part[0];
}

// Grid (kSumSquaresBlocks, tensors): block (b, t) writes tensor t's partial b.
__global__ void sum_squares_all_kernel(SumSquaresAll p) {
  __shared__ double part[kSumSquaresThreads];
  for (int64_t t = blockIdx.y; t < p.count; t += gridDim.y) {
    const SumSquaresTensor x = p.tensors[t];
    const double total = block_sum_squares(x.x, x.n, blockIdx.x, part);
    if (threadIdx.x == 0) p.partial[t * kSumSquaresBlocks + blockIdx.x] = total;
    __syncthreads();  // part is written again for the next tensor
  }
}

__global__ void scale_inplace_kernel(ScaleInplace p) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += int64_t(gridDim.x) * blockDim.x)
    p.x[i] *= p.factor;
}

// Element i of one AdamW update: the CPU's formula (kernels/cpu/optimizer.cpp). One kernel
// runs it for one tensor and for many: two kernels inlining it may contract its products into
// FMAs differently (measured on an H100: a per-tensor kernel and this one disagreed in the last
// bit), so a tensor's update must not depend on which call made it.
__device__ __forceinline__ void adamw_element(float* param, const float* grad, float* m, float* v,
                                              int64_t i, float decay, const AdamWUpdateAll& a) {
  const float gi = grad[i] * a.clip_scale;
  const float mi = a.b1 * m[i] + (1.0f - a.b1) * gi;
  const float vi = a.b2 * v[i] + (1.0f - a.b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  param[i] = param[i] * decay - a.step_size * mi / (sqrtf(vi) * a.inv_sqrt_bc2 + a.eps);
}

// One block per chunk (grid-striding over the chunks past the grid).
__global__ void adamw_update_all_kernel(AdamWUpdateAll a) {
  for (int64_t c = blockIdx.x; c < a.count; c += gridDim.x) {
    const AdamWChunk ch = a.chunks[c];
    const AdamWTensor t = a.tensors[ch.tensor];
    for (int64_t i = ch.begin + threadIdx.x; i < ch.end; i += blockDim.x)
      adamw_element(t.param, t.grad, t.m, t.v, i, t.decay, a);
  }
}

}  // namespace

cudaError_t scale_inplace(const ScaleInplace& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  scale_inplace_kernel<<<grid_for(p.n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t sum_squares_all(const SumSquaresAll& p, cudaStream_t stream) {
  if (p.count == 0) return cudaSuccess;
  const dim3 grid(kSumSquaresBlocks, unsigned(p.count < 65535 ? p.count : 65535));
  sum_squares_all_kernel<<<grid, kSumSquaresThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t adamw_update_all(const AdamWUpdateAll& p, cudaStream_t stream) {
  if (p.count == 0) return cudaSuccess;
  const int64_t blocks = p.count < (int64_t(1) << 30) ? p.count : (int64_t(1) << 30);
  adamw_update_all_kernel<<<unsigned(blocks), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
