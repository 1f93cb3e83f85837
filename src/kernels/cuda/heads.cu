// Head layout moves between token-major and head-major buffers, and column window copies.
// One warp per slot (the `width` columns of one (token, head), or one row of a column copy),
// grid-stride over slots, the lanes over the columns, so that a warp reads and writes
// consecutive values and the 64-bit index arithmetic is done once per slot. (One thread per
// element, three 64-bit divisions each, ran at about half the copy bandwidth on an H100.)
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

constexpr int kSlotThreads = 256, kSlotWarps = kSlotThreads / 32;

// This warp's slots in turn: s in [0, slots).
#define FOR_EACH_WARP_SLOT(s, slots)                                                           \
  for (int64_t s = int64_t(blockIdx.x) * kSlotWarps + threadIdx.x / 32; s < (slots);            \
       s += int64_t(gridDim.x) * kSlotWarps)

// Slot order: (b, h, t) of the head-major side.
__global__ void tokens_to_heads_kernel(HeadMove p) {
  const int lane = threadIdx.x & 31;
  FOR_EACH_WARP_SLOT(slot, p.batch * p.heads * p.seq) {
    const int64_t t = slot % p.seq, bh = slot / p.seq, h = bh % p.heads, b = bh / p.heads;
    const float* src = p.src + token_index(p, b, h, t, 0);
    const int64_t dst = head_index(p, b, h, t, 0);
    for (int64_t w = lane; w < p.width; w += 32) store_f32_or_bf16(p.dst, p.dst_bf16, dst + w, src[w]);
  }
}

// Slot order: (b, t, h) of the token-major side; with a shared destination h is absent
// (`heads_here` 1) and each lane loops over the heads.
__global__ void heads_to_tokens_kernel(HeadMove p) {
  const int lane = threadIdx.x & 31;
  const bool shared = p.tok_head_stride == 0;
  const int64_t heads_here = shared ? 1 : p.heads;
  FOR_EACH_WARP_SLOT(slot, p.batch * p.seq * heads_here) {
    const int64_t hh = slot % heads_here, bt = slot / heads_here, t = bt % p.seq, b = bt / p.seq;
    const int64_t at = token_index(p, b, hh, t, 0);
    if (p.dst_bf16) {  // a plain move (the launcher allows nothing else)
      const float* src = p.src + head_index(p, b, hh, t, 0);
      for (int64_t w = lane; w < p.width; w += 32) store_f32_or_bf16(nullptr, p.dst_bf16, at + w, src[w]);
      continue;
    }
    float* dst = p.dst + at;
    for (int64_t w = lane; w < p.width; w += 32) {
      if (shared) {
        float s = p.accumulate ? dst[w] : 0.0f;
        for (int64_t h = 0; h < p.heads; ++h) s += p.src[head_index(p, b, h, t, w)];
        dst[w] = s;
      } else {
        const float v = p.src[head_index(p, b, hh, t, w)];
        dst[w] = p.accumulate ? dst[w] + v : v;
      }
    }
  }
}

__global__ void copy_columns_kernel(ColumnCopy p) {
  const int lane = threadIdx.x & 31;
  FOR_EACH_WARP_SLOT(r, p.rows) {
    const float* src = p.src + r * p.src_cols + p.src_offset;
    const int64_t dst = r * p.dst_cols + p.dst_offset;
    for (int64_t c = lane; c < p.width; c += 32) store_f32_or_bf16(p.dst, p.dst_bf16, dst + c, src[c]);
  }
}

#undef FOR_EACH_WARP_SLOT

}  // namespace

cudaError_t tokens_to_heads(const HeadMove& p, cudaStream_t stream) {
  const int64_t slots = p.batch * p.heads * p.seq;
  if (slots == 0 || p.width == 0) return cudaSuccess;
  tokens_to_heads_kernel<<<grid_for(slots, kSlotWarps), kSlotThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t heads_to_tokens(const HeadMove& p, cudaStream_t stream) {
  if (p.dst_bf16 && (p.accumulate || p.tok_head_stride == 0)) return cudaErrorInvalidValue;
  const int64_t slots = p.batch * p.seq * (p.tok_head_stride == 0 ? 1 : p.heads);
  if (slots == 0 || p.width == 0) return cudaSuccess;
  heads_to_tokens_kernel<<<grid_for(slots, kSlotWarps), kSlotThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t copy_columns(const ColumnCopy& p, cudaStream_t stream) {
  if (p.rows == 0 || p.width == 0) return cudaSuccess;
  copy_columns_kernel<<<grid_for(p.rows, kSlotWarps), kSlotThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
