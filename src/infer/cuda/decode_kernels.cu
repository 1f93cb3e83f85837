// The inference kernels (infer/cuda/decode_kernels.h). Launch shapes are fixed by the sizes
// alone, never by the data, so a captured decode step replays at every position.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "infer/cuda/decode_kernels.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/warp_select.cuh"

namespace dsv3::infer::gpu {
namespace {

using dsv3::cuda::block_sum;
using dsv3::cuda::grid_for;
using dsv3::cuda::kFullMask;
using dsv3::cuda::warp_max;
using dsv3::cuda::warp_sum;

__device__ __forceinline__ float bf16_to_float(uint16_t v) {
  return __uint_as_float(uint32_t(v) << 16);  // exact
}

__device__ __forceinline__ uint16_t float_to_bf16(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));  // nearest even, NaN stays NaN
}

template <bool kBf16>
__device__ __forceinline__ float load_weight(const void* w, int64_t i) {
  if constexpr (kBf16) return bf16_to_float(static_cast<const uint16_t*>(w)[i]);
  else return static_cast<const float*>(w)[i];
}

// ---- gemv: one warp per output element, R rows per block sharing each weight load ----

constexpr int kGemvWarps = 8;

// Eight consecutive weights from 16-byte (bf16) or two 16-byte (f32) loads.
template <bool kBf16>
__device__ __forceinline__ void load8(const void* w, int64_t i, float (&out)[8]) {
  if constexpr (kBf16) {
    const uint4 v = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w) + i);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // little endian: the lower half is the first element
      out[2 * j] = bf16_to_float(uint16_t(words[j]));
      out[2 * j + 1] = bf16_to_float(uint16_t(words[j] >> 16));
    }
  } else {
    const float4 a = *reinterpret_cast<const float4*>(static_cast<const float*>(w) + i);
    const float4 b = *reinterpret_cast<const float4*>(static_cast<const float*>(w) + i + 4);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
  }
}

// The warp's sums of one weight row against R input rows: lane-strided over the row, eight
// weights per step on the vector path. The order of the fmaf chain depends only on `in`, so a
// row's sum is the same whatever R.
template <int R, bool kVec, bool kBf16>
__device__ __forceinline__ void row_dots(const void* w, int64_t wbase, int64_t in,
                                         const float* const (&xr)[R], int lane, float (&acc)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  if constexpr (kVec) {
    for (int64_t k = int64_t(lane) * 8; k < in; k += 32 * 8) {
      float wv[8];
      load8<kBf16>(w, wbase + k, wv);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float4 a = *reinterpret_cast<const float4*>(xr[r] + k);
        const float4 b = *reinterpret_cast<const float4*>(xr[r] + k + 4);
        acc[r] = fmaf(wv[0], a.x, acc[r]);
        acc[r] = fmaf(wv[1], a.y, acc[r]);
        acc[r] = fmaf(wv[2], a.z, acc[r]);
        acc[r] = fmaf(wv[3], a.w, acc[r]);
        acc[r] = fmaf(wv[4], b.x, acc[r]);
        acc[r] = fmaf(wv[5], b.y, acc[r]);
        acc[r] = fmaf(wv[6], b.z, acc[r]);
        acc[r] = fmaf(wv[7], b.w, acc[r]);
      }
    }
  } else {
    for (int64_t k = lane; k < in; k += 32) {
      const float wv = load_weight<kBf16>(w, wbase + k);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = fmaf(wv, xr[r][k], acc[r]);
    }
  }
}

// silu(g) * u: one expression for the fused GEMV and swiglu_rows, so that a decode step and a
// prefill give the same value for the same sums.
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

template <int R, bool kVec, bool kBf16, bool kSwiGlu>
__global__ void gemv_kernel(Gemv p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int64_t o = int64_t(blockIdx.x) * kGemvWarps + warp;
  if (o >= p.out + p.second.out) return;  // whole warps: no block-wide synchronisation below
  const void* wsel = p.w;
  float* ysel = p.y;
  int64_t ldy = p.ldy;
  if (o >= p.out) {  // the second matrix's rows
    o -= p.out;
    wsel = p.second.w;
    ysel = p.second.y;
    ldy = p.second.ldy;
  }
  int64_t wrow = o, xoff = 0;
  if (p.group > 0) {
    const int64_t g = o / p.group;
    wrow = g * p.w_group_stride + p.w_group_offset + (o - g * p.group);
    xoff = g * p.x_group_stride;
  }
  const int64_t wbase = wrow * p.in;
  // Row blocks beyond the grid's y range (65535) are taken in turn.
  for (int64_t r0 = int64_t(blockIdx.y) * R; r0 < p.rows; r0 += int64_t(gridDim.y) * R) {
    const void* w = p.table ? p.table[p.table_idx[r0]] : wsel;  // R == 1 with a table
    const int nr = int(p.rows - r0 < R ? p.rows - r0 : R);
    const float* xr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) xr[r] = p.x + ((r0 + (r < nr ? r : 0)) / p.x_row_div) * p.ldx + xoff;
    float acc[R], up[R];
    row_dots<R, kVec, kBf16>(w, wbase, p.in, xr, lane, acc);
    if constexpr (kSwiGlu) {
      const void* wu = p.up_table ? p.up_table[p.table_idx[r0]] : p.up;
      row_dots<R, kVec, kBf16>(wu, wbase, p.in, xr, lane, up);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r >= nr) break;  // nr is the same for the whole warp
      float sum = warp_sum(acc[r]);
      if constexpr (kSwiGlu) sum = silu_times(sum, warp_sum(up[r]));
      if (lane == 0) {
        float* y = ysel + (r0 + r) * ldy + o;
        *y = p.accumulate ? *y + sum : sum;
      }
    }
  }
}

// Blocks along y (at most 65535; kernels loop over the rest).
unsigned y_blocks(int64_t n) { return unsigned(n < 1 ? 1 : n > 65535 ? 65535 : n); }

template <int R, bool kSwiGlu>
cudaError_t launch_gemv(const Gemv& p, bool vec, cudaStream_t s) {
  const int64_t outputs = p.out + p.second.out;
  const dim3 grid(unsigned((outputs + kGemvWarps - 1) / kGemvWarps), y_blocks((p.rows + R - 1) / R));
  const dim3 block(kGemvWarps * 32);
  if (vec && p.w_bf16) gemv_kernel<R, true, true, kSwiGlu><<<grid, block, 0, s>>>(p);
  else if (vec) gemv_kernel<R, true, false, kSwiGlu><<<grid, block, 0, s>>>(p);
  else if (p.w_bf16) gemv_kernel<R, false, true, kSwiGlu><<<grid, block, 0, s>>>(p);
  else gemv_kernel<R, false, false, kSwiGlu><<<grid, block, 0, s>>>(p);
  return cudaGetLastError();
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// ---- elementwise and per-row kernels ----

__global__ void embed_kernel(const void* table, bool bf16, const int32_t* ids, int64_t dim,
                             float* out) {
  const int64_t r = blockIdx.x;
  const int32_t id = ids[r];
  float* o = out + r * dim;
  const int64_t row = int64_t(id) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    o[i] = id < 0 ? 0.0f : bf16 ? load_weight<true>(table, row + i) : load_weight<false>(table, row + i);
}

// 1 / sqrt(mean(x^2) + eps) of x[0, dim), for every thread of the block (red: 32 floats).
__device__ __forceinline__ float row_inv_rms(const float* x, int64_t dim, float eps, float* red) {
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += x[i] * x[i];
  return 1.0f / sqrtf(block_sum(ss, red) / float(dim) + eps);
}

// The interleaved rope rotation of the pair (a, b) by (c, s), written to out[0], out[1].
__device__ __forceinline__ void rotate_pair(float a, float b, float c, float s, float* out) {
  out[0] = a * c - b * s;
  out[1] = a * s + b * c;
}

__global__ void rmsnorm_rows_kernel(const float* x, int64_t ldx, const float* w, int64_t dim,
                                    float eps, float* y, int64_t ldy) {
  __shared__ float red[32];
  const float* xr = x + int64_t(blockIdx.x) * ldx;
  const float inv = row_inv_rms(xr, dim, eps, red);
  float* yr = y + int64_t(blockIdx.x) * ldy;
  // Each thread writes only the elements it read: y may alias x.
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

__global__ void swiglu_kernel(float* g, const float* u, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    g[i] = silu_times(g[i], u[i]);
}

// Row r's layer of its cache: [capacity, width] values of 2 (bf16) or 4 bytes.
__device__ __forceinline__ char* cache_layer(const CacheRows& c, int64_t r) {
  return static_cast<char*>(c.base[r]) +
         int64_t(c.layer) * c.capacity[r] * c.width * (c.bf16 ? 2 : 4);
}

// Value i of a cache row: stored rounded to nearest even (bf16), read back exactly.
__device__ __forceinline__ void store(char* row, bool bf16, int i, float v) {
  if (bf16) reinterpret_cast<uint16_t*>(row)[i] = float_to_bf16(v);
  else reinterpret_cast<float*>(row)[i] = v;
}

__global__ void write_latents_kernel(const float* kv_a, const float* norm_w, float eps, int rank,
                                     RopeTable rope, CacheRows cache) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const float* src = kv_a + r * (rank + rope.rope);
  const float inv = row_inv_rms(src, rank, eps, red);
  char* dst = cache_layer(cache, r) + int64_t(cache.pos[r]) * cache.width * (cache.bf16 ? 2 : 4);
  for (int i = threadIdx.x; i < rank; i += blockDim.x)
    store(dst, cache.bf16, i, src[i] * inv * norm_w[i]);
  const int half = rope.rope / 2;
  const float* c = rope.cos + int64_t(cache.pos[r]) * half;
  const float* sn = rope.sin + int64_t(cache.pos[r]) * half;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float pair[2];
    rotate_pair(src[rank + 2 * i], src[rank + 2 * i + 1], c[i], sn[i], pair);
    store(dst, cache.bf16, rank + 2 * i, pair[0]);
    store(dst, cache.bf16, rank + 2 * i + 1, pair[1]);
  }
}

// One block per (head, row, kAbsorbCols latent columns) of 256 threads: kAbsorbSlices slices
// of the no-rope dims x kAbsorbCols / 2 column pairs. The product reads all of W_uk (2 MiB per
// layer at V3's head sizes) and little else, so it is latency-bound: each thread reads two
// adjacent columns (one 4-byte bf16 or 8-byte float32 load) for its slice, its loads issued in
// batches of kAbsorbBatch, and the slices' sums are added in slice order, so a result depends
// on neither the launch nor the rows beside it.
constexpr int kAbsorbSlices = 4, kAbsorbCols = 128, kAbsorbBatch = 8;
constexpr int kAbsorbThreads = kAbsorbSlices * kAbsorbCols / 2;

// Weights i and i + 1 (i even, so the load is aligned: weights start 256-byte aligned).
template <bool kBf16>
__device__ __forceinline__ float2 load_weight_pair(const void* w, int64_t i) {
  if constexpr (kBf16) {
    const uint32_t v = *reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(w) + i);
    return {bf16_to_float(uint16_t(v)), bf16_to_float(uint16_t(v >> 16))};
  } else {
    return *reinterpret_cast<const float2*>(static_cast<const float*>(w) + i);
  }
}

template <bool kBf16>
__device__ __forceinline__ void absorb_query_row(const AbsorbQuery& p, int64_t r) {
  extern __shared__ float sm[];  // qn [nope] | sums [kAbsorbSlices][kAbsorbCols]
  float* qn = sm;
  float* sums = sm + p.nope;
  const int h = blockIdx.x;
  const int dq = p.nope + p.rope.rope;
  const float* qh = p.q + (r * p.heads + h) * dq;
  for (int i = threadIdx.x; i < p.nope; i += blockDim.x) qn[i] = qh[i];
  __syncthreads();
  const int width = p.rank + p.rope.rope;
  float* out = p.qcat + (r * p.heads + h) * width;
  const int slice = threadIdx.x / (kAbsorbCols / 2), pair = threadIdx.x % (kAbsorbCols / 2);
  const int c = int(blockIdx.z) * kAbsorbCols + 2 * pair;  // this thread's columns c, c + 1
  const int per_slice = (p.nope + kAbsorbSlices - 1) / kAbsorbSlices;
  const int i0 = slice * per_slice, i1 = min(p.nope, i0 + per_slice);
  const int64_t w0 = int64_t(h) * (p.nope + p.v) * p.rank + c;  // W_uk(h)[0, c]
  float a0 = 0.0f, a1 = 0.0f;
  if (c + 1 < p.rank && p.rank % 2 == 0) {
    int i = i0;
    for (; i + kAbsorbBatch <= i1; i += kAbsorbBatch) {
      float2 w[kAbsorbBatch];
#pragma unroll
      for (int u = 0; u < kAbsorbBatch; ++u) w[u] = load_weight_pair<kBf16>(p.kv_b, w0 + int64_t(i + u) * p.rank);
#pragma unroll
      for (int u = 0; u < kAbsorbBatch; ++u) {
        a0 = fmaf(qn[i + u], w[u].x, a0);
        a1 = fmaf(qn[i + u], w[u].y, a1);
      }
    }
    for (; i < i1; ++i) {
      const float2 w = load_weight_pair<kBf16>(p.kv_b, w0 + int64_t(i) * p.rank);
      a0 = fmaf(qn[i], w.x, a0);
      a1 = fmaf(qn[i], w.y, a1);
    }
  } else {  // an odd rank, or the last column of one: element loads
    for (int i = i0; i < i1; ++i) {
      if (c < p.rank) a0 = fmaf(qn[i], load_weight<kBf16>(p.kv_b, w0 + int64_t(i) * p.rank), a0);
      if (c + 1 < p.rank) a1 = fmaf(qn[i], load_weight<kBf16>(p.kv_b, w0 + int64_t(i) * p.rank + 1), a1);
    }
  }
  sums[slice * kAbsorbCols + 2 * pair] = a0;
  sums[slice * kAbsorbCols + 2 * pair + 1] = a1;
  __syncthreads();
  if (slice == 0) {
    for (int j = 0; j < 2; ++j) {
      if (c + j >= p.rank) break;
      float total = 0.0f;
      for (int sl = 0; sl < kAbsorbSlices; ++sl) total += sums[sl * kAbsorbCols + 2 * pair + j];
      out[c + j] = total;
    }
  }
  if (blockIdx.z != 0) return;  // the first column block also rotates the rope part
  const int half = p.rope.rope / 2;
  const float* cs = p.rope.cos + int64_t(p.pos[r]) * half;
  const float* sn = p.rope.sin + int64_t(p.pos[r]) * half;
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    rotate_pair(qh[p.nope + 2 * i], qh[p.nope + 2 * i + 1], cs[i], sn[i], out + p.rank + 2 * i);
}

template <bool kBf16>
__global__ void absorb_query_kernel(AbsorbQuery p) {
  for (int64_t r = blockIdx.y; r < p.rows; r += gridDim.y) {
    absorb_query_row<kBf16>(p, r);
    __syncthreads();  // the next row overwrites the shared query and sums
  }
}

// One block per (head, row, split), kAttnWarps warps. Warp w of split s takes positions
// s + splits * w, then kAttnWarps * splits further on, with an online softmax; lane l holds
// latent columns l, l + 32, ... of its weighted sum. The warps' states are merged at the end
// through shared memory: into olat (normalised) when there is one split, else into the split's
// partial state (max, sum of weights, unnormalised weighted sum), which the (row, head)'s last
// block to finish merges (merge_splits).
constexpr int kAttnWarps = 4;
constexpr int kMaxPerLane = kMaxDecodeRank / 32;

// The softmax state of one part of the positions: its running max m, the sum l of
// exp(score - m), and acc, the exp(score - m)-weighted sum of latents (rank values).
// kGlobal: a split's state in global memory, written by another block, read past L1 with
// __ldcg (a global-memory load: the warps' states in shared memory take plain loads).
template <bool kGlobal>
struct SoftmaxPart {
  const float* p;  // [m, l, acc[rank]]
  __device__ float load(int i) const {
    if constexpr (kGlobal) return __ldcg(p + i);
    else return p[i];
  }
  __device__ float m() const { return load(0); }
  __device__ float l() const { return load(1); }
  __device__ float acc(int c) const { return load(2 + c); }
  // exp(m - mx) for a part with positions; 0 for an empty one (whose m is -inf).
  __device__ float scale_to(float mx) const { return l() > 0.0f ? expf(m() - mx) : 0.0f; }
};
using SplitState = SoftmaxPart<true>;
using WarpState = SoftmaxPart<false>;

// olat[r, h] = the splits' states merged and normalised, by the block that finished last.
__device__ __forceinline__ void merge_splits(const float* states, int splits, int rank, float* out) {
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) {
    const SplitState ps{states + s * (rank + 2)};
    if (ps.l() > 0.0f) mx = fmaxf(mx, ps.m());
  }
  float total = 0.0f, wscale[kAttnSplits];
  for (int s = 0; s < splits; ++s) {
    const SplitState ps{states + s * (rank + 2)};
    wscale[s] = ps.scale_to(mx);
    total += ps.l() * wscale[s];
  }
  const float inv = 1.0f / total;
  for (int c = threadIdx.x; c < rank; c += blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v = fmaf(SplitState{states + s * (rank + 2)}.acc(c), wscale[s], v);
    out[c] = v * inv;
  }
}

template <bool kBf16>
__device__ __forceinline__ void latent_attention_row(const float* qcat, const CacheRows& cache,
                                                     int heads, int rank, float scale,
                                                     int splits, float* partial,
                                                     unsigned* arrived, float* olat, int64_t r) {
  extern __shared__ float sm[];  // q [width] | per warp: m, l, acc [rank]
  const int h = blockIdx.x, split = int(blockIdx.z);
  const int width = cache.width;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* q = sm;
  const float* qsrc = qcat + (r * heads + h) * width;
  for (int i = threadIdx.x; i < width; i += blockDim.x) q[i] = qsrc[i];
  __syncthreads();
  const int end = cache.pos[r];  // positions 0 .. end, inclusive
  const char* base = cache_layer(cache, r);
  const int per_lane = (rank + 31) / 32;
  float acc[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int j = split + splits * warp; j <= end; j += kAttnWarps * splits) {
    const char* row = base + int64_t(j) * width * (kBf16 ? 2 : 4);
    float dot = 0.0f;
    for (int i = lane; i < width; i += 32) dot = fmaf(q[i], load_weight<kBf16>(row, i), dot);
    const float score = warp_sum(dot) * scale;
    const float m_new = fmaxf(m, score);
    const float corr = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float pj = expf(score - m_new);
    l = l * corr + pj;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      if (i >= per_lane) break;
      const int c = lane + 32 * i;
      const float v = c < rank ? load_weight<kBf16>(row, c) : 0.0f;
      acc[i] = fmaf(pj, v, acc[i] * corr);
    }
    m = m_new;
  }
  float* part = sm + width + warp * (rank + 2);  // m, l, acc[rank]
  if (lane == 0) {
    part[0] = m;
    part[1] = l;
  }
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    if (i >= per_lane) break;
    const int c = lane + 32 * i;
    if (c < rank) part[2 + c] = acc[i];
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) mx = fmaxf(mx, sm[width + w * (rank + 2)]);
  float total = 0.0f, wscale[kAttnWarps];
  for (int w = 0; w < kAttnWarps; ++w) {
    const WarpState pw{sm + width + w * (rank + 2)};
    wscale[w] = pw.scale_to(mx);  // a warp with no positions adds nothing
    total += pw.l() * wscale[w];
  }
  float* out;
  float norm = 1.0f;
  float* states = nullptr;  // the (row, head)'s split states [splits, rank + 2]
  if (splits == 1) {  // the whole softmax: normalise
    out = olat + (r * heads + h) * rank;
    norm = 1.0f / total;
  } else {  // this split's state, unnormalised (a split with no positions: m -inf, l 0)
    states = partial + (r * heads + h) * splits * (rank + 2);
    float* state = states + split * (rank + 2);
    if (threadIdx.x == 0) {
      state[0] = mx;
      state[1] = total;
    }
    out = state + 2;
  }
  for (int c = threadIdx.x; c < rank; c += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) v = fmaf(sm[width + w * (rank + 2) + 2 + c], wscale[w], v);
    out[c] = v * norm;
  }
  if (splits == 1) return;
  // The last of the (row, head)'s blocks to get here merges all states (in split order, so the
  // result does not depend on which block that is) and resets the count for the next launch.
  // Release: every thread's writes, then the barrier, then thread 0's fence and count. Acquire:
  // the last block's thread 0 fences again before its threads read the other states.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(&arrived[r * heads + h], 1u) == unsigned(splits - 1);
    if (last) __threadfence();
  }
  __syncthreads();
  if (!last) return;
  merge_splits(states, splits, rank, olat + (r * heads + h) * rank);
  if (threadIdx.x == 0) arrived[r * heads + h] = 0;
}

template <bool kBf16>
__global__ void latent_attention_kernel(const float* qcat, CacheRows cache, int64_t rows,
                                        int heads, int rank, float scale, int splits,
                                        float* partial, unsigned* arrived, float* olat) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    latent_attention_row<kBf16>(qcat, cache, heads, rank, scale, splits, partial, arrived, olat, r);
    __syncthreads();  // the next row overwrites the shared query and partial sums
  }
}

// One warp per token: the scores lane-parallel with the CPU's expressions, the selection by
// warp_select_experts (kernels/cuda/warp_select.cuh), the gates by lane 0 in the CPU's order.
constexpr int kRouteWarps = 4;

__device__ __forceinline__ float route_score(const Route& p, const float* lg, float mx, float sum,
                                             int e) {
  return p.sigmoid ? 1.0f / (1.0f + expf(-lg[e])) : expf(lg[e] - mx) / sum;
}

__global__ void route_kernel(Route p) {
  using dsv3::cuda::kWarpSelectPerLane;
  __shared__ float sel_shared[kRouteWarps][kMaxRouterExperts];  // selection scores, or exps
  __shared__ int32_t picks_shared[kRouteWarps][kMaxRouterExperts];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (t >= p.rows) return;  // whole warps
  const int experts = p.select.experts, k = p.select.k;
  const float* lg = p.logits + t * experts;
  float* sel = sel_shared[warp];
  int32_t* picks = picks_shared[warp];
  float mx = 0.0f, sum = 1.0f;
  if (!p.sigmoid) dsv3::cuda::warp_softmax_terms(lg, experts, lane, sel, mx, sum);
  float sv[kWarpSelectPerLane];
#pragma unroll
  for (int j = 0; j < kWarpSelectPerLane; ++j) {
    const int e = lane + 32 * j;
    sv[j] = e < experts ? route_score(p, lg, mx, sum, e) + p.bias[e] : 0.0f;
    if (e < experts) sel[e] = sv[j];
  }
  __syncwarp();
  dsv3::cuda::warp_select_experts(p.select, sel, sv, lane, picks);
  if (lane != 0) return;
  int32_t* chosen = p.chosen + t * k;
  float* gates = p.gates + t * k;
  float total = 0.0f;
  for (int j = 0; j < k; ++j) {
    chosen[j] = picks[j];
    total += (gates[j] = route_score(p, lg, mx, sum, picks[j]));
  }
  float scale = p.scaling;
  if (p.norm_topk) scale /= (total + 1e-20f);
  for (int j = 0; j < k; ++j) gates[j] *= scale;
}

// One thread per element of [rows, dim], spread over the whole GPU (a decode step has one row).
__global__ void combine_kernel(const float* __restrict__ y, const int32_t* __restrict__ y_rows,
                               const float* __restrict__ gates, int k, int64_t rows, int64_t dim,
                               const float* __restrict__ shared, float* __restrict__ residual) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < rows * dim;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = idx / dim, i = idx - t * dim;
    float v = shared ? shared[idx] : 0.0f;
    for (int j = 0; j < k; ++j) {
      const int64_t row = y_rows ? y_rows[t * k + j] : t * k + j;
      v += gates[t * k + j] * y[row * dim + i];
    }
    residual[idx] += v;
  }
}

__global__ void gather_kernel(const float* src, const int32_t* idx, int64_t dim, float* dst) {
  const int64_t i = blockIdx.x;
  const float* s = src + int64_t(idx[i]) * dim;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) dst[i * dim + c] = s[c];
}

}  // namespace

cudaError_t gemv(const Gemv& p, cudaStream_t s) {
  if (p.rows == 0 || p.out + p.second.out == 0) return cudaSuccess;
  const bool has_table = p.table != nullptr;
  if (p.second.out > 0 && (has_table || p.group > 0 || p.swiglu)) return cudaErrorInvalidValue;
  if (p.swiglu && (p.group > 0 || has_table != (p.up_table != nullptr) ||
                   (!has_table && p.up == nullptr)))
    return cudaErrorInvalidValue;
  // The vector path reads 8 weights and 8 inputs per lane step: every weight row and input row
  // start must be 16-byte aligned (in % 8 == 0 makes every weight row start so).
  bool vec = p.in % 8 == 0 && p.ldx % 4 == 0 && p.x_group_stride % 4 == 0 && aligned16(p.x);
  // Table entries are weights at 256-byte offsets of one allocation (aligned); plain matrices
  // are checked.
  if (!has_table) vec = vec && aligned16(p.w) && (!p.swiglu || aligned16(p.up)) &&
                        (p.second.out == 0 || aligned16(p.second.w));
  // A row's sum is the same fmaf chain whatever R, so the choice never changes a result.
  const bool one_row = has_table || p.rows < 4;
  if (p.swiglu) return one_row ? launch_gemv<1, true>(p, vec, s) : launch_gemv<4, true>(p, vec, s);
  return one_row ? launch_gemv<1, false>(p, vec, s) : launch_gemv<4, false>(p, vec, s);
}

cudaError_t embed_rows(const void* table, bool bf16, const int32_t* ids, int64_t rows, int64_t dim,
                       float* out, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  embed_kernel<<<unsigned(rows), 256, 0, s>>>(table, bf16, ids, dim, out);
  return cudaGetLastError();
}

cudaError_t rmsnorm_rows(const float* x, int64_t ldx, const float* w, int64_t rows, int64_t dim,
                         float eps, float* y, int64_t ldy, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  rmsnorm_rows_kernel<<<unsigned(rows), 256, 0, s>>>(x, ldx, w, dim, eps, y, ldy);
  return cudaGetLastError();
}

cudaError_t swiglu_rows(float* g, const float* u, int64_t n, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  swiglu_kernel<<<grid_for(n, 256), 256, 0, s>>>(g, u, n);
  return cudaGetLastError();
}

cudaError_t write_latents(const float* kv_a, const float* norm_w, float eps, int64_t rows,
                          int rank, const RopeTable& rope, const CacheRows& cache, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  write_latents_kernel<<<unsigned(rows), 256, 0, s>>>(kv_a, norm_w, eps, rank, rope, cache);
  return cudaGetLastError();
}

cudaError_t absorb_query(const AbsorbQuery& p, cudaStream_t s) {
  if (p.rows == 0) return cudaSuccess;
  const dim3 grid{unsigned(p.heads), y_blocks(p.rows), unsigned((p.rank + kAbsorbCols - 1) / kAbsorbCols)};
  const size_t smem = (size_t(p.nope) + kAbsorbSlices * kAbsorbCols) * 4;
  if (p.kv_b_bf16) absorb_query_kernel<true><<<grid, kAbsorbThreads, smem, s>>>(p);
  else absorb_query_kernel<false><<<grid, kAbsorbThreads, smem, s>>>(p);
  return cudaGetLastError();
}

cudaError_t latent_attention(const float* qcat, const CacheRows& cache, int64_t rows, int heads,
                             int rank, float scale, int splits, float* partial, unsigned* arrived,
                             float* olat, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  if (rank > kMaxDecodeRank || splits < 1 || splits > kAttnSplits ||
      (splits > 1 && rows > kAttnSplitRows))  // the split states hold kAttnSplitRows rows
    return cudaErrorInvalidValue;
  const dim3 grid{unsigned(heads), y_blocks(rows), unsigned(splits)};
  const size_t smem = (size_t(cache.width) + size_t(kAttnWarps) * (size_t(rank) + 2)) * 4;
  if (cache.bf16)
    latent_attention_kernel<true><<<grid, kAttnWarps * 32, smem, s>>>(qcat, cache, rows, heads, rank, scale, splits, partial, arrived, olat);
  else
    latent_attention_kernel<false><<<grid, kAttnWarps * 32, smem, s>>>(qcat, cache, rows, heads, rank, scale, splits, partial, arrived, olat);
  return cudaGetLastError();
}

cudaError_t route(const Route& p, cudaStream_t s) {
  if (p.rows == 0) return cudaSuccess;
  if (p.select.experts > kMaxRouterExperts || p.select.groups > 64 || p.select.groups < 1 ||
      p.select.k > p.select.experts)
    return cudaErrorInvalidValue;
  route_kernel<<<unsigned((p.rows + kRouteWarps - 1) / kRouteWarps), kRouteWarps * 32, 0, s>>>(p);
  return cudaGetLastError();
}

cudaError_t combine_experts(const float* y, const int32_t* y_rows, const float* gates,
                            int64_t rows, int k, int64_t dim, const float* shared,
                            float* residual, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  combine_kernel<<<grid_for(rows * dim, 128), 128, 0, s>>>(y, y_rows, gates, k, rows, dim, shared,
                                                          residual);
  return cudaGetLastError();
}

cudaError_t gather_rows(const float* src, const int32_t* idx, int64_t n, int64_t dim, float* dst,
                        cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  gather_kernel<<<unsigned(n), 256, 0, s>>>(src, idx, dim, dst);
  return cudaGetLastError();
}

}  // namespace dsv3::infer::gpu
