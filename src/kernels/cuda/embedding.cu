// Embedding lookup and its gradient.
//
// Forward: a block per row, its threads over the columns; an id of -1 gives a zero row. An id
// out of range is recorded (params.h, IndexError) and treated as -1.
// Backward: rows sharing a token id add into the same table row. Instead of atomics (whose
// order, and so whose float32 result, varies run to run) each id's first row leads: its block
// adds that id's rows to the table row in row order, as the CPU does, so the result is
// bit-reproducible. One block per row; a block whose id appeared earlier has nothing to do.
// (The first version, one thread per column walking every row, took 2 ms per step on an H100
// at 4096 x 1536: 12 blocks on 132 SMs.)
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

__global__ void embedding_forward_kernel(Embedding p) {
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int32_t id = p.ids[r];
    const bool bad = id < -1 || id >= p.vocab;
    if (bad && threadIdx.x == 0) report_index_error(p.error, kBadTokenId, r, id, p.vocab);
    const float* src = id < 0 || bad ? nullptr : p.table + int64_t(id) * p.dim;
    for (int64_t c = threadIdx.x; c < p.dim; c += blockDim.x)
      p.out[r * p.dim + c] = src ? src[c] : 0.0f;
  }
}

// Columns per thread held in registers; dims above kEmbedThreads * kEmbedCols take more threads.
constexpr int kEmbedThreads = 256, kEmbedCols = 32;

__global__ void embedding_backward_kernel(Embedding p) {
  __shared__ int seen;  // rows before this one with its id (counted: no two plain writes race)
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int32_t id = p.ids[r];
    if (id >= p.vocab || id < -1) {  // uniform over the block
      if (threadIdx.x == 0) report_index_error(p.error, kBadTokenId, r, id, p.vocab);
      continue;
    }
    if (id < 0) continue;
    if (threadIdx.x == 0) seen = 0;
    __syncthreads();
    for (int64_t q = threadIdx.x; q < r; q += blockDim.x)
      if (p.ids[q] == id) atomicAdd(&seen, 1);
    __syncthreads();
    const bool leads = seen == 0;
    __syncthreads();  // all have read `seen` before the next row resets it
    if (!leads) continue;
    float acc[kEmbedCols];
    float* dst = p.d_table + int64_t(id) * p.dim;
#pragma unroll
    for (int j = 0; j < kEmbedCols; ++j) {
      const int64_t c = threadIdx.x + int64_t(j) * blockDim.x;
      acc[j] = c < p.dim ? dst[c] : 0.0f;
    }
    for (int64_t q = r; q < p.rows; ++q) {
      if (p.ids[q] != id) continue;
      const float* src = p.d_out + q * p.dim;
#pragma unroll
      for (int j = 0; j < kEmbedCols; ++j) {
        const int64_t c = threadIdx.x + int64_t(j) * blockDim.x;
        if (c < p.dim) acc[j] += src[c];
      }
    }
#pragma unroll
    for (int j = 0; j < kEmbedCols; ++j) {
      const int64_t c = threadIdx.x + int64_t(j) * blockDim.x;
      if (c < p.dim) dst[c] = acc[j];
    }
  }
}

}  // namespace

cudaError_t embedding_forward(const Embedding& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.dim;
  if (n == 0) return cudaSuccess;
  // A block per row (looping past the grid), its threads over the row's columns.
  const unsigned blocks = unsigned(std::min<int64_t>(p.rows, 65535 * 8));
  embedding_forward_kernel<<<blocks, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t embedding_backward(const Embedding& p, cudaStream_t stream) {
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  // Enough threads that each holds at most kEmbedCols columns (dim <= 32768 at 1024 threads).
  const int64_t threads = std::max<int64_t>(kEmbedThreads, (p.dim + kEmbedCols - 1) / kEmbedCols);
  if (threads > 1024) return cudaErrorInvalidValue;
  const unsigned blocks = unsigned(std::min<int64_t>(p.rows, 65535));
  embedding_backward_kernel<<<blocks, unsigned(threads), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
