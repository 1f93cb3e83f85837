// SwiGLU forward and backward, elementwise over [rows, width]; gate and up of a row are `width`
// apart in the same row of gate_up. Blocks along y take rows, threads along x a row's columns,
// kVec at a time (4 values per load, 16 bytes of float32 or 8 of BF16, when the width is a
// multiple of 4 and the rows are aligned): no per-element division of a flat index (64-bit
// divisions were most of these kernels' time). Inputs and outputs are float32 or BF16 (mixed
// precision stores the routed experts' intermediates in BF16); the arithmetic is float32.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

// Values i .. i + kVec - 1 of a float32 (f) or BF16 (bf16, when set) input.
template <int kVec>
__device__ __forceinline__ void load(const float* f, const uint16_t* bf16, int64_t i,
                                     float (&v)[kVec]) {
  if constexpr (kVec == 4) {
    const float4 q = load4_f32_or_bf16(f, bf16, i);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
    v[0] = load_f32_or_bf16(f, bf16, i);
  }
}

// This thread's first column in a row, and the step to its next one.
template <int kVec>
__device__ __forceinline__ int64_t first_column() {
  return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
}
template <int kVec>
__device__ __forceinline__ int64_t column_step() {
  return int64_t(gridDim.x) * blockDim.x * kVec;
}

template <int kVec>
__global__ void swiglu_forward_kernel(SwiGlu p) {
  for (int64_t r = blockIdx.y; r < p.rows; r += gridDim.y) {
    const int64_t row = r * 2 * p.width;
    for (int64_t c = first_column<kVec>(); c < p.width; c += column_step<kVec>()) {
      float g[kVec], u[kVec];
      load<kVec>(p.gate_up, p.gate_up_bf16, row + c, g);
      load<kVec>(p.gate_up, p.gate_up_bf16, row + p.width + c, u);
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        store_f32_or_bf16(p.h, p.h_bf16, r * p.width + c + j, g[j] * sigmoid(g[j]) * u[j]);
    }
  }
}

// d_gate = d_h u sig(g) (1 + g (1 - sig(g))), d_up = d_h silu(g)
template <int kVec>
__global__ void swiglu_backward_kernel(SwiGlu p) {
  for (int64_t r = blockIdx.y; r < p.rows; r += gridDim.y) {
    for (int64_t c = first_column<kVec>(); c < p.width; c += column_step<kVec>()) {
      const int64_t gi = r * 2 * p.width + c, ui = gi + p.width;
      float g[kVec], u[kVec], dh[kVec];
      load<kVec>(p.gate_up, p.gate_up_bf16, gi, g);
      load<kVec>(p.gate_up, p.gate_up_bf16, ui, u);
      load<kVec>(p.d_h, p.d_h_bf16, r * p.width + c, dh);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float sg = sigmoid(g[j]);
        store_f32_or_bf16(p.d_gate_up, p.d_gate_up_bf16, gi + j,
                          dh[j] * u[j] * sg * (1.0f + g[j] * (1.0f - sg)));
        store_f32_or_bf16(p.d_gate_up, p.d_gate_up_bf16, ui + j, dh[j] * g[j] * sg);
      }
    }
  }
}

// Threads along x for a row's column groups (whole warps, at most 256), blocks along x for the
// rest of a wide row, blocks along y for the rows (the kernels loop past 65535).
template <typename K>
cudaError_t launch_rows(K narrow, K wide, bool vec, const SwiGlu& p, cudaStream_t stream) {
  const int64_t groups = vec ? p.width / 4 : p.width;
  const int64_t threads = std::min<int64_t>(256, (groups + 31) / 32 * 32);
  const int64_t bx = std::min<int64_t>(64, (groups + threads - 1) / threads);
  const dim3 grid(unsigned(bx), unsigned(std::min<int64_t>(p.rows, 65535)));
  if (vec)
    wide<<<grid, unsigned(threads), 0, stream>>>(p);
  else
    narrow<<<grid, unsigned(threads), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t swiglu_forward(const SwiGlu& p, cudaStream_t stream) {
  if (p.rows * p.width == 0) return cudaSuccess;
  const bool vec = p.width % 4 == 0 && four_values_aligned(p.gate_up, p.gate_up_bf16);
  return launch_rows(swiglu_forward_kernel<1>, swiglu_forward_kernel<4>, vec, p, stream);
}

cudaError_t swiglu_backward(const SwiGlu& p, cudaStream_t stream) {
  if (p.rows * p.width == 0) return cudaSuccess;
  const bool vec = p.width % 4 == 0 && four_values_aligned(p.gate_up, p.gate_up_bf16) &&
                   four_values_aligned(p.d_h, p.d_h_bf16);
  return launch_rows(swiglu_backward_kernel<1>, swiglu_backward_kernel<4>, vec, p, stream);
}

}  // namespace dsv3::cuda
