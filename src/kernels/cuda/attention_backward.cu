// Causal attention backward from lse, flash style (kernels/cuda/params.h, AttentionBackward):
// the probabilities are recomputed tile by tile from q, k and the forward's lse, so nothing of
// size [seq, seq] exists in device memory. Three kernels, no float atomics (the result does not
// depend on scheduling):
//   1. rows: D_i = dO_i . O_i, one warp per query row;
//   2. dkv:  one block per tile of kB keys; it loops over the query tiles at or below its keys
//            (causal) and accumulates d_k and d_v for its keys in registers;
//   3. dq:   one block per tile of kB queries; it loops over the key tiles up to its last row
//            and accumulates d_q in registers.
// P and dP are computed twice (once in dkv, once in dq): the price of owning every output row
// in one block instead of adding partial sums with atomics.
//
// ---- Tiles and threads (both tile kernels) ----
// kThreads = 256 (8 warps), kB = 32 queries x 32 keys per tile.
// Step 1 (scores_tile): thread (ty = tid / 32, tx = tid % 32) computes the scores and dP of key
//   tx against rows ty + 8 r, r < 4: K and V rows are read by lane (row stride odd: no bank
//   conflicts), Q and dO rows are read by the whole warp at one address (a broadcast). It writes
//   P and dS for the tile to shared memory.
// Step 2: warp w owns tile rows w * 4 .. w * 4 + 3 (keys in dkv, queries in dq); lane owns head
//   columns lane + 32 c (c < kChunks = 8, so head dims up to 256), accumulators in registers,
//   indexed only by unrolled constants. Columns are read consecutively by lane (no conflicts).
// Shared memory (dynamic, floats; strides `qk | 1` and `dv | 1` are odd):
//   Ks [kB][qk | 1], Vs [kB][dv | 1]  the key tile          (dkv: its own keys, loaded once)
//   Qs [kB][qk], dOs [kB][dv]         the query tile, Q pre-multiplied by the scale
//   Ps [kB][kB + 1], dSs [kB][kB + 1] P and dS of the tile  (dq uses only dSs)
//   Ls [kB], Ds [kB]                  lse and D of the tile's query rows
// At qk 192, v 128 that is 89 KB (two blocks per SM on Hopper); at 256 / 256, 137 KB, which
// needs an opt-in limit of that size (sm_80 and sm_90 have it; sm_86 / sm_89 do not).
//
// The scores are formed exactly as the forward kernel forms them (scaled q, then score_dots of
// common.cuh), so P = exp(s - lse) uses the very s whose log-sum-exp lse is.
//
// This is the correct-first version: float32 on CUDA cores. Tensor-core tiles replace it behind
// the same parameter struct and op cases.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kB = 32;                           // queries per tile = keys per tile = warp size
constexpr int kRowGroups = kThreads / kB;        // step 1: rows ty, ty + 8, ...
constexpr int kRowsPerThread = kB / kRowGroups;  // step 1: 4 score rows per thread
constexpr int kRowsPerWarp = kB / kWarps;        // step 2: 4 tile rows per warp
constexpr int kChunks = int(kAttentionMaxHeadDim / 32);
constexpr int kPs = kB + 1;  // row stride of Ps / dSs
static_assert(kB == 32, "step 1 maps one key per lane: a warp is one row group");
static_assert(kRowsPerThread * kRowGroups == kB && kRowsPerWarp * kWarps == kB, "tile split");

struct Smem {
  float *Ks, *Vs, *Qs, *dOs, *Ps, *dSs, *Ls, *Ds;
  int ks, vs;  // row strides of Ks and Vs
};

__host__ __device__ inline int64_t odd_stride(int64_t n) { return n | 1; }

__device__ inline Smem carve(float* base, int qk, int dv) {
  Smem s;
  s.ks = int(odd_stride(qk));
  s.vs = int(odd_stride(dv));
  s.Ks = base;
  s.Vs = s.Ks + kB * s.ks;
  s.Qs = s.Vs + kB * s.vs;
  s.dOs = s.Qs + kB * qk;
  s.Ps = s.dOs + kB * dv;
  s.dSs = s.Ps + kB * kPs;
  s.Ls = s.dSs + kB * kPs;
  s.Ds = s.Ls + kB;
  return s;
}

size_t smem_bytes(int64_t qk, int64_t dv) {
  return sizeof(float) *
         size_t(kB * (odd_stride(qk) + odd_stride(dv) + qk + dv) + 2 * kB * kPs + 2 * kB);
}

// The kB query rows starting at i0 into Qs (times the scale), dOs, Ls, Ds; zeros past the end.
__device__ void load_query_tile(const Smem& s, const AttentionBackward& p, int64_t bh, int64_t i0) {
  const int qk = int(p.qk_dim), dv = int(p.v_dim);
  const float* qb = p.q + bh * p.seq * qk;
  const float* gb = p.d_o + bh * p.seq * dv;
  for (int idx = threadIdx.x; idx < kB * qk; idx += kThreads) {
    const int64_t i = i0 + idx / qk;
    s.Qs[idx] = i < p.seq ? qb[i * qk + idx % qk] * p.scale : 0.0f;
  }
  for (int idx = threadIdx.x; idx < kB * dv; idx += kThreads) {
    const int64_t i = i0 + idx / dv;
    s.dOs[idx] = i < p.seq ? gb[i * dv + idx % dv] : 0.0f;
  }
  if (threadIdx.x < kB) {
    const int64_t i = i0 + threadIdx.x;
    s.Ls[threadIdx.x] = i < p.seq ? p.lse[bh * p.seq + i] : 0.0f;
    s.Ds[threadIdx.x] = i < p.seq ? p.d_rows[bh * p.seq + i] : 0.0f;
  }
}

// The kB keys starting at j0 into Ks, Vs; zeros past the end.
__device__ void load_key_tile(const Smem& s, const AttentionBackward& p, int64_t bh, int64_t j0) {
  const int qk = int(p.qk_dim), dv = int(p.v_dim);
  const float* kb = p.k + bh * p.seq * qk;
  const float* vb = p.v + bh * p.seq * dv;
  for (int idx = threadIdx.x; idx < kB * qk; idx += kThreads) {
    const int jj = idx / qk, d = idx % qk;
    const int64_t j = j0 + jj;
    s.Ks[jj * s.ks + d] = j < p.seq ? kb[j * qk + d] : 0.0f;
  }
  for (int idx = threadIdx.x; idx < kB * dv; idx += kThreads) {
    const int jj = idx / dv, d = idx % dv;
    const int64_t j = j0 + jj;
    s.Vs[jj * s.vs + d] = j < p.seq ? vb[j * dv + d] : 0.0f;
  }
}

// Step 1: P (when wanted) and dS of query rows i0 .. i0 + kB - 1 against keys j0 .. j0 + kB - 1
// into Ps / dSs; zero where j > i (causal) or past the end. Reads Ks, Vs, Qs, dOs, Ls, Ds.
__device__ void scores_tile(const Smem& s, const AttentionBackward& p, int64_t i0, int64_t j0,
                            bool want_p) {
  const int qk = int(p.qk_dim), dv = int(p.v_dim);
  const int tx = threadIdx.x % kB, ty = threadIdx.x / kB;
  // Scores as the forward kernel forms them (score_dots), then dP the same way.
  float sc[kRowsPerThread], dp[kRowsPerThread];
  score_dots<kRowsPerThread>(s.Qs + ty * qk, kRowGroups * qk, s.Ks + tx * s.ks, qk, sc);
  score_dots<kRowsPerThread>(s.dOs + ty * dv, kRowGroups * dv, s.Vs + tx * s.vs, dv, dp);
  const int64_t j = j0 + tx;
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int ii = ty + kRowGroups * r;
    const int64_t i = i0 + ii;
    float pr = 0.0f, ds = 0.0f;
    if (i < p.seq && j <= i) {
      if (i == 0) {
        // One key: the softmax is the constant 1, so P = 1 and dS = 0 exactly (exp(s - lse)
        // and dP - D would leave rounding residues where the gradient is exactly zero).
        pr = 1.0f;
      } else {
        pr = expf(sc[r] - s.Ls[ii]);
        ds = pr * (dp[r] - s.Ds[ii]);
      }
    }
    if (want_p) s.Ps[ii * kPs + tx] = pr;
    s.dSs[ii * kPs + tx] = ds;
  }
}

// D_i = dO_i . O_i, one warp per row (grid-stride; the loop bound is warp-uniform).
__global__ void __launch_bounds__(kThreads) attention_backward_rows_kernel(AttentionBackward p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t rows = p.bh * p.seq, dv = p.v_dim;
  for (int64_t row = int64_t(blockIdx.x) * kWarps + warp; row < rows;
       row += int64_t(gridDim.x) * kWarps) {
    const float* g = p.d_o + row * dv;
    const float* o = p.o + row * dv;
    float acc = 0.0f;
    for (int64_t c = lane; c < dv; c += 32) acc = fmaf(g[c], o[c], acc);
    acc = warp_sum(acc);
    if (lane == 0) p.d_rows[row] = acc;
  }
}

// grid (ceil(seq / kB), bh): block x owns keys x * kB ...; d_k, d_v of those keys.
__global__ void __launch_bounds__(kThreads) attention_backward_dkv_kernel(AttentionBackward p) {
  extern __shared__ float smem[];
  const int qk = int(p.qk_dim), dv = int(p.v_dim);
  const Smem s = carve(smem, qk, dv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nq = (qk + 31) / 32, nv = (dv + 31) / 32;  // chunks in use (block-uniform)
  const int64_t bh = blockIdx.y, j0 = int64_t(blockIdx.x) * kB;

  load_key_tile(s, p, bh, j0);
  float acc_k[kRowsPerWarp][kChunks], acc_v[kRowsPerWarp][kChunks];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int c = 0; c < kChunks; ++c) acc_k[r][c] = acc_v[r][c] = 0.0f;

  // Causal: only queries i >= j0 see these keys. Tiles are aligned, so the first one is the
  // diagonal tile.
  for (int64_t i0 = j0; i0 < p.seq; i0 += kB) {
    __syncthreads();  // the previous tile's Qs, dOs, Ps, dSs are no longer read
    load_query_tile(s, p, bh, i0);
    __syncthreads();  // (first time: Ks, Vs are written as well)
    scores_tile(s, p, i0, j0, true);
    __syncthreads();
    for (int ii = 0; ii < kB; ++ii) {
      float qv[kChunks], gv[kChunks];
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int d = lane + 32 * c;
        qv[c] = d < qk ? s.Qs[ii * qk + d] : 0.0f;
        gv[c] = d < dv ? s.dOs[ii * dv + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int jj = warp * kRowsPerWarp + r;
        const float pr = s.Ps[ii * kPs + jj], ds = s.dSs[ii * kPs + jj];
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          // d_k = scale dS^T Q: Qs already carries the scale.
          if (c < nq) acc_k[r][c] = fmaf(ds, qv[c], acc_k[r][c]);
          if (c < nv) acc_v[r][c] = fmaf(pr, gv[c], acc_v[r][c]);
        }
      }
    }
  }

  float* dkb = p.d_k + bh * p.seq * qk;
  float* dvb = p.d_v + bh * p.seq * dv;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t j = j0 + warp * kRowsPerWarp + r;
    if (j >= p.seq) continue;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int d = lane + 32 * c;
      if (d < qk) dkb[j * qk + d] = acc_k[r][c];
      if (d < dv) dvb[j * dv + d] = acc_v[r][c];
    }
  }
}

// grid (ceil(seq / kB), bh): block x owns a tile of queries; d_q of those rows. The last query
// tiles see the most keys, so block 0 takes the last tile: the longest blocks start first.
__global__ void __launch_bounds__(kThreads) attention_backward_dq_kernel(AttentionBackward p) {
  extern __shared__ float smem[];
  const int qk = int(p.qk_dim), dv = int(p.v_dim);
  const Smem s = carve(smem, qk, dv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nq = (qk + 31) / 32;
  const int64_t bh = blockIdx.y, i0 = int64_t(gridDim.x - 1 - blockIdx.x) * kB;
  const int64_t last_row = min(i0 + kB, p.seq) - 1;

  load_query_tile(s, p, bh, i0);
  float acc[kRowsPerWarp][kChunks];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int c = 0; c < kChunks; ++c) acc[r][c] = 0.0f;

  for (int64_t j0 = 0; j0 <= last_row; j0 += kB) {
    __syncthreads();  // the previous tile's Ks, Vs, dSs are no longer read (first: Qs written)
    load_key_tile(s, p, bh, j0);
    __syncthreads();
    scores_tile(s, p, i0, j0, false);
    __syncthreads();
    for (int jj = 0; jj < kB; ++jj) {
      float kv[kChunks];
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int d = lane + 32 * c;
        kv[c] = d < qk ? s.Ks[jj * s.ks + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float ds = s.dSs[(warp * kRowsPerWarp + r) * kPs + jj];
#pragma unroll
        for (int c = 0; c < kChunks; ++c)
          if (c < nq) acc[r][c] = fmaf(ds, kv[c], acc[r][c]);
      }
    }
  }

  float* dqb = p.d_q + bh * p.seq * qk;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = i0 + warp * kRowsPerWarp + r;
    if (i >= p.seq) continue;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int d = lane + 32 * c;
      if (d < qk) dqb[i * qk + d] = acc[r][c] * p.scale;  // d_q = scale dS K
    }
  }
}

cudaError_t allow_smem(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

}  // namespace

size_t attention_backward_smem_bytes(int64_t qk_dim, int64_t v_dim) {
  return smem_bytes(qk_dim, v_dim);
}

cudaError_t attention_backward(const AttentionBackward& p, cudaStream_t stream) {
  if (p.bh == 0 || p.seq == 0) return cudaSuccess;
  if (p.qk_dim < 1 || p.v_dim < 1 || p.qk_dim > kAttentionMaxHeadDim ||
      p.v_dim > kAttentionMaxHeadDim || p.bh > 65535)
    return cudaErrorInvalidValue;
  const size_t smem = smem_bytes(p.qk_dim, p.v_dim);
  cudaError_t e = allow_smem(reinterpret_cast<const void*>(attention_backward_dkv_kernel), smem);
  if (e == cudaSuccess)
    e = allow_smem(reinterpret_cast<const void*>(attention_backward_dq_kernel), smem);
  if (e != cudaSuccess) return e;

  const int64_t rows = p.bh * p.seq;
  attention_backward_rows_kernel<<<grid_for(rows, kWarps), kThreads, 0, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  const dim3 grid(unsigned((p.seq + kB - 1) / kB), unsigned(p.bh));
  attention_backward_dkv_kernel<<<grid, kThreads, smem, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  attention_backward_dq_kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
