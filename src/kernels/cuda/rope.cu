// RoPE over interleaved pairs, in place, forward and inverse (the backward pass).
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
      float* head = p.x + (r * p.heads + h) * p.head_stride + p.offset;
      for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        const float c = cs[i];
        const float s = p.inverse ? -sn[i] : sn[i];
        float* v = head + 2 * i;
        const float a = v[0], b = v[1];
        v[0] = a * c - b * s;
        v[1] = a * s + b * c;
      }
    }
  }
}

}  // namespace

cudaError_t rope(const Rope& p, cudaStream_t stream) {
  const int64_t half = p.rope_dim / 2;
  if (p.rows * p.heads * half == 0) return cudaSuccess;
  // 256 threads: a head's pairs along x (up to 64), heads along y.
  const unsigned tx = unsigned(std::min<int64_t>(half, 64));
  const unsigned ty = unsigned(std::max<int64_t>(1, std::min<int64_t>(p.heads, 256 / tx)));
  const unsigned blocks = unsigned(std::min<int64_t>(p.rows, 65535 * 8));
  rope_kernel<<<blocks, dim3(tx, ty), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
