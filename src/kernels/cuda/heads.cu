// Head layout moves between token-major and head-major buffers, and column window copies.
// One warp per slot (the `width` columns of one (token, head), or one row of a column copy),
// grid-stride over slots, the lanes over the columns, so that a warp reads and writes
// consecutive values and the 64-bit index arithmetic is done once per slot. (One thread per
// element, three 64-bit divisions each, ran at about half the copy bandwidth on an H100.)
// Where every offset, stride and width is a multiple of 4 and the buffers 16-byte aligned (MLA's
// head dims are), each lane moves 4 values per step (16-byte loads; 16-byte float32 or 8-byte
// BF16 stores): the scalar moves ran at about 65% of the copy bandwidth.
//
// heads_to_tokens with a shared destination (tok_head_stride 0: one vector read by every head,
// k_pe in MLA) sums the heads; one thread owns one destination element and adds the heads in
// order 0..heads-1, the CPU's order, so the result matches it bit for bit.
#include <initializer_list>

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

// The values [w, w + N) of a row: N = 4 (one 16-byte access; w a multiple of 4 and the row
// 16-byte aligned) or 1.
template <int N>
struct Values {
  float v[N];
  __device__ __forceinline__ void load(const float* src) {
    if constexpr (N == 4) {
      const float4 q = *reinterpret_cast<const float4*>(src);
      v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
      v[0] = *src;
    }
  }
  // Into dst[i, i + N) of a float32 (f) or, when bf16 is given, BF16 output (store_f32_or_bf16).
  __device__ __forceinline__ void store(float* f, uint16_t* bf16, int64_t i) const {
    if constexpr (N == 4) {
      if (bf16) *reinterpret_cast<uint2*>(bf16 + i) = {pack2_bf16(v[0], v[1]), pack2_bf16(v[2], v[3])};
      else *reinterpret_cast<float4*>(f + i) = {v[0], v[1], v[2], v[3]};
    } else {
      store_f32_or_bf16(f, bf16, i, v[0]);
    }
  }
};

// Slot order: (b, h, t) of the head-major side.
template <int N>
__global__ void tokens_to_heads_kernel(HeadMove p) {
  const int lane = threadIdx.x & 31;
  FOR_EACH_WARP_SLOT(slot, p.batch * p.heads * p.seq) {
    const int64_t t = slot % p.seq, bh = slot / p.seq, h = bh % p.heads, b = bh / p.heads;
    const float* src = p.src + token_index(p, b, h, t, 0);
    const int64_t dst = head_index(p, b, h, t, 0);
    for (int64_t w = int64_t(lane) * N; w < p.width; w += 32 * N) {
      Values<N> x;
      x.load(src + w);
      x.store(p.dst, p.dst_bf16, dst + w);
    }
  }
}

// Slot order: (b, t, h) of the token-major side; with a shared destination h is absent
// (`heads_here` 1) and each lane loops over the heads.
template <int N>
__global__ void heads_to_tokens_kernel(HeadMove p) {
  const int lane = threadIdx.x & 31;
  const bool shared = p.tok_head_stride == 0;
  const int64_t heads_here = shared ? 1 : p.heads;
  FOR_EACH_WARP_SLOT(slot, p.batch * p.seq * heads_here) {
    const int64_t hh = slot % heads_here, bt = slot / heads_here, t = bt % p.seq, b = bt / p.seq;
    const int64_t at = token_index(p, b, hh, t, 0);
    for (int64_t w = int64_t(lane) * N; w < p.width; w += 32 * N) {
      Values<N> x;
      if (shared) {  // float32, the launcher allows nothing else
        if (p.accumulate) x.load(p.dst + at + w);
        else
#pragma unroll
          for (int i = 0; i < N; ++i) x.v[i] = 0.0f;
        for (int64_t h = 0; h < p.heads; ++h) {
          Values<N> y;
          y.load(p.src + head_index(p, b, h, t, w));
#pragma unroll
          for (int i = 0; i < N; ++i) x.v[i] += y.v[i];
        }
      } else {
        x.load(p.src + head_index(p, b, hh, t, w));
        if (p.accumulate) {  // float32, the launcher allows nothing else
          Values<N> d;
          d.load(p.dst + at + w);
#pragma unroll
          for (int i = 0; i < N; ++i) x.v[i] = d.v[i] + x.v[i];
        }
      }
      x.store(p.dst, p.dst_bf16, at + w);
    }
  }
}

template <int N>
__global__ void copy_columns_kernel(ColumnCopy p) {
  const int lane = threadIdx.x & 31;
  FOR_EACH_WARP_SLOT(r, p.rows) {
    const float* src = p.src + r * p.src_cols + p.src_offset;
    const int64_t dst = r * p.dst_cols + p.dst_offset;
    for (int64_t c = int64_t(lane) * N; c < p.width; c += 32 * N) {
      Values<N> x;
      x.load(src + c);
      x.store(p.dst, p.dst_bf16, dst + c);
    }
  }
}

#undef FOR_EACH_WARP_SLOT

// Whether a move can take 4 values per access: every offset and stride a multiple of 4, the
// float32 buffers 16-byte aligned and a BF16 destination 8-byte aligned.
bool four_wide(std::initializer_list<int64_t> counts, const float* src, const float* dst,
               const uint16_t* dst_bf16) {
  for (int64_t c : counts)
    if (c % 4 != 0) return false;
  return aligned_to(src, 16) && (dst_bf16 ? aligned_to(dst_bf16, 8) : aligned_to(dst, 16));
}

bool four_wide(const HeadMove& p) {
  return four_wide({p.width, p.tok_row_stride, p.tok_head_stride, p.tok_offset, p.head_dim,
                    p.head_offset},
                   p.src, p.dst, p.dst_bf16);
}

}  // namespace

cudaError_t tokens_to_heads(const HeadMove& p, cudaStream_t stream) {
  const int64_t slots = p.batch * p.heads * p.seq;
  if (slots == 0 || p.width == 0) return cudaSuccess;
  const unsigned blocks = grid_for(slots, kSlotWarps);
  if (four_wide(p)) tokens_to_heads_kernel<4><<<blocks, kSlotThreads, 0, stream>>>(p);
  else tokens_to_heads_kernel<1><<<blocks, kSlotThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t heads_to_tokens(const HeadMove& p, cudaStream_t stream) {
  if (p.dst_bf16 && (p.accumulate || p.tok_head_stride == 0)) return cudaErrorInvalidValue;
  const int64_t slots = p.batch * p.seq * (p.tok_head_stride == 0 ? 1 : p.heads);
  if (slots == 0 || p.width == 0) return cudaSuccess;
  const unsigned blocks = grid_for(slots, kSlotWarps);
  if (four_wide(p)) heads_to_tokens_kernel<4><<<blocks, kSlotThreads, 0, stream>>>(p);
  else heads_to_tokens_kernel<1><<<blocks, kSlotThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t copy_columns(const ColumnCopy& p, cudaStream_t stream) {
  if (p.rows == 0 || p.width == 0) return cudaSuccess;
  const unsigned blocks = grid_for(p.rows, kSlotWarps);
  if (four_wide({p.width, p.src_cols, p.src_offset, p.dst_cols, p.dst_offset}, p.src, p.dst,
                p.dst_bf16))
    copy_columns_kernel<4><<<blocks, kSlotThreads, 0, stream>>>(p);
  else
    copy_columns_kernel<1><<<blocks, kSlotThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
