// The MoE router on the device (ops::route_forward, route_backward, moe_permute), so that a
// training step's routing never waits for the host: the CPU's arithmetic (kernels/cpu/router.cpp)
// in the same order per token, and the one selection rule (model/expert_selection.h). The host
// reads back only the per-sequence counts and sums it needs for the expert offsets, the load
// and the balance term.
//
// - route_forward: a warp per token scores its experts lane-parallel, chooses K with
//   warp_select_experts (kernels/cuda/warp_select.cuh: the serial rule's experts, tie for tie),
//   and its lane 0 does the sums in the CPU's order and counts the choices into seq_counts with
//   float atomics (integers below 2^24: exact in any order). (A thread per token took 76 us
//   per layer at 4096 tokens on an H100.) Then the per-sequence sums of score / score_sum
//   in float64: chunks of kSeqChunk tokens in parallel, the chunks added in order by a second
//   launch (deterministic; the CPU adds token by token, so the two agree to float64 rounding).
// - route_backward: a thread per token writes its row of d_logits, as the CPU loop does.
// - moe_permute: a block per expert walks the assignments in order, a warp ballot and the
//   warps' counts in each tile giving each of the expert's assignments its rank: stable in
//   token order.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/warp_select.cuh"

namespace dsv3::cuda {
namespace {

constexpr int kRouteWarps = 4;  // tokens per block of route_forward_kernel
constexpr int kPermuteThreads = 1024, kPermuteWarps = kPermuteThreads / 32;

__global__ void route_forward_kernel(RouteForward p) {
  __shared__ float score_shared[kRouteWarps][kMaxWarpSelectExperts];
  __shared__ float sel_shared[kRouteWarps][kMaxWarpSelectExperts];
  __shared__ int32_t picks_shared[kRouteWarps][kMaxWarpSelectExperts];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (t >= p.n) return;  // whole warps
  const int experts = p.select.experts, k = p.select.k;
  const float* l = p.logits + t * experts;
  float* sc = score_shared[warp];
  float* sel = sel_shared[warp];
  int32_t* picks = picks_shared[warp];
  if (p.sigmoid) {
    for (int e = lane; e < experts; e += 32) sc[e] = 1.0f / (1.0f + expf(-l[e]));
  } else {
    float mx, sum;
    warp_softmax_terms(l, experts, lane, sc, mx, sum);
    for (int e = lane; e < experts; e += 32) sc[e] /= sum;
  }
  float sv[kWarpSelectPerLane];
#pragma unroll
  for (int j = 0; j < kWarpSelectPerLane; ++j) {
    const int e = lane + 32 * j;
    if (e >= experts) continue;
    p.scores[t * experts + e] = sc[e];
    sv[j] = sc[e] + (p.bias ? p.bias[e] : 0.0f);
    sel[e] = sv[j];
  }
  __syncwarp();
  warp_select_experts(p.select, sel, sv, lane, picks);
  if (lane != 0) return;
  float total = 0.0f;
  for (int e = 0; e < experts; ++e) total += sc[e];
  p.score_sum[t] = total;
  // Gating weights come from the unbiased scores.
  int32_t* chosen = p.indices + t * k;
  float* wt = p.weights + t * k;
  float sum = 0.0f;
  for (int j = 0; j < k; ++j) {
    chosen[j] = picks[j];
    sum += (wt[j] = sc[picks[j]]);
  }
  float scale = p.scaling;
  if (p.norm_topk) scale /= (sum + 1e-20f);
  for (int j = 0; j < k; ++j) wt[j] *= scale;
  float* counts = p.seq_counts + (t / p.seq) * experts;
  for (int j = 0; j < k; ++j) atomicAdd(counts + chosen[j], 1.0f);
}

// grid (batch, chunks), a thread per expert (looping past blockDim): one chunk's sum.
__global__ void route_seq_partial_kernel(RouteForward p) {
  const int64_t b = blockIdx.x, c = blockIdx.y, experts = p.select.experts;
  const int64_t first = b * p.seq + c * p.chunk;
  const int64_t end = (b + 1) * p.seq, last = first + p.chunk < end ? first + p.chunk : end;
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
    double acc = 0.0;
    for (int64_t t = first; t < last; ++t)
      acc += double(p.scores[t * experts + e]) / double(p.score_sum[t]);
    p.seq_partial[(b * gridDim.y + c) * experts + e] = acc;
  }
}

// A thread per (sequence, expert): the chunks' sums in order.
__global__ void route_seq_sum_kernel(RouteForward p, int64_t chunks) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t experts = p.select.experts;
  if (i >= p.batch * experts) return;
  const int64_t b = i / experts, e = i % experts;
  double acc = 0.0;
  for (int64_t c = 0; c < chunks; ++c) acc += p.seq_partial[(b * chunks + c) * experts + e];
  p.seq_prob[i] = acc;
}

__global__ void route_backward_kernel(RouteBackward p) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= p.n) return;
  const int experts = p.select.experts, k = p.select.k;
  const float* s = p.scores + t * experts;
  float* d = p.d_logits + t * experts;
  for (int e = 0; e < experts; ++e) d[e] = 0.0f;
  // Through the gating weights w_j = scale * s_j (/ Z, Z = sum of chosen s + 1e-20).
  const int32_t* chosen = p.indices + t * k;
  const float* g = p.d_weights + t * k;
  if (p.norm_topk) {
    float z = 1e-20f, dot = 0.0f;
    for (int j = 0; j < k; ++j) {
      z += s[chosen[j]];
      dot += g[j] * s[chosen[j]];
    }
    for (int j = 0; j < k; ++j) d[chosen[j]] += p.scaling * (g[j] / z - dot / (z * z));
  } else {
    for (int j = 0; j < k; ++j) d[chosen[j]] += p.scaling * g[j];
  }
  // Through the balance term's normalized scores s_e / sum(s).
  if (p.alpha != 0.0f) {
    const float f_scale = float(experts) / float(int64_t(k) * p.seq);
    const float balance_grad = p.alpha / float(p.batch * p.seq);
    const float* counts = p.seq_counts + (t / p.seq) * experts;
    const float total = p.score_sum[t];
    float dot = 0.0f;
    for (int e = 0; e < experts; ++e) dot += balance_grad * f_scale * counts[e] * s[e];
    dot /= total;
    for (int e = 0; e < experts; ++e) d[e] += (balance_grad * f_scale * counts[e] - dot) / total;
  }
  // Through the scoring function.
  if (p.sigmoid) {
    for (int e = 0; e < experts; ++e) d[e] *= s[e] * (1.0f - s[e]);
  } else {
    float dot = 0.0f;
    for (int e = 0; e < experts; ++e) dot += d[e] * s[e];
    for (int e = 0; e < experts; ++e) d[e] = s[e] * (d[e] - dot);
  }
}

// A block per expert (grid-stride), kPermuteThreads threads: tiles of assignments in order; in
// each, the assignments of this expert get consecutive rows, ranked by a warp ballot and the
// warps' counts before them. (A block-wide Hillis-Steele scan per 256-assignment tile, 16
// barriers each, took 78 us per layer at 24,576 assignments on an H100.)
__global__ void permute_kernel(MoePermute p) {
  __shared__ int32_t warp_count[kPermuteWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t e = blockIdx.x; e < p.experts; e += gridDim.x) {
    int64_t next = p.offsets[e];
    for (int64_t base = 0; base < p.assignments; base += kPermuteThreads) {
      const int64_t a = base + threadIdx.x;
      const bool mine = a < p.assignments && p.indices[a] == e;
      const unsigned bits = __ballot_sync(kFullMask, mine);
      if (lane == 0) warp_count[warp] = __popc(bits);
      __syncthreads();
      int before = 0, total = 0;  // this expert's assignments in earlier warps, in the tile
      for (int w = 0; w < kPermuteWarps; ++w) {
        if (w < warp) before += warp_count[w];
        total += warp_count[w];
      }
      if (mine) {
        const int64_t r = next + before + __popc(bits & ((1u << lane) - 1u));
        p.permuted_token[r] = int32_t(a / p.k);
        p.permuted_row[a] = int32_t(r);
      }
      next += total;
      __syncthreads();  // the next tile overwrites warp_count
    }
  }
}

}  // namespace

cudaError_t route_forward(const RouteForward& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  const int experts = p.select.experts;
  if (experts <= 0 || experts > kMaxWarpSelectExperts || p.select.groups > 64 ||
      p.select.groups < 1 || p.select.k > experts)
    return cudaErrorInvalidValue;
  route_forward_kernel<<<unsigned((p.n + kRouteWarps - 1) / kRouteWarps), kRouteWarps * 32, 0,
                         stream>>>(p);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  const int64_t chunks = route_seq_chunks(p.seq, p.chunk);  // launch.h
  route_seq_partial_kernel<<<dim3(unsigned(p.batch), unsigned(chunks)),
                             std::min(256, (experts + 31) / 32 * 32), 0, stream>>>(p);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  route_seq_sum_kernel<<<unsigned((p.batch * experts + 255) / 256), 256, 0, stream>>>(p, chunks);
  return cudaGetLastError();
}

cudaError_t route_backward(const RouteBackward& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  route_backward_kernel<<<unsigned((p.n + 127) / 128), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t moe_permute(const MoePermute& p, cudaStream_t stream) {
  if (p.assignments == 0 || p.experts == 0) return cudaSuccess;
  permute_kernel<<<unsigned(std::min<int64_t>(p.experts, 65535)), kPermuteThreads, 0, stream>>>(
      p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
