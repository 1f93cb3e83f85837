// Causal attention: a flash-style forward (online softmax over key tiles; the [seq, seq] score
// matrix never exists in device memory), plus the two row-wise kernels the probability-based
// op interface needs (ops::attention_forward returns P; ops::attention_backward consumes it).
// The lse-based backward (ops::attention_backward_lse) is in attention_backward.cu.
//
// ---- attention_forward_kernel: launch shape and memory layout ----
// grid (ceil(seq / kWarps), bh), block kWarps warps of 32. Warp w of block x owns query row
// i = x * kWarps + w of head bh. Shared memory (dynamic, floats):
//   Ks [kTile][qk_dim + 1]   the key tile; +1 padding: lane j reads row j, one bank apart
//   Vs [kTile][v_dim]        the value tile; lanes read consecutive columns of one row
//   Qs [kWarps][qk_dim]      each warp's query row, pre-multiplied by the softmax scale
// For each key tile (up to the block's last row, causally), lane j of a warp computes the score
// of key j0 + j, the warp takes the tile's max and updates its running max m and sum l
// (rescaling its accumulator by exp(m_old - m_new)), then accumulates sum_j p_j V[j] with p_j
// broadcast by shuffles. Each lane keeps v_dim / 32 output columns (lane, lane + 32, ...) in
// registers: kVChunks = kAttentionMaxHeadDim / 32 slots, indexed only by unrolled constants.
// At qk 192, v 128 the block uses 47 KB of shared memory; above 48 KB the launcher raises the
// kernel's dynamic shared-memory limit.
//
// This is the correct-first version: float32 on CUDA cores, one query row per warp. The fast
// version (BF16 wgmma tiles with TMA loads on sm_90a) replaces the kernel behind the same
// parameter struct and is tested by the same op cases.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kTile = 32;  // keys per tile: one per lane
constexpr int kVChunks = int(kAttentionMaxHeadDim / 32);

size_t attention_smem_bytes(int64_t qk_dim, int64_t v_dim) {
  return sizeof(float) * size_t(kTile * (qk_dim + 1) + kTile * v_dim + kWarps * qk_dim);
}

__global__ void __launch_bounds__(kWarps * 32) attention_forward_kernel(AttentionForward p) {
  extern __shared__ float smem[];
  const int64_t qk = p.qk_dim, dv = p.v_dim, ks_stride = qk + 1;
  float* Ks = smem;
  float* Vs = Ks + kTile * ks_stride;
  float* Qs = Vs + kTile * dv;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t bh = blockIdx.y;
  const int64_t q0 = int64_t(blockIdx.x) * kWarps;
  const int64_t i = q0 + warp;  // this warp's query row
  const int64_t last_row = min(q0 + kWarps, p.seq) - 1;
  const float* qb = p.q + bh * p.seq * qk;
  const float* kb = p.k + bh * p.seq * qk;
  const float* vb = p.v + bh * p.seq * dv;

  // The block's query rows, scaled (rows past the end are zero and never used).
  for (int64_t idx = threadIdx.x; idx < kWarps * qk; idx += blockDim.x) {
    const int64_t row = q0 + idx / qk;
    Qs[idx] = row < p.seq ? qb[row * qk + idx % qk] * p.scale : 0.0f;
  }

  float m = -INFINITY, l = 0.0f;
  float acc[kVChunks];
#pragma unroll
  for (int c = 0; c < kVChunks; ++c) acc[c] = 0.0f;

  for (int64_t j0 = 0; j0 <= last_row; j0 += kTile) {
    __syncthreads();  // the previous tile is no longer read (and Qs is written, first time)
    for (int64_t idx = threadIdx.x; idx < kTile * qk; idx += blockDim.x) {
      const int64_t jj = idx / qk, d = idx % qk, j = j0 + jj;
      Ks[jj * ks_stride + d] = j < p.seq ? kb[j * qk + d] : 0.0f;
    }
    for (int64_t idx = threadIdx.x; idx < kTile * dv; idx += blockDim.x) {
      const int64_t jj = idx / dv, j = j0 + jj;
      Vs[idx] = j < p.seq ? vb[j * dv + idx % dv] : 0.0f;
    }
    __syncthreads();
    // Warp-uniform: every lane of a warp has the same i, so shuffles below see all 32 lanes.
    if (i >= p.seq || j0 > i) continue;

    const int64_t j = j0 + lane;
    float s = -INFINITY;
    if (j <= i) {
      // attention_backward.cu forms its scores with the same score_dots, so its
      // P = exp(s - lse) uses the very s whose log-sum-exp lse is.
      float dot[1];
      score_dots<1>(Qs + warp * qk, 0, Ks + lane * ks_stride, int(qk), dot);
      s = dot[0];
    }
    // Key j0 <= i is valid, so the tile max is finite.
    const float m_new = fmaxf(m, warp_max(s));
    const float pj = j <= i ? expf(s - m_new) : 0.0f;
    const float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
    l = l * corr + warp_sum(pj);
#pragma unroll
    for (int c = 0; c < kVChunks; ++c) acc[c] *= corr;
    const int64_t keys = min(int64_t(kTile), i - j0 + 1);  // causal: keys j0 .. i of this tile
    for (int64_t jj = 0; jj < keys; ++jj) {
      const float w = __shfl_sync(kFullMask, pj, int(jj));
      const float* vrow = Vs + jj * dv;
#pragma unroll
      for (int c = 0; c < kVChunks; ++c) {
        const int64_t d = lane + 32 * c;
        if (d < dv) acc[c] += w * vrow[d];
      }
    }
    m = m_new;
  }

  if (i < p.seq) {
    float* orow = p.o + (bh * p.seq + i) * dv;
    const float inv = 1.0f / l;
#pragma unroll
    for (int c = 0; c < kVChunks; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < dv) orow[d] = acc[c] * inv;
    }
    if (lane == 0) p.lse[bh * p.seq + i] = m + logf(l);
  }
}

// One thread per element of P, grid-stride. Row 0 has a single key, so its softmax is exactly
// 1: exp(s - lse) with s from the GEMM and lse from the flash kernel (two roundings of the same
// score) gives 1 +- an ulp, and softmax_backward would then leave dS = P dP (1 - P) != 0 where
// the gradient is exactly zero. With P = 1 its dS = 1 (dP - dP) is an exact 0.
__global__ void causal_softmax_from_lse_kernel(CausalSoftmaxFromLse p) {
  const int64_t n = p.bh * p.seq * p.seq;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = idx % p.seq, row = idx / p.seq, i = row % p.seq;
    p.probs[idx] = j > i ? 0.0f : i == 0 ? 1.0f : expf(p.probs[idx] - p.lse[row]);
  }
}

// One block of 256 threads per row (bh, i).
__global__ void softmax_backward_kernel(SoftmaxBackward p) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x, i = row % p.seq;
  const float* pr = p.probs + row * p.seq;
  float* dr = p.d_p + row * p.seq;
  float dot = 0.0f;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) dot += pr[j] * dr[j];
  dot = block_sum(dot, red);
  for (int64_t j = threadIdx.x; j < p.seq; j += blockDim.x)
    dr[j] = j <= i ? pr[j] * (dr[j] - dot) * p.scale : 0.0f;
}

}  // namespace

cudaError_t attention_forward(const AttentionForward& p, cudaStream_t stream) {
  if (p.bh == 0 || p.seq == 0) return cudaSuccess;
  if (p.qk_dim < 1 || p.v_dim < 1 || p.qk_dim > kAttentionMaxHeadDim ||
      p.v_dim > kAttentionMaxHeadDim || p.bh > 65535)
    return cudaErrorInvalidValue;
  const size_t smem = attention_smem_bytes(p.qk_dim, p.v_dim);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(attention_forward_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(unsigned((p.seq + kWarps - 1) / kWarps), unsigned(p.bh));
  attention_forward_kernel<<<grid, kWarps * 32, smem, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t causal_softmax_from_lse(const CausalSoftmaxFromLse& p, cudaStream_t stream) {
  const int64_t n = p.bh * p.seq * p.seq;
  if (n == 0) return cudaSuccess;
  causal_softmax_from_lse_kernel<<<grid_for(n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t softmax_backward(const SoftmaxBackward& p, cudaStream_t stream) {
  if (p.bh * p.seq == 0) return cudaSuccess;
  softmax_backward_kernel<<<unsigned(p.bh * p.seq), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
