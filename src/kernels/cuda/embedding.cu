// Embedding lookup and its gradient.
//
// Forward: one thread per output element, grid-stride; an id of -1 gives a zero row. An id
// out of range is recorded (params.h, IndexError) and treated as -1.
// Backward: rows sharing a token id add into the same table row. Instead of atomics (whose
// order, and so whose float32 result, varies run to run) one thread owns one column and walks
// the rows in order, as the CPU does: the result is bit-reproducible. It exposes only `dim`
// threads of parallelism (7168 for V3), enough to be correct; a sort-by-id segmented sum is
// the faster deterministic design when this shows up in a profile.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

__global__ void embedding_forward_kernel(Embedding p) {
  const int64_t n = p.rows * p.dim;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / p.dim, c = idx % p.dim;
    const int32_t id = p.ids[r];
    const bool bad = id < -1 || id >= p.vocab;
    if (bad && c == 0) report_index_error(p.error, kBadTokenId, r, id, p.vocab);
    p.out[idx] = id < 0 || bad ? 0.0f : p.table[int64_t(id) * p.dim + c];
  }
}

__global__ void embedding_backward_kernel(Embedding p) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= p.dim) return;
  for (int64_t r = 0; r < p.rows; ++r) {
    const int32_t id = p.ids[r];
    if (id >= p.vocab || id < -1) {
      if (c == 0) report_index_error(p.error, kBadTokenId, r, id, p.vocab);
      continue;
    }
    if (id >= 0) p.d_table[int64_t(id) * p.dim + c] += p.d_out[r * p.dim + c];
  }
}

}  // namespace

cudaError_t embedding_forward(const Embedding& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.dim;
  if (n == 0) return cudaSuccess;
  embedding_forward_kernel<<<grid_for(n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t embedding_backward(const Embedding& p, cudaStream_t stream) {
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  embedding_backward_kernel<<<unsigned((p.dim + 127) / 128), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
