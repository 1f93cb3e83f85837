// Softmax cross-entropy, forward and backward in one pass over the logits.
//
// One block of 256 threads per row (vocabularies are large: 129280 for V3). Three sweeps over
// the row: max, sum of exp, then (with a gradient) the write of scale * (softmax - onehot).
// Every element is read and written by the same thread in the last sweep, and the target's
// logit is read before any write, so d_logits may be the logits themselves. The per-row loss
// is written in double; the host adds the rows in order (deterministic, like the CPU).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void cross_entropy_kernel(CrossEntropy p) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const float* row = p.logits + r * p.vocab;
  float* drow = p.d_logits ? p.d_logits + r * p.vocab : nullptr;
  uint16_t* drow_bf16 = p.d_logits_bf16 ? p.d_logits_bf16 + r * p.vocab : nullptr;
  const bool grad = drow || drow_bf16;
  const int32_t target = p.targets[r];
  const bool bad = target < -1 || target >= p.vocab;
  if (bad && threadIdx.x == 0) report_index_error(p.error, kBadTarget, r, target, p.vocab);
  if (target < 0 || bad) {  // a left-out position: no loss, zero gradient
    if (grad)
      for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x)
        store_f32_or_bf16(drow, drow_bf16, j, 0.0f);
    if (threadIdx.x == 0) p.row_loss[r] = 0.0;
    return;
  }
  const float target_logit = row[target];
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = block_max(mx, red);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) sum += expf(row[j] - mx);
  sum = block_sum(sum, red);
  if (threadIdx.x == 0) p.row_loss[r] = log(double(sum)) + double(mx) - double(target_logit);
  if (grad) {
    // Every thread has read the target logit above (block_sum synchronised), so overwriting
    // the row in place (float32 d_logits over the logits) is safe.
    const float inv = p.scale / sum;
    for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
      const float g = expf(row[j] - mx) * inv;
      store_f32_or_bf16(drow, drow_bf16, j, j == target ? g - p.scale : g);
    }
  }
}

}  // namespace

cudaError_t cross_entropy(const CrossEntropy& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  cross_entropy_kernel<<<unsigned(p.rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
