// Fused RMSNorm forward and backward (float32; y and d_x may be written in BF16 instead, or in
// both: the float32 values for their float32 readers and a BF16 copy for the products that read
// them).
//
// Forward: one block of 256 threads per row; the threads stride the row (coalesced), a block
// reduction gives the sum of squares, then the same threads write y. rstd is saved per row.
//
// Backward, rows of up to kRmsNormFusedMaxDim values (every norm of bench-1b; launch.h): one
// kernel writes d_x and sums d_w per chunk of rows. A warp per row (lane l holds columns l,
// l + 32, ...), 8 warps per block over a chunk; each lane adds its columns' g x rstd over its
// warp's rows in registers, and the warps' sums are added in warp order into the chunk's row of
// d_w_partial. A second kernel adds the chunks in order into d_w. No atomics anywhere, so the
// result does not depend on timing. (Before, a separate pass re-read d_y and x for d_w: the two
// largest reads of the backward, 49 calls a bench-1b step.)
//
// Wider rows: d_x by a block per row (two reductions), then d_w in two passes: a block per
// (32 columns, 128 rows), each of 8 row-lanes walking rows with stride 8, writes the chunk's sum
// per column (lanes added in a fixed order); the second pass adds the chunks in order. (A
// single pass over all rows, 48 blocks at dim 1536, took 115 us per call on an H100.)
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

// d_x and the chunk's d_w sums for rows of at most 32 * kCols values (see the top of the file).
template <int kCols>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_backward_fused_kernel(RmsNormBackward p, int64_t chunk_rows) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float part[32 * kCols];  // the chunk's d_w sums so far
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, dim = int(p.dim);
  const int64_t r0 = int64_t(blockIdx.x) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < p.rows ? r0 + chunk_rows : p.rows;
  float acc[kCols];  // column lane + 32 k's sum over this warp's rows
#pragma unroll
  for (int k = 0; k < kCols; ++k) acc[k] = 0.0f;
  for (int64_t r = r0 + warp; r < r1; r += kWarps) {
    const float* x = p.x + r * p.dim;
    const float* g = p.d_y + r * p.dim;
    const float rstd = p.rstd[r];
    float dot = 0.0f;  // mean over the row of (g w) * xhat
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
      const int c = lane + 32 * k;
      if (c < dim) dot += g[c] * p.w[c] * x[c] * rstd;
    }
    const float mean = warp_sum(dot) / float(p.dim);
    float* dx = p.d_x ? p.d_x + r * p.dim : nullptr;
    uint16_t* dx_bf16 = p.d_x_bf16 ? p.d_x_bf16 + r * p.dim : nullptr;
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
      const int c = lane + 32 * k;
      if (c >= dim) break;
      const float gc = g[c], xc = x[c];
      const float v = rstd * (gc * p.w[c] - xc * rstd * mean);
      const float out = p.accumulate_d_x ? dx[c] + v : v;
      if (dx) dx[c] = out;
      if (dx_bf16) dx_bf16[c] = __bfloat16_as_ushort(__float2bfloat16_rn(out));
      acc[k] += gc * xc * rstd;
    }
  }
  for (int w = 0; w < kWarps; ++w) {  // in warp order: the same sums on every run
    if (warp == w)
#pragma unroll
      for (int k = 0; k < kCols; ++k) {
        const int c = lane + 32 * k;
        if (c < dim) part[c] = w == 0 ? acc[k] : part[c] + acc[k];
      }
    __syncthreads();
  }
  for (int c = threadIdx.x; c < dim; c += kThreads)
    p.d_w_partial[int64_t(blockIdx.x) * p.dim + c] = part[c];
}

// In a block (32, 8) where each row lane y holds a partial sum s for column x of a tile: the
// lanes' sums added in lane order, returned to lane 0 (others get 0). Both d_w passes end so.
// part: the block's shared [8][33] (+1: lanes of one row lane write one bank apart).
__device__ __forceinline__ float sum_row_lanes_in_order(float s, float (*part)[33]) {
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  float total = 0.0f;
  if (threadIdx.y == 0)
    for (int l = 0; l < 8; ++l) total += part[l][threadIdx.x];
  return total;
}

// Block (32, 8): threadIdx.x picks the column inside a tile of 32, threadIdx.y the row lane;
// blockIdx.y the chunk of rows.
__global__ void rmsnorm_backward_dw_partial_kernel(RmsNormBackward p, int64_t chunk_rows) {
  __shared__ float part[8][33];
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < p.rows ? r0 + chunk_rows : p.rows;
  float s = 0.0f;
  if (col < p.dim)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8)
      s += p.d_y[r * p.dim + col] * p.x[r * p.dim + col] * p.rstd[r];
  const float total = sum_row_lanes_in_order(s, part);
  if (threadIdx.y == 0 && col < p.dim) p.d_w_partial[int64_t(blockIdx.y) * p.dim + col] = total;
}

// d_w from the chunks' sums: block (32, 8) over a tile of 32 columns, row lane l adding chunks
// l, l + 8, ... (up to about 256 chunks: a column's chunks are not one thread's serial walk),
// then the lanes added in order.
__global__ void rmsnorm_backward_dw_sum_kernel(RmsNormBackward p, int64_t chunks) {
  __shared__ float part[8][33];
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.0f;
  if (col < p.dim)
    for (int64_t c = threadIdx.y; c < chunks; c += 8) s += p.d_w_partial[c * p.dim + col];
  const float total = sum_row_lanes_in_order(s, part);
  if (threadIdx.y == 0 && col < p.dim) p.d_w[col] = p.accumulate_d_w ? p.d_w[col] + total : total;
}

}  // namespace

cudaError_t rmsnorm_forward(const RmsNormForward& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  rmsnorm_forward_kernel<<<unsigned(p.rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t rmsnorm_backward(const RmsNormBackward& p, cudaStream_t stream) {
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  if (!p.d_w_partial) return cudaErrorInvalidValue;
  const int64_t chunk_rows = rmsnorm_dw_chunk_rows(p.rows, p.dim);
  const int64_t chunks = rmsnorm_dw_chunks(p.rows, p.dim);
  if (chunks > 65535) return cudaErrorInvalidValue;  // blocks along y (the separate pass)
  const bool with_d_x = p.d_x || p.d_x_bf16;
  if (with_d_x && p.dim <= kRmsNormFusedMaxDim) {
    const unsigned blocks = unsigned(chunks);
    if (p.dim <= 512)
      rmsnorm_backward_fused_kernel<16><<<blocks, kThreads, 0, stream>>>(p, chunk_rows);
    else if (p.dim <= 1024)
      rmsnorm_backward_fused_kernel<32><<<blocks, kThreads, 0, stream>>>(p, chunk_rows);
    else if (p.dim <= 1536)
      rmsnorm_backward_fused_kernel<48><<<blocks, kThreads, 0, stream>>>(p, chunk_rows);
    else
      rmsnorm_backward_fused_kernel<64><<<blocks, kThreads, 0, stream>>>(p, chunk_rows);
  } else {
    if (with_d_x) rmsnorm_backward_dx_kernel<<<unsigned(p.rows), kThreads, 0, stream>>>(p);
    rmsnorm_backward_dw_partial_kernel<<<dim3(unsigned((p.dim + 31) / 32), unsigned(chunks)),
                                         dim3(32, 8), 0, stream>>>(p, chunk_rows);
  }
  rmsnorm_backward_dw_sum_kernel<<<unsigned((p.dim + 31) / 32), dim3(32, 8), 0, stream>>>(p,
                                                                                          chunks);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
