// Elementwise dtype conversions between float32 and bfloat16 (round to nearest even), for the
// float32 fallback of the BF16 kernels and the BF16 operands of cuBLAS; grid-stride.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

// The conversions read and write four elements per step where both pointers allow it (a
// 16-byte float32 side, an 8-byte BF16 side): the scalar loop's 2-byte accesses ran these
// pure-bandwidth kernels at about half the copy bandwidth. The last n % 4 elements, or all of
// them when a pointer is not aligned, go one at a time. Rounding is __float2bfloat16_rn either
// way (pack2_bf16 uses it).
__device__ __forceinline__ int64_t thread_index() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_count() { return int64_t(gridDim.x) * blockDim.x; }

template <bool kVec>
__global__ void bf16_to_f32_kernel(const __nv_bfloat16* x, float* y, int64_t n) {
  int64_t done = 0;
  if constexpr (kVec) {
    const int64_t n4 = n / 4;
    for (int64_t i = thread_index(); i < n4; i += thread_count()) {
      const uint2 w = reinterpret_cast<const uint2*>(x)[i];
      reinterpret_cast<float4*>(y)[i] =
          make_float4(__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u),
                      __uint_as_float(w.y << 16), __uint_as_float(w.y & 0xffff0000u));
    }
    done = n4 * 4;
  }
  for (int64_t i = done + thread_index(); i < n; i += thread_count()) y[i] = __bfloat162float(x[i]);
}

template <bool kVec>
__device__ __forceinline__ void f32_to_bf16_run(const float* x, __nv_bfloat16* y, int64_t n,
                                                int64_t first, int64_t step) {
  int64_t done = 0;
  if constexpr (kVec) {
    const int64_t n4 = n / 4;
    for (int64_t i = first; i < n4; i += step) {
      const float4 v = reinterpret_cast<const float4*>(x)[i];
      reinterpret_cast<uint2*>(y)[i] = make_uint2(pack2_bf16(v.x, v.y), pack2_bf16(v.z, v.w));
    }
    done = n4 * 4;
  }
  for (int64_t i = done + first; i < n; i += step) y[i] = __float2bfloat16_rn(x[i]);
}

template <bool kVec>
__global__ void f32_to_bf16_kernel(const float* x, __nv_bfloat16* y, int64_t n) {
  f32_to_bf16_run<kVec>(x, y, n, thread_index(), thread_count());
}

// One block per chunk (grid-striding over the chunks past the grid); each chunk takes the
// four-wide path when its own pointers allow it.
__global__ void f32_to_bf16_chunks_kernel(const ConvertChunk* chunks, int64_t count) {
  for (int64_t c = blockIdx.x; c < count; c += gridDim.x) {
    const ConvertChunk ch = chunks[c];
    __nv_bfloat16* y = reinterpret_cast<__nv_bfloat16*>(ch.dst);
    const bool vec = reinterpret_cast<uintptr_t>(ch.src) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(ch.dst) % 8 == 0;
    if (vec)
      f32_to_bf16_run<true>(ch.src, y, ch.n, threadIdx.x, blockDim.x);
    else
      f32_to_bf16_run<false>(ch.src, y, ch.n, threadIdx.x, blockDim.x);
  }
}

}  // namespace

cudaError_t bf16_to_f32(const uint16_t* x, float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto* xb = reinterpret_cast<const __nv_bfloat16*>(x);
  const unsigned blocks = grid_for((n + 3) / 4, 256);
  if (aligned_to(x, 8) && aligned_to(y, 16))
    bf16_to_f32_kernel<true><<<blocks, 256, 0, stream>>>(xb, y, n);
  else
    bf16_to_f32_kernel<false><<<blocks, 256, 0, stream>>>(xb, y, n);
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
  auto* yb = reinterpret_cast<__nv_bfloat16*>(y);
  const unsigned blocks = grid_for((n + 3) / 4, 256);
  if (aligned_to(x, 16) && aligned_to(y, 8))
    f32_to_bf16_kernel<true><<<blocks, 256, 0, stream>>>(x, yb, n);
  else
    f32_to_bf16_kernel<false><<<blocks, 256, 0, stream>>>(x, yb, n);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
