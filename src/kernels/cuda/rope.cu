// RoPE over interleaved pairs, in place, forward and inverse (the backward pass); either one
// also into a BF16 copy of the rows (Rope::out_bf16): the forward for MLA's attention to read,
// the inverse as the reference of the attention backward's own rotation of d_q (params.h,
// AttentionBackwardBf16::d_q_bf16). Every rotation is common.cuh's rope_rotate_pair.
//
// Blocks take rows (a grid-stride loop past 65535), threads along y a row's heads and threads
// along x a head's pairs: a warp touches consecutive pairs (two adjacent floats each: 8-byte
// accesses, coalesced), and no index is found by dividing a flat one (three 64-bit divisions
// per pair were most of this kernel's time).
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

// In place on float32 rows (Rope::x) or BF16 ones (Rope::x_bf16: widened exactly, rotated in
// float32, rounded back).
__global__ void rope_kernel(Rope p) {
  const int64_t half = p.rope_dim / 2;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int64_t pos = p.positions[r];
    if (pos < 0 || pos >= p.max_pos) {
      if (threadIdx.x == 0 && threadIdx.y == 0)
        report_index_error(p.error, kBadPosition, r, pos, p.max_pos);
      continue;  // the same for the whole block
    }
    const float* cs = p.cos + pos * half;
    const float* sn = p.sin + pos * half;
    for (int64_t h = threadIdx.y; h < p.heads; h += blockDim.y) {
      const int64_t head = (r * p.heads + h) * p.head_stride + p.offset;
      for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        const float c = cs[i];
        const float s = p.inverse ? -sn[i] : sn[i];
        const int64_t v = head + 2 * i;
        const float2 r = rope_rotate_pair(load_f32_or_bf16(p.x, p.x_bf16, v),
                                          load_f32_or_bf16(p.x, p.x_bf16, v + 1), c, s);
        store_f32_or_bf16(p.x, p.x_bf16, v, r.x);
        store_f32_or_bf16(p.x, p.x_bf16, v + 1, r.y);
      }
    }
  }
}

// The rotation (or its inverse) into a BF16 copy: threads along x walk a head's columns (a warp
// writes consecutive ones), each rotated column reading its pair.
__global__ void rope_to_bf16_kernel(Rope p) {
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int64_t pos = p.positions[r];
    const bool valid = pos >= 0 && pos < p.max_pos;
    if (!valid && threadIdx.x == 0 && threadIdx.y == 0)
      report_index_error(p.error, kBadPosition, r, pos, p.max_pos);
    const float* cs = p.cos + (valid ? pos : 0) * (p.rope_dim / 2);
    const float* sn = p.sin + (valid ? pos : 0) * (p.rope_dim / 2);
    for (int64_t h = threadIdx.y; h < p.heads; h += blockDim.y) {
      const float* head = p.x + (r * p.heads + h) * p.head_stride;
      uint16_t* out = p.out_bf16 + (r * p.heads + h) * p.head_stride;
      for (int64_t col = threadIdx.x; col < p.head_stride; col += blockDim.x) {
        const int64_t j = col - p.offset;
        float v = head[col];
        if (valid && j >= 0 && j < p.rope_dim) {
          const int64_t i = j / 2;
          const float* pair = head + p.offset + 2 * i;
          const float2 rot = rope_rotate_pair(pair[0], pair[1], cs[i], p.inverse ? -sn[i] : sn[i]);
          v = j % 2 ? rot.y : rot.x;
        }
        out[col] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
      }
    }
  }
}

}  // namespace

cudaError_t rope(const Rope& p, cudaStream_t stream) {
  const int64_t half = p.rope_dim / 2;
  if (p.out_bf16) {
    if (p.rows * p.heads * p.head_stride == 0) return cudaSuccess;
    // 256 threads: a head's columns along x (up to 256), heads along y.
    const unsigned tx = unsigned(std::min<int64_t>(p.head_stride, 256));
    const unsigned ty = unsigned(std::max<int64_t>(1, std::min<int64_t>(p.heads, 256 / tx)));
    const unsigned blocks = unsigned(std::min<int64_t>(p.rows, 65535 * 8));
    rope_to_bf16_kernel<<<blocks, dim3(tx, ty), 0, stream>>>(p);
    return cudaGetLastError();
  }
  if (p.rows * p.heads * half == 0) return cudaSuccess;
  // 256 threads: a head's pairs along x (up to 64), heads along y.
  const unsigned tx = unsigned(std::min<int64_t>(half, 64));
  const unsigned ty = unsigned(std::max<int64_t>(1, std::min<int64_t>(p.heads, 256 / tx)));
  const unsigned blocks = unsigned(std::min<int64_t>(p.rows, 65535 * 8));
  rope_kernel<<<blocks, dim3(tx, ty), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
