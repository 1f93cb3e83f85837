// Elementwise dtype conversions between float32 and bfloat16 (round to nearest even), for the
// float32 fallback of the BF16 kernels and the BF16 operands of cuBLAS. One thread per element,
// grid-stride.
#include <cuda_bf16.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

__global__ void bf16_to_f32_kernel(const __nv_bfloat16* x, float* y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __bfloat162float(x[i]);
}

__global__ void f32_to_bf16_kernel(const float* x, __nv_bfloat16* y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

// One block per chunk (grid-striding over the chunks past the grid).
__global__ void f32_to_bf16_chunks_kernel(const ConvertChunk* chunks, int64_t count) {
  for (int64_t c = blockIdx.x; c < count; c += gridDim.x) {
    const ConvertChunk ch = chunks[c];
    __nv_bfloat16* y = reinterpret_cast<__nv_bfloat16*>(ch.dst);
    for (int64_t i = threadIdx.x; i < ch.n; i += blockDim.x) y[i] = __float2bfloat16_rn(ch.src[i]);
  }
}

}  // namespace

cudaError_t bf16_to_f32(const uint16_t* x, float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  bf16_to_f32_kernel<<<grid_for(n, 256), 256, 0, stream>>>(
      reinterpret_cast<const __nv_bfloat16*>(x), y, n);
  return cudaGetLastError();
}

cudaError_t f32_to_bf16_chunks(const ConvertChunk* chunks, int64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const int64_t blocks = count < (int64_t(1) << 30) ? count : (int64_t(1) << 30);
  f32_to_bf16_chunks_kernel<<<unsigned(blocks), 256, 0, stream>>>(chunks, count);
  return cudaGetLastError();
}

cudaError_t f32_to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  f32_to_bf16_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, reinterpret_cast<__nv_bfloat16*>(y), n);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
