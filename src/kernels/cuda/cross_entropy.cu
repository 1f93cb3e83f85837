// Softmax cross-entropy, forward and backward in one kernel.
//
// One block of 256 threads per row (vocabularies are large: 129280 for V3); thread t owns the
// row's elements t, t + 256, ... The max, the sum of exp, then (with a gradient) the write of
// scale * (softmax - onehot). Every element is read and written by the same thread, and the
// target's logit is read before any write, so d_logits may be the logits themselves. The
// per-row loss is written in double; the host adds the rows in order (deterministic, like the
// CPU). The logits are the step's largest activation ([tokens, vocab] float32), so the kernels
// read them as few times as they can:
// - rows of at most 256 x 128 logits (32,768: bench-1b's 32,000 and the small models): once,
//   each thread keeping its elements in registers for three sweeps (max, then sum, then the
//   gradient);
// - longer rows: twice, the max and the sum in one sweep (each thread's running sum rescaled
//   whenever its running max grows, the threads' sums rescaled to the row's max), then the
//   gradient.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

constexpr int kThreads = 256;

// Row r's pointers and target; a left-out or out-of-range target is handled here (zero loss,
// zero gradient, the latter recorded), and the caller returns when this returns false.
struct CrossEntropyRow {
  const float* row;
  float* drow;
  uint16_t* drow_bf16;
  bool grad;
  int32_t target;
};

__device__ bool cross_entropy_row(const CrossEntropy& p, int64_t r, CrossEntropyRow& c) {
  c.row = p.logits + r * p.vocab;
  c.drow = p.d_logits ? p.d_logits + r * p.vocab : nullptr;
  c.drow_bf16 = p.d_logits_bf16 ? p.d_logits_bf16 + r * p.vocab : nullptr;
  c.grad = c.drow || c.drow_bf16;
  c.target = p.targets[r];
  const bool bad = c.target < -1 || c.target >= p.vocab;
  if (bad && threadIdx.x == 0) report_index_error(p.error, kBadTarget, r, c.target, p.vocab);
  if (c.target >= 0 && !bad) return true;
  // A left-out position: no loss, zero gradient.
  if (c.grad)
    for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x)
      store_f32_or_bf16(c.drow, c.drow_bf16, j, 0.0f);
  if (threadIdx.x == 0) p.row_loss[r] = 0.0;
  return false;
}

__global__ void cross_entropy_kernel(CrossEntropy p) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  CrossEntropyRow c;
  if (!cross_entropy_row(p, r, c)) return;
  const float* row = c.row;
  const float target_logit = row[c.target];
  // This thread's max and its sum of exp(x - that max), in one sweep.
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
    const float x = row[j];
    if (x > m) {
      s = s * expf(m - x) + 1.0f;  // the first element: 0 * exp(-inf) + 1
      m = x;
    } else if (m > -INFINITY) {  // (-inf after -inf adds nothing, not exp(-inf + inf))
      s += expf(x - m);
    }
  }
  const float mx = block_max(m, red);
  // A thread without elements (or whose all are -inf) adds nothing.
  const float sum = block_sum(m == -INFINITY ? 0.0f : s * expf(m - mx), red);
  if (threadIdx.x == 0) p.row_loss[r] = log(double(sum)) + double(mx) - double(target_logit);
  if (!c.grad) return;
  // Every thread has read the target logit above (block_sum synchronised), so overwriting the
  // row in place (float32 d_logits over the logits) is safe.
  const float inv = p.scale / sum;
  for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
    const float g = expf(row[j] - mx) * inv;
    store_f32_or_bf16(c.drow, c.drow_bf16, j, j == c.target ? g - p.scale : g);
  }
}

// A row of at most kThreads * kPerThread logits held in registers (see the top of the file).
template <int kPerThread>
__global__ void __launch_bounds__(kThreads) cross_entropy_in_registers_kernel(CrossEntropy p) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  CrossEntropyRow c;
  if (!cross_entropy_row(p, r, c)) return;
  const float target_logit = c.row[c.target];
  // Element i of this thread is the row's threadIdx.x + i * kThreads (int: the row is short).
  const int first = int(threadIdx.x), vocab = int(p.vocab);
  const int mine = first < vocab ? (vocab - 1 - first) / kThreads + 1 : 0;
  const float* in = c.row + first;
  float v[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) v[i] = i < mine ? in[i * kThreads] : 0.0f;
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i)
    if (i < mine) mx = fmaxf(mx, v[i]);
  mx = block_max(mx, red);
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i)
    if (i < mine) sum += expf(v[i] - mx);
  sum = block_sum(sum, red);
  if (threadIdx.x == 0) p.row_loss[r] = log(double(sum)) + double(mx) - double(target_logit);
  if (!c.grad) return;
  // Every thread's reads are done (block_sum synchronised): the row may be overwritten.
  const float inv = p.scale / sum;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    if (i >= mine) break;
    const int j = first + i * kThreads;
    const float g = expf(v[i] - mx) * inv;
    store_f32_or_bf16(c.drow, c.drow_bf16, j, j == c.target ? g - p.scale : g);
  }
}

}  // namespace

cudaError_t cross_entropy(const CrossEntropy& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const unsigned rows = unsigned(p.rows);
  if (p.vocab <= kThreads * 32)
    cross_entropy_in_registers_kernel<32><<<rows, kThreads, 0, stream>>>(p);
  else if (p.vocab <= kThreads * 64)
    cross_entropy_in_registers_kernel<64><<<rows, kThreads, 0, stream>>>(p);
  else if (p.vocab <= kThreads * 128)
    cross_entropy_in_registers_kernel<128><<<rows, kThreads, 0, stream>>>(p);
  else
    cross_entropy_kernel<<<rows, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
