// Head layout moves between token-major and head-major buffers, and column window copies.
// One thread per moved element, grid-stride, the column (w) fastest so that a warp reads and
// writes consecutive floats of one (token, head) slot.
//
// heads_to_tokens with a shared destination (tok_head_stride 0: one vector read by every head,
// k_pe in MLA) sums the heads; one thread owns one destination element and adds the heads in
// order 0..heads-1, the CPU's order, so the result matches it bit for bit.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

__device__ __forceinline__ int64_t head_index(const HeadMove& p, int64_t b, int64_t h, int64_t t,
                                              int64_t w) {
  return ((b * p.heads + h) * p.seq + t) * p.head_dim + p.head_offset + w;
}

__device__ __forceinline__ int64_t token_index(const HeadMove& p, int64_t b, int64_t h, int64_t t,
                                               int64_t w) {
  return (b * p.seq + t) * p.tok_row_stride + h * p.tok_head_stride + p.tok_offset + w;
}

// Element order: (b, h, t, w) of the head-major side.
__global__ void tokens_to_heads_kernel(HeadMove p) {
  const int64_t n = p.batch * p.heads * p.seq * p.width;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t w = idx % p.width, t = (idx / p.width) % p.seq;
    const int64_t bh = idx / (p.width * p.seq), h = bh % p.heads, b = bh / p.heads;
    store_f32_or_bf16(p.dst, p.dst_bf16, head_index(p, b, h, t, w), p.src[token_index(p, b, h, t, w)]);
  }
}

// Element order: (b, t, h, w) of the token-major side; with a shared destination h is absent
// (`heads_here` 1) and the thread loops over the heads.
__global__ void heads_to_tokens_kernel(HeadMove p) {
  const bool shared = p.tok_head_stride == 0;
  const int64_t heads_here = shared ? 1 : p.heads;
  const int64_t n = p.batch * p.seq * heads_here * p.width;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t w = idx % p.width, hh = (idx / p.width) % heads_here;
    const int64_t bt = idx / (p.width * heads_here), t = bt % p.seq, b = bt / p.seq;
    const int64_t at = token_index(p, b, hh, t, w);
    if (p.dst_bf16) {  // a plain move (the launcher allows nothing else)
      store_f32_or_bf16(nullptr, p.dst_bf16, at, p.src[head_index(p, b, hh, t, w)]);
      continue;
    }
    float* dst = p.dst + at;
    if (shared) {
      float s = p.accumulate ? *dst : 0.0f;
      for (int64_t h = 0; h < p.heads; ++h) s += p.src[head_index(p, b, h, t, w)];
      *dst = s;
    } else {
      const float v = p.src[head_index(p, b, hh, t, w)];
      *dst = p.accumulate ? *dst + v : v;
    }
  }
}

__global__ void copy_columns_kernel(ColumnCopy p) {
  const int64_t n = p.rows * p.width;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / p.width, c = idx % p.width;
    store_f32_or_bf16(p.dst, p.dst_bf16, r * p.dst_cols + p.dst_offset + c,
                      p.src[r * p.src_cols + p.src_offset + c]);
  }
}

}  // namespace

cudaError_t tokens_to_heads(const HeadMove& p, cudaStream_t stream) {
  const int64_t n = p.batch * p.heads * p.seq * p.width;
  if (n == 0) return cudaSuccess;
  tokens_to_heads_kernel<<<grid_for(n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t heads_to_tokens(const HeadMove& p, cudaStream_t stream) {
  if (p.dst_bf16 && (p.accumulate || p.tok_head_stride == 0)) return cudaErrorInvalidValue;
  const int64_t n = p.batch * p.seq * (p.tok_head_stride == 0 ? 1 : p.heads) * p.width;
  if (n == 0) return cudaSuccess;
  heads_to_tokens_kernel<<<grid_for(n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t copy_columns(const ColumnCopy& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.width;
  if (n == 0) return cudaSuccess;
  copy_columns_kernel<<<grid_for(n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
