// Fused RMSNorm forward and backward (float32; y and d_x may be written in BF16 instead, or in
// both: the float32 values for their float32 readers and a BF16 copy for the products that read
// them).
//
// Forward: one block of 256 threads per row; the threads stride the row (coalesced), a block
// reduction gives the sum of squares, then the same threads write y. rstd is saved per row.
// Backward d_x: same shape, one block per row, two reductions (none needed for g w xhat's mean
// besides one). Backward d_w: two passes without atomics, so the result does not depend on
// timing. The first, a block per (32 columns, kRmsNormDwChunkRows rows), each of 8 row-lanes
// walking rows with stride 8, writes the chunk's sum per column (lanes added in a fixed
// order); the second adds the chunks in order into d_w. (A single pass over all rows, 48
// blocks at dim 1536, took 115 us per call on an H100; 49 calls per bench-1b step.)
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rmsnorm_forward_kernel(RmsNormForward p) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const float* x = p.x + r * p.dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) ss += x[i] * x[i];
  ss = block_sum(ss, red);
  const float rstd = rsqrtf(ss / float(p.dim) + p.eps);
  float* y = p.y ? p.y + r * p.dim : nullptr;
  uint16_t* y_bf16 = p.y_bf16 ? p.y_bf16 + r * p.dim : nullptr;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    const float v = x[i] * rstd * p.w[i];
    if (y) y[i] = v;
    if (y_bf16) y_bf16[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
  if (threadIdx.x == 0) p.rstd[r] = rstd;
}

__global__ void rmsnorm_backward_dx_kernel(RmsNormBackward p) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const float* x = p.x + r * p.dim;
  const float* g = p.d_y + r * p.dim;
  const float rstd = p.rstd[r];
  // mean over the row of (g w) * xhat
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) dot += g[i] * p.w[i] * x[i] * rstd;
  const float mean = block_sum(dot, red) / float(p.dim);
  float* dx = p.d_x ? p.d_x + r * p.dim : nullptr;
  uint16_t* dx_bf16 = p.d_x_bf16 ? p.d_x_bf16 + r * p.dim : nullptr;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    const float v = rstd * (g[i] * p.w[i] - x[i] * rstd * mean);
    const float out = p.accumulate_d_x ? dx[i] + v : v;
    if (dx) dx[i] = out;
    if (dx_bf16) dx_bf16[i] = __bfloat16_as_ushort(__float2bfloat16_rn(out));
  }
}

// Block (32, 8): threadIdx.x picks the column inside a tile of 32, threadIdx.y the row lane;
// blockIdx.y the chunk of rows.
__global__ void rmsnorm_backward_dw_partial_kernel(RmsNormBackward p) {
  __shared__ float part[8][33];  // +1: lanes of one row lane write one bank apart
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * kRmsNormDwChunkRows;
  const int64_t r1 = r0 + kRmsNormDwChunkRows < p.rows ? r0 + kRmsNormDwChunkRows : p.rows;
  float s = 0.0f;
  if (col < p.dim)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8)
      s += p.d_y[r * p.dim + col] * p.x[r * p.dim + col] * p.rstd[r];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < p.dim) {
    float total = 0.0f;
    for (int l = 0; l < 8; ++l) total += part[l][threadIdx.x];
    p.d_w_partial[int64_t(blockIdx.y) * p.dim + col] = total;
  }
}

__global__ void rmsnorm_backward_dw_sum_kernel(RmsNormBackward p, int64_t chunks) {
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p.dim) return;
  float total = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) total += p.d_w_partial[c * p.dim + col];
  p.d_w[col] = p.accumulate_d_w ? p.d_w[col] + total : total;
}

}  // namespace

cudaError_t rmsnorm_forward(const RmsNormForward& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  rmsnorm_forward_kernel<<<unsigned(p.rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t rmsnorm_backward(const RmsNormBackward& p, cudaStream_t stream) {
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  if (p.d_x || p.d_x_bf16) rmsnorm_backward_dx_kernel<<<unsigned(p.rows), kThreads, 0, stream>>>(p);
  if (!p.d_w_partial) return cudaErrorInvalidValue;
  const int64_t chunks = rmsnorm_dw_chunks(p.rows);
  if (chunks > 65535) return cudaErrorInvalidValue;  // blocks along y
  rmsnorm_backward_dw_partial_kernel<<<dim3(unsigned((p.dim + 31) / 32), unsigned(chunks)),
                                       dim3(32, 8), 0, stream>>>(p);
  rmsnorm_backward_dw_sum_kernel<<<grid_for(p.dim, 256), 256, 0, stream>>>(p, chunks);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
