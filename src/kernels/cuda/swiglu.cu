// SwiGLU forward and backward, elementwise over [rows, width]; one thread per output element,
// grid-stride. gate and up of a row are `width` apart in the same row of gate_up.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

__global__ void swiglu_forward_kernel(SwiGlu p) {
  const int64_t n = p.rows * p.width;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / p.width, c = idx % p.width;
    const float g = p.gate_up[r * 2 * p.width + c], u = p.gate_up[r * 2 * p.width + p.width + c];
    store_f32_or_bf16(p.h, p.h_bf16, idx, g * sigmoid(g) * u);
  }
}

// d_gate = d_h u sig(g) (1 + g (1 - sig(g))), d_up = d_h silu(g)
__global__ void swiglu_backward_kernel(SwiGlu p) {
  const int64_t n = p.rows * p.width;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / p.width, c = idx % p.width;
    const int64_t gi = r * 2 * p.width + c, ui = gi + p.width;
    const float g = p.gate_up[gi], u = p.gate_up[ui], dh = p.d_h[idx];
    const float sg = sigmoid(g);
    store_f32_or_bf16(p.d_gate_up, p.d_gate_up_bf16, gi, dh * u * sg * (1.0f + g * (1.0f - sg)));
    store_f32_or_bf16(p.d_gate_up, p.d_gate_up_bf16, ui, dh * g * sg);
  }
}

}  // namespace

cudaError_t swiglu_forward(const SwiGlu& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.width;
  if (n == 0) return cudaSuccess;
  swiglu_forward_kernel<<<grid_for(n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t swiglu_backward(const SwiGlu& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.width;
  if (n == 0) return cudaSuccess;
  swiglu_backward_kernel<<<grid_for(n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
