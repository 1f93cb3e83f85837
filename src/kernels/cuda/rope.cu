// RoPE over interleaved pairs, in place, forward and inverse (the backward pass).
//
// One thread per (row, head, pair), grid-stride; the pair index is fastest, so a warp touches
// consecutive pairs of one head (two adjacent floats each: 8-byte accesses, coalesced).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

__global__ void rope_kernel(Rope p) {
  const int64_t half = p.rope_dim / 2;
  const int64_t n = p.rows * p.heads * half;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half, rh = idx / half;  // rh = row * heads + head
    const int64_t r = rh / p.heads;
    const int64_t pos = p.positions[r];
    if (pos < 0 || pos >= p.max_pos) {
      if (i == 0 && rh % p.heads == 0) report_index_error(p.error, kBadPosition, r, pos, p.max_pos);
      continue;
    }
    const float c = p.cos[pos * half + i];
    const float s = p.inverse ? -p.sin[pos * half + i] : p.sin[pos * half + i];
    float* v = p.x + rh * p.head_stride + p.offset + 2 * i;
    const float a = v[0], b = v[1];
    v[0] = a * c - b * s;
    v[1] = a * s + b * c;
  }
}

}  // namespace

cudaError_t rope(const Rope& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.heads * (p.rope_dim / 2);
  if (n == 0) return cudaSuccess;
  rope_kernel<<<grid_for(n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
