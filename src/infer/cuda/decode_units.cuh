#pragma once
// The bodies of the inference kernels (infer/cuda/decode_kernels.h), each a __device__ function
// of the block it runs as (Unit) and of what it waits for before it reads an activation (Wait).
// decode_kernels.cu calls each from its own kernel (the hardware's block, after the grid
// before it) and from the decode program's kernel (a unit of a stage, after the stage before),
// so both compute the same values bit for bit. Included by decode_kernels.cu only.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "infer/cuda/decode_kernels.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/warp_select.cuh"

namespace dsv3::infer::gpu {
namespace {

using dsv3::cuda::block_sum;
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

// The start of every kernel here: wait for the grid before (a no-op unless this one was launched
// programmatically), then let the next one start loading its weights.
__device__ __forceinline__ void begin_after_prior_grids() {
  dsv3::cuda::wait_for_prior_grids();
  dsv3::cuda::allow_dependent_grids();
}

// Which block of its grid a kernel body runs as: the hardware's (a launch of its own), or a
// unit of a stage of the decode program (decode_program_kernel), which runs every stage of a
// decode step on one grid.
struct Unit {
  uint3 idx;
  dim3 dim;
};
__device__ __forceinline__ Unit hardware_block() { return {blockIdx, gridDim}; }

// What a body waits for before it reads an activation (it asks for its weights in L2 before):
// the grid before it (a launch of its own, programmatic or not: begin_after_prior_grids), or
// in the decode program the stage before (AfterStage). A wait that returns false ends the body
// right there (PrefetchOnly: the program asks for a later unit's weights early); every thread
// of the block gets the same answer.
struct AfterPriorGrids {
  __device__ __forceinline__ bool operator()() const {
    begin_after_prior_grids();
    return true;
  }
};
struct PrefetchOnly {
  __device__ __forceinline__ bool operator()() const { return false; }
};

// True, in every thread, in the last of `blocks` blocks to arrive at `count` (every thread of
// each block calls it); that block then sees every other block's writes. Release: every
// thread's writes, the barrier, thread 0's fence and count; acquire: the last block's thread 0
// fences again before the barrier its threads pass. The caller's last block resets the count.
__device__ __forceinline__ bool last_block_to_arrive(unsigned* count, unsigned blocks) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(count, 1u) == blocks - 1;
    if (last) __threadfence();
  }
  __syncthreads();
  return last;
}

// ---- gemv: one warp per output element, R rows per block sharing each weight load ----

// The per-row kernels (rmsnorm_rows, write_latents) and the GEMV reduce a row's sum of squares
// over blocks of this many threads: the same partial sums and tree, so a norm fused into a GEMV
// (or the latent write into the query absorption) gives the separate kernel's value bit for bit.
constexpr int kRowThreads = 256;
constexpr int kGemvWarps = kRowThreads / 32;

// 1 / sqrt(mean(x^2) + eps) of x[0, dim), for every thread of the block (red: 32 floats).
__device__ __forceinline__ float row_inv_rms(const float* x, int64_t dim, float eps, float* red) {
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += x[i] * x[i];
  return 1.0f / sqrtf(block_sum(ss, red) / float(dim) + eps);
}

// An input row as a GEMV reads it: x itself, or its RMSNorm x * inv * w (rmsnorm_rows'
// expression, so the values are the normalised row's).
template <bool kNorm>
struct InputRow {
  const float* x;
  const float* w;  // kNorm: the norm's weight
  float inv;       // kNorm: 1 / rms of the row
  __device__ __forceinline__ float at(int64_t k) const {
    if constexpr (kNorm)
      return x[k] * inv * w[k];
    else
      return x[k];
  }
  __device__ __forceinline__ void at8(int64_t k, float (&v)[8]) const {
    const float4 a = *reinterpret_cast<const float4*>(x + k);
    const float4 b = *reinterpret_cast<const float4*>(x + k + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    if constexpr (kNorm) {
      const float4 c = *reinterpret_cast<const float4*>(w + k);
      const float4 d = *reinterpret_cast<const float4*>(w + k + 4);
      const float wv[8] = {c.x, c.y, c.z, c.w, d.x, d.y, d.z, d.w};
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = v[j] * inv * wv[j];
    }
  }
};

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
// row's sum is the same whatever R (and whichever kernel calls this).
template <int R, bool kVec, bool kBf16, bool kNorm>
__device__ __forceinline__ void row_dots(const void* w, int64_t wbase, int64_t in,
                                         const InputRow<kNorm> (&xr)[R], int lane,
                                         float (&acc)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  if constexpr (kVec) {
    for (int64_t k = int64_t(lane) * 8; k < in; k += 32 * 8) {
      float wv[8];
      load8<kBf16>(w, wbase + k, wv);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float xv[8];
        xr[r].at8(k, xv);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r] = fmaf(wv[j], xv[j], acc[r]);
      }
    }
  } else {
    for (int64_t k = lane; k < in; k += 32) {
      const float wv = load_weight<kBf16>(w, wbase + k);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = fmaf(wv, xr[r].at(k), acc[r]);
    }
  }
}

// silu(g) * u: one expression for the fused GEMV and swiglu_rows, so that a decode step and a
// prefill give the same value for the same sums.
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// Row r's weight matrix from a table: its own entry, or with a shared entry, its token's slot.
__device__ __forceinline__ const void* table_weight(const Gemv& p, const void* const* table,
                                                    const void* shared, int64_t r) {
  if (shared == nullptr) return table[p.table_idx[r]];
  const int64_t t = r / (p.picks + 1), j = r - t * (p.picks + 1);
  return j < p.picks ? table[p.table_idx[t * p.picks + j]] : shared;
}

template <int R, bool kVec, bool kBf16, bool kSwiGlu, bool kNorm, typename Wait>
__device__ __forceinline__ void gemv_unit(const Gemv& p, Unit u, Wait wait) {
  __shared__ float red[32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int64_t o = int64_t(u.idx.x) * kGemvWarps + warp;
  // Whole warps past the outputs: they leave at once, or with a norm after each reduction (which
  // needs the whole block).
  const bool active = o < p.out + p.second.out;
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
  // A fixed matrix's row can be on its way before the grid before this one finishes; a table's
  // entry is known only from the routing that grid may be writing.
  if (active && p.table == nullptr) {
    const int64_t esize = kBf16 ? 2 : 4;
    dsv3::cuda::warp_prefetch_l2(static_cast<const char*>(wsel) + wbase * esize, p.in * esize,
                                 lane);
    if constexpr (kSwiGlu)
      dsv3::cuda::warp_prefetch_l2(static_cast<const char*>(p.up) + wbase * esize, p.in * esize,
                                   lane);
  }
  if (!wait()) return;
  if (!kNorm && !active) return;
  // Row blocks beyond the grid's y range (65535) are taken in turn.
  for (int64_t r0 = int64_t(u.idx.y) * R; r0 < p.rows; r0 += int64_t(u.dim.y) * R) {
    const int nr = int(p.rows - r0 < R ? p.rows - r0 : R);  // the same for the whole block
    InputRow<kNorm> xr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      xr[r].x = p.x + ((r0 + (r < nr ? r : 0)) / p.x_row_div) * p.ldx + xoff;
      xr[r].w = p.norm.w;
      xr[r].inv = 1.0f;
    }
    if constexpr (kNorm) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (r >= nr) break;
        xr[r].inv = row_inv_rms(xr[r].x, p.in, p.norm.eps, red);
      }
      if (!active) continue;
    }
    const void* w =
        p.table ? table_weight(p, p.table, p.shared_w, r0) : wsel;  // R == 1 with a table
    float acc[R], up[R];
    row_dots<R, kVec, kBf16, kNorm>(w, wbase, p.in, xr, lane, acc);
    if constexpr (kSwiGlu) {
      const void* wu = p.up_table ? table_weight(p, p.up_table, p.shared_up, r0) : p.up;
      row_dots<R, kVec, kBf16, kNorm>(wu, wbase, p.in, xr, lane, up);
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

// ---- experts_down: one warp per output element of a token, its slots' products together ----

// A warp's products for up to kDownBatch slots at a time, all their weight loads in one loop.
constexpr int kDownBatch = 4;

template <bool kVec, bool kBf16, typename Wait>
__device__ __forceinline__ void experts_down_unit(const ExpertsDown& p, Unit u, Wait wait) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t o = int64_t(u.idx.x) * kGemvWarps + warp;
  const int64_t esize = kBf16 ? 2 : 4;
  if (o < p.dim) {
    // The rows this warp reads can be on their way before the grid before this one (the gate/up
    // GEMV) finishes. The routed experts' ids come from the router two grids back, which has
    // finished by the time this grid can start, but nothing promises that its writes are visible
    // here before the wait: an id read now may be a stale one, which costs only a useless
    // prefetch (it is clamped to the table, never dereferenced past it).
    if (p.shared_w != nullptr)
      dsv3::cuda::warp_prefetch_l2(static_cast<const char*>(p.shared_w) + o * p.width * esize,
                                   p.width * esize, lane);
    if (p.experts > 0 && u.idx.y < p.rows) {
      for (int j = 0; j < p.picks; ++j) {
        const int32_t e =
            min(max(__ldcg(p.chosen + int64_t(u.idx.y) * p.picks + j), 0), p.experts - 1);
        dsv3::cuda::warp_prefetch_l2(static_cast<const char*>(p.table[e]) + o * p.width * esize,
                                     p.width * esize, lane);
      }
    }
  }
  if (!wait()) return;
  if (o >= p.dim) return;  // whole warps
  const bool fused_shared = p.shared_w != nullptr;
  const int slots = p.picks + (fused_shared ? 1 : 0);
  const int64_t wbase = o * p.width;
  for (int64_t t = u.idx.y; t < p.rows; t += u.dim.y) {
    // Slot order: the shared expert (whose output the sum starts from) first, then the picks.
    float v = p.shared_out ? p.shared_out[t * p.dim + o] : 0.0f;
    for (int s0 = fused_shared ? -1 : 0; s0 < p.picks; s0 += kDownBatch) {
      const void* w[kDownBatch];
      InputRow<false> x[kDownBatch];
      const int count = min(kDownBatch, p.picks - s0);
#pragma unroll
      for (int b = 0; b < kDownBatch; ++b) {
        const int j = b < count ? s0 + b : s0;  // past the count: a repeat, never summed
        w[b] = j < 0 ? p.shared_w : p.table[p.chosen[t * p.picks + j]];
        x[b].x = p.g + (t * slots + (j < 0 ? p.picks : j)) * p.width;
      }
      float acc[kDownBatch];
#pragma unroll
      for (int b = 0; b < kDownBatch; ++b) acc[b] = 0.0f;
      // gemv's fmaf chain (row_dots), for several weight rows at once.
      if constexpr (kVec) {
        for (int64_t k = int64_t(lane) * 8; k < p.width; k += 32 * 8) {
#pragma unroll
          for (int b = 0; b < kDownBatch; ++b) {
            if (b >= count) break;
            float wv[8], xv[8];
            load8<kBf16>(w[b], wbase + k, wv);
            x[b].at8(k, xv);
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[b] = fmaf(wv[j], xv[j], acc[b]);
          }
        }
      } else {
        for (int64_t k = lane; k < p.width; k += 32) {
#pragma unroll
          for (int b = 0; b < kDownBatch; ++b) {
            if (b >= count) break;
            acc[b] = fmaf(load_weight<kBf16>(w[b], wbase + k), x[b].at(k), acc[b]);
          }
        }
      }
#pragma unroll
      for (int b = 0; b < kDownBatch; ++b) {
        if (b >= count) break;  // count is the same for the whole warp
        const float y = warp_sum(acc[b]);
        const int j = s0 + b;
        v = j < 0 ? y : fmaf(p.gates[t * p.picks + j], y, v);  // combine_kernel's order
      }
    }
    if (lane == 0) p.residual[t * p.dim + o] += v;
  }
}

struct EmbedArgs {
  const void* table;
  bool bf16;
  const int32_t* ids;
  int64_t dim;
  float* out;
};

template <typename Wait>
__device__ __forceinline__ void embed_unit(const EmbedArgs& a, Unit u, Wait wait) {
  if (!wait()) return;
  const void* table = a.table;
  const bool bf16 = a.bf16;
  const int64_t dim = a.dim;
  const int64_t r = u.idx.x;
  const int32_t* ids = a.ids;
  float* out = a.out;
  const int32_t id = ids[r];
  float* o = out + r * dim;
  const int64_t row = int64_t(id) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    o[i] = id < 0 ? 0.0f : bf16 ? load_weight<true>(table, row + i) : load_weight<false>(table, row + i);
}

// The interleaved rope rotation of the pair (a, b) by (c, s), written to out[0], out[1].
__device__ __forceinline__ void rotate_pair(float a, float b, float c, float s, float* out) {
  const float2 r = dsv3::cuda::rope_rotate_pair(a, b, c, s);  // fused as in every kernel
  out[0] = r.x;
  out[1] = r.y;
}

struct NormArgs {
  const float* x;
  int64_t ldx;
  const float* w;
  int64_t dim;
  float eps;
  float* y;
  int64_t ldy;
};

template <typename Wait>
__device__ __forceinline__ void rmsnorm_unit(const NormArgs& a, Unit u, Wait wait) {
  if (!wait()) return;
  __shared__ float red[32];
  const float* xr = a.x + int64_t(u.idx.x) * a.ldx;
  const float inv = row_inv_rms(xr, a.dim, a.eps, red);
  float* yr = a.y + int64_t(u.idx.x) * a.ldy;
  // Each thread writes only the elements it read: y may alias x.
  for (int64_t i = threadIdx.x; i < a.dim; i += blockDim.x) yr[i] = xr[i] * inv * a.w[i];
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

// Row r's latent: RMSNorm_kv(kv_a[r, :rank]) and rope(kv_a[r, rank:]) at its cache position.
// The whole block of kRowThreads takes part (the norm's reduction).
__device__ __forceinline__ void write_latent_row(const float* kv_a, const float* norm_w, float eps,
                                                 int rank, const RopeTable& rope,
                                                 const CacheRows& cache, int64_t r, float* red) {
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
static_assert(kAbsorbThreads == kRowThreads,
              "the fused latent write reduces as write_latents does");

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
__device__ __forceinline__ void absorb_query_row(const AbsorbQuery& p, Unit u, int64_t r) {
  extern __shared__ float sm[];  // qn [nope] | sums [kAbsorbSlices][kAbsorbCols]
  float* qn = sm;
  float* sums = sm + p.nope;
  const int h = u.idx.x;
  const int dq = p.nope + p.rope.rope;
  const float* qh = p.q + (r * p.heads + h) * dq;
  for (int i = threadIdx.x; i < p.nope; i += blockDim.x) qn[i] = qh[i];
  __syncthreads();
  const int width = p.rank + p.rope.rope;
  float* out = p.qcat + (r * p.heads + h) * width;
  const int slice = threadIdx.x / (kAbsorbCols / 2), pair = threadIdx.x % (kAbsorbCols / 2);
  const int c = int(u.idx.z) * kAbsorbCols + 2 * pair;  // this thread's columns c, c + 1
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
  if (u.idx.z != 0) return;  // the first column block also rotates the rope part
  const int half = p.rope.rope / 2;
  const float* cs = p.rope.cos + int64_t(p.pos[r]) * half;
  const float* sn = p.rope.sin + int64_t(p.pos[r]) * half;
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    rotate_pair(qh[p.nope + 2 * i], qh[p.nope + 2 * i + 1], cs[i], sn[i], out + p.rank + 2 * i);
}

template <bool kBf16, typename Wait>
__device__ __forceinline__ void absorb_query_unit(const AbsorbQuery& p, Unit u, Wait wait) {
  // This block's slice of W_uk(h) (rows of kv_b, kAbsorbCols columns each) can be on its way
  // before the grid before this one finishes.
  {
    const int64_t esize = kBf16 ? 2 : 4;
    const int64_t c0 = int64_t(u.idx.z) * kAbsorbCols;
    const int64_t cols = min(int64_t(kAbsorbCols), int64_t(p.rank) - c0);
    const char* w = static_cast<const char*>(p.kv_b);
    for (int i = threadIdx.x >> 5; i < p.nope; i += blockDim.x >> 5)
      dsv3::cuda::warp_prefetch_l2(
          w + ((int64_t(u.idx.x) * (p.nope + p.v) + i) * p.rank + c0) * esize, cols * esize,
          threadIdx.x & 31);
  }
  if (!wait()) return;
  __shared__ float red[32];
  for (int64_t r = u.idx.y; r < p.rows; r += u.dim.y) {
    // One block per row also stores the row's latent (the attention launch after reads it).
    if (p.kv_a != nullptr && u.idx.x == 0 && u.idx.z == 0)
      write_latent_row(p.kv_a, p.kv_a_norm, p.eps, p.rank, p.rope, p.cache, r, red);
    absorb_query_row<kBf16>(p, u, r);
    __syncthreads();  // the next row overwrites the shared query and sums
  }
}

// One block per (head, row, split), kAttnWarps warps. Warp w of split s takes positions
// s + splits * w, then kAttnWarps * splits further on, with an online softmax; lane l holds
// columns 4l .. 4l + 3, then 128 further on, ... of each cache row it reads (lane_column; one
// column per load when the width is not a multiple of 4; kPerLane registers, all loaded at
// once, the next position's while the current one is summed: the walk is bound by load
// latency) and the same latent columns of its weighted sum, so a row is read once for its
// score and its weighted sum. The warps' states are merged at the end through shared memory:
// into olat (normalised) when there is one split, else into the split's partial state (max, sum of
// weights, unnormalised weighted sum), which the (row, head)'s last block to finish merges
// (merge_splits).
constexpr int kAttnWarps = kRowThreads / 32;  // the whole block: a unit of the decode program

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
// The states are in L2 (written by the other blocks): every load a thread needs for one step is
// issued before the first is used (unrolled over kAttnSplits), so the merge waits for a round
// trip per step, not per split. The arithmetic runs in split order.
constexpr int kMergeColumns = 4;  // columns of the weighted sums a thread merges per step
__device__ __forceinline__ void merge_splits(const float* states, int splits, int rank, float* out) {
  float m[kAttnSplits], l[kAttnSplits];
#pragma unroll
  for (int s = 0; s < kAttnSplits; ++s) {
    const SplitState ps{states + s * (rank + 2)};
    m[s] = s < splits ? ps.m() : -INFINITY;
    l[s] = s < splits ? ps.l() : 0.0f;
  }
  float mx = -INFINITY;
#pragma unroll
  for (int s = 0; s < kAttnSplits; ++s)
    if (l[s] > 0.0f) mx = fmaxf(mx, m[s]);
  float total = 0.0f, wscale[kAttnSplits];
#pragma unroll
  for (int s = 0; s < kAttnSplits; ++s) {
    wscale[s] = l[s] > 0.0f ? expf(m[s] - mx) : 0.0f;  // SoftmaxPart::scale_to
    total = fmaf(l[s], wscale[s], total);
  }
  const float inv = 1.0f / total;
  for (int c0 = threadIdx.x; c0 < rank; c0 += kMergeColumns * blockDim.x) {
    float a[kMergeColumns][kAttnSplits];
#pragma unroll
    for (int j = 0; j < kMergeColumns; ++j) {
      const int c = c0 + j * int(blockDim.x);
#pragma unroll
      for (int s = 0; s < kAttnSplits; ++s)
        a[j][s] = c < rank && s < splits ? SplitState{states + s * (rank + 2)}.acc(c) : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kMergeColumns; ++j) {
      const int c = c0 + j * int(blockDim.x);
      if (c >= rank) break;
      float v = 0.0f;
#pragma unroll
      for (int s = 0; s < kAttnSplits; ++s)
        if (s < splits) v = fmaf(a[j][s], wscale[s], v);
      out[c] = v * inv;
    }
  }
}

// The cache columns lane `lane` holds: register i is column
// kVec * (lane + 32 * (i / kVec)) + i % kVec, groups of kVec consecutive columns kVec * 32 apart.
// kVec 4 reads each group with one load (8 bytes of BF16, 16 of float32) and needs width % 4 == 0
// and 16-byte aligned rows; kVec 1 reads column by column, any width.
template <int kVec>
__device__ __forceinline__ int lane_column(int lane, int i) {
  return kVec * (lane + 32 * (i / kVec)) + i % kVec;
}

// Lane `lane`'s columns of cache row `row` (zeros past the width).
template <bool kBf16, int kVec, int kPerLane>
__device__ __forceinline__ void load_cache_columns(const char* row, int width, int lane,
                                                   float (&v)[kPerLane]) {
  static_assert(kVec == 1 || kVec == 4, "one column or four per load");
  static_assert(kPerLane % kVec == 0, "whole groups");
#pragma unroll
  for (int g = 0; g < kPerLane / kVec; ++g) {
    const int c = kVec * (lane + 32 * g);
    if constexpr (kVec == 1) {
      v[g] = c < width ? load_weight<kBf16>(row, c) : 0.0f;
    } else if (c >= width) {  // width % 4 == 0: a group is all in the row or all past it
      v[4 * g] = v[4 * g + 1] = v[4 * g + 2] = v[4 * g + 3] = 0.0f;
    } else if constexpr (kBf16) {
      const uint2 u = *reinterpret_cast<const uint2*>(row + int64_t(c) * 2);
      v[4 * g] = bf16_to_float(uint16_t(u.x));  // little endian: the lower half comes first
      v[4 * g + 1] = bf16_to_float(uint16_t(u.x >> 16));
      v[4 * g + 2] = bf16_to_float(uint16_t(u.y));
      v[4 * g + 3] = bf16_to_float(uint16_t(u.y >> 16));
    } else {
      const float4 f = *reinterpret_cast<const float4*>(row + int64_t(c) * 4);
      v[4 * g] = f.x, v[4 * g + 1] = f.y, v[4 * g + 2] = f.z, v[4 * g + 3] = f.w;
    }
  }
}

template <bool kBf16, int kVec, int kPerLane>
__device__ __forceinline__ void latent_attention_row(const float* qcat, const CacheRows& cache,
                                                     int heads, int rank, float scale,
                                                     int splits, float* partial,
                                                     unsigned* arrived, float* olat, Unit u,
                                                     int64_t r) {
  extern __shared__ float sm[];  // per warp: m, l, acc [rank]
  const int h = u.idx.x, split = int(u.idx.z);
  const int width = cache.width;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // The query's columns this lane multiplies (the same columns as its cache values), kept in
  // registers for the whole walk.
  float q[kPerLane];
  load_cache_columns<false, kVec>(reinterpret_cast<const char*>(qcat + (r * heads + h) * width),
                                  width, lane, q);
  const int end = cache.pos[r];  // positions 0 .. end, inclusive
  const char* base = cache_layer(cache, r);
  const int64_t row_bytes = int64_t(width) * (kBf16 ? 2 : 4);
  const int stride = kAttnWarps * splits;
  float acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  int j = split + splits * warp;
  float v[kPerLane];
  if (j <= end) load_cache_columns<kBf16, kVec>(base + j * row_bytes, width, lane, v);
  for (; j <= end; j += stride) {
    float next[kPerLane] = {};
    if (j + stride <= end)
      load_cache_columns<kBf16, kVec>(base + (j + stride) * row_bytes, width, lane, next);
    // The score: q . row, each lane's columns in ascending order, then the warp's sum.
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      if (lane_column<kVec>(lane, i) < width) dot = fmaf(q[i], v[i], dot);
    }
    const float score = warp_sum(dot) * scale;
    const float m_new = fmaxf(m, score);
    const float corr = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float pj = expf(score - m_new);
    l = fmaf(l, corr, pj);  // fused explicitly: the same in every kernel that inlines this
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {  // columns past the rank are never stored
      const int c = lane_column<kVec>(lane, i);
      acc[i] = fmaf(pj, c < rank ? v[i] : 0.0f, acc[i] * corr);
    }
    m = m_new;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) v[i] = next[i];
  }
  float* part = sm + warp * (rank + 2);  // m, l, acc[rank]
  if (lane == 0) {
    part[0] = m;
    part[1] = l;
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int c = lane_column<kVec>(lane, i);
    if (c < rank) part[2 + c] = acc[i];
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) mx = fmaxf(mx, sm[w * (rank + 2)]);
  float total = 0.0f, wscale[kAttnWarps];
  for (int w = 0; w < kAttnWarps; ++w) {
    const WarpState pw{sm + w * (rank + 2)};
    wscale[w] = pw.scale_to(mx);  // a warp with no positions adds nothing
    total = fmaf(pw.l(), wscale[w], total);
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
    for (int w = 0; w < kAttnWarps; ++w) v = fmaf(sm[w * (rank + 2) + 2 + c], wscale[w], v);
    out[c] = v * norm;
  }
  if (splits == 1) return;
  // The last of the (row, head)'s blocks to get here merges all states (in split order, so the
  // result does not depend on which block that is) and resets the count for the next launch.
  if (!last_block_to_arrive(&arrived[r * heads + h], unsigned(splits))) return;
  merge_splits(states, splits, rank, olat + (r * heads + h) * rank);
  if (threadIdx.x == 0) arrived[r * heads + h] = 0;
}

struct AttentionArgs {
  const float* qcat;
  CacheRows cache;
  int64_t rows;
  int heads, rank;
  float scale;
  int splits;
  float* partial;
  unsigned* arrived;
  float* olat;
};

template <bool kBf16, int kVec, int kPerLane, typename Wait>
__device__ __forceinline__ void latent_attention_unit(const AttentionArgs& a, Unit u, Wait wait) {
  if (!wait()) return;
  for (int64_t r = u.idx.y; r < a.rows; r += u.dim.y) {
    latent_attention_row<kBf16, kVec, kPerLane>(a.qcat, a.cache, a.heads, a.rank, a.scale,
                                                a.splits, a.partial, a.arrived, a.olat, u, r);
    __syncthreads();  // the next row overwrites the warps' shared states
  }
}

// One warp per token: the scores lane-parallel with the CPU's expressions, the selection by
// warp_select_experts (kernels/cuda/warp_select.cuh), the gates by lane 0 in the CPU's order.
constexpr int kRouteWarps = 4;

__device__ __forceinline__ float route_score(const Route& p, const float* lg, float mx, float sum,
                                             int e) {
  return p.sigmoid ? 1.0f / (1.0f + expf(-lg[e])) : expf(lg[e] - mx) / sum;
}

// Token t's choice, by one warp, from its logits lg [E] (global or shared memory); sel and picks
// are the warp's shared scratch [kMaxRouterExperts].
__device__ __forceinline__ void route_token(const Route& p, const float* lg, int64_t t, float* sel,
                                            int32_t* picks, int lane) {
  using dsv3::cuda::kWarpSelectPerLane;
  const int experts = p.select.experts, k = p.select.k;
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

// ---- router_step: the norm, the router's logits and the choice, one launch ----

// Block (b, t): warp w computes logit 8 b + w of token t (gemv's sum of the normalised row); the
// row's last block to finish (counted in arrived[t]) copies the logits past L1 and routes.
template <bool kVec, bool kBf16, typename Wait>
__device__ __forceinline__ void router_step_unit(const RouterStep& p, Unit u, Wait wait) {
  __shared__ float red[32];
  __shared__ float lg[kMaxRouterExperts];
  __shared__ float sel[kMaxRouterExperts];
  __shared__ int32_t picks[kMaxRouterExperts];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int experts = p.route.select.experts;
  const int64_t o = int64_t(u.idx.x) * kGemvWarps + warp;
  const bool active = o < experts;
  const int64_t esize = kBf16 ? 2 : 4;
  if (active)
    dsv3::cuda::warp_prefetch_l2(static_cast<const char*>(p.w) + o * p.in * esize, p.in * esize,
                                 lane);
  if (!wait()) return;
  for (int64_t t = u.idx.y; t < p.route.rows; t += u.dim.y) {
    InputRow<true> xr[1];
    xr[0].x = p.x + t * p.ldx;
    xr[0].w = p.norm_w;
    xr[0].inv = row_inv_rms(xr[0].x, p.in, p.eps, red);
    if (u.idx.x == 0)
      for (int64_t i = threadIdx.x; i < p.in; i += blockDim.x) p.xn[t * p.in + i] = xr[0].at(i);
    if (active) {
      float acc[1];
      row_dots<1, kVec, kBf16, true>(p.w, o * p.in, p.in, xr, lane, acc);
      const float sum = warp_sum(acc[0]);
      if (lane == 0) p.logits[t * experts + o] = sum;
    }
    if (last_block_to_arrive(&p.arrived[t], u.dim.x)) {  // the same for the whole block
      for (int e = threadIdx.x; e < experts; e += blockDim.x) lg[e] = __ldcg(p.logits + t * experts + e);
      __syncthreads();
      if (warp == 0) route_token(p.route, lg, t, sel, picks, lane);
      if (threadIdx.x == 0) p.arrived[t] = 0;  // for the next launch
    }
    __syncthreads();  // the next token reuses the shared arrays
  }
}

}  // namespace
}  // namespace dsv3::infer::gpu
