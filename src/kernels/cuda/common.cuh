#pragma once
// Small device helpers shared by the kernels: warp and block reductions, attention score dot
// products, grid sizing.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/params.h"

namespace dsv3::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Element i of an output that is float32 (f) or, when bf16 is given, BF16 rounded to nearest
// even: what the f32_to_bf16 conversion would make of the float32 value, bit for bit. The
// outputs that only BF16 GEMMs read are written this way in mixed precision.
__device__ __forceinline__ void store_f32_or_bf16(float* f, uint16_t* bf16, int64_t i, float v) {
  if (bf16)
    bf16[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  else
    f[i] = v;
}
// Element i of an input that is float32 (f) or, when bf16 is given, BF16: widened exactly, so
// an op reading a BF16 buffer computes what it computes from the float32 values it rounds.
__device__ __forceinline__ float load_f32_or_bf16(const float* f, const uint16_t* bf16, int64_t i) {
  return bf16 ? __uint_as_float(uint32_t(bf16[i]) << 16) : f[i];
}
// Four consecutive values at p: one 16-byte load of float32 (16-byte aligned), or one 8-byte
// load of BF16 (8-byte aligned) when bf16 is given.
__device__ __forceinline__ float4 load4_f32_or_bf16(const float* f, const uint16_t* bf16,
                                                    int64_t i) {
  if (bf16) {
    const uint2 w = *reinterpret_cast<const uint2*>(bf16 + i);
    return make_float4(__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u),
                       __uint_as_float(w.y << 16), __uint_as_float(w.y & 0xffff0000u));
  }
  return *reinterpret_cast<const float4*>(f + i);
}
// Records an index out of range (params.h, IndexError): the first report wins the record.
__device__ __forceinline__ void report_index_error(IndexError* e, int32_t code, int64_t row,
                                                   int64_t value, int64_t limit) {
  if (atomicCAS(&e->code, 0, code) == 0) {
    e->row = row;
    e->value = value;
    e->limit = limit;
  }
}

// RoPE's rotation of one interleaved pair (a, b) by the angle with cosine c and sine s (the
// inverse: -s). Shared by every kernel that rotates, so that a rotation fused into another
// kernel leaves exactly the values of rope.cu's. The fused multiply-adds are spelled out: left
// to the compiler, a * c - b * s may be contracted one way in one kernel and another way in
// the next.
__device__ __forceinline__ float2 rope_rotate_pair(float a, float b, float c, float s) {
  return make_float2(fmaf(a, c, -(b * s)), fmaf(a, s, b * c));
}

// Two values rounded to BF16 as one 32-bit word, lo in the low half (memory order).
__device__ __forceinline__ uint32_t pack2_bf16(float lo, float hi) {
  return uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16;
}

// Programmatic dependent launch (sm_90 and later; no-ops elsewhere, and when the grid was not
// launched with the programmatic stream serialization attribute). A grid so launched may start
// while the grid before it on the stream still runs: it must call wait_for_prior_grids before
// it reads anything that grid writes or writes anything that grid reads (then the earlier grid
// has finished and its writes are visible). Reading weights, which no grid writes, may come
// first. allow_dependent_grids lets the next grid on the stream start once every block of this
// one has called it (or exited).
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_dependent_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// *p, read with acquire semantics at GPU scope: a spin-wait on a count that other blocks raise
// (after a fence) before this block reads what they wrote. The emulation runs one thread at a
// time, where a volatile read is enough.
__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
#if defined(__CUDA_ARCH__)
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
#else
  return *static_cast<const volatile unsigned*>(p);
#endif
}

// Asks for the 128-byte lines of [p, p + bytes) in L2, spread over the warp's lanes.
__device__ __forceinline__ void warp_prefetch_l2(const void* p, int64_t bytes, int lane) {
#if defined(__CUDA_ARCH__)
  const char* c = static_cast<const char*>(p);
  for (int64_t off = int64_t(lane) * 128; off < bytes; off += 32 * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
#else
  (void)p, (void)bytes, (void)lane;
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Sum over the block; every thread gets the result. blockDim.x must be a multiple of 32 (at
// most 1024). `shared` holds 32 floats. The order of additions is fixed by the launch shape,
// so results are reproducible run to run.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : 0.0f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(v);
}

// Attention scores: out[r] = sum_{d < n} a[r * a_stride + d] * b[d] for R rows of `a` against
// one vector `b` (read once per d for all rows). Four interleaved partial sums (d mod 4), each an
// fmaf chain in order, combined as (s0 + s1) + (s2 + s3): four chains grow the rounding error
// about half as fast as one (the backward's P = exp(s - lse) turns an absolute error of s into
// a relative one of P) and give the FMA pipe independent work. The forward and backward
// attention kernels both form their scores here, so they round identically, row for row.
template <int R>
__device__ __forceinline__ void score_dots(const float* a, int a_stride, const float* b, int n,
                                           float (&out)[R]) {
  float acc[R][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int u = 0; u < 4; ++u) acc[r][u] = 0.0f;
  int d = 0;
  for (; d + 4 <= n; d += 4) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const float bv = b[d + u];
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][u] = fmaf(a[r * a_stride + d + u], bv, acc[r][u]);
    }
  }
#pragma unroll
  for (int u = 0; u < 3; ++u) {  // the last n % 4 dims (constant indices: acc stays in registers)
    if (d + u < n) {
      const float bv = b[d + u];
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][u] = fmaf(a[r * a_stride + d + u], bv, acc[r][u]);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) out[r] = (acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]);
}

// Whether a (host-side) device pointer is a multiple of `bytes`: the vector paths' condition.
inline bool aligned_to(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}
// Whether a float32 (f) or, when bf16 is given, BF16 buffer allows load4_f32_or_bf16 at every
// multiple of 4 values: 16-byte aligned float32, 8-byte aligned BF16.
inline bool four_values_aligned(const float* f, const uint16_t* bf16) {
  return bf16 ? aligned_to(bf16, 8) : aligned_to(f, 16);
}

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, never more than needed.
inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535 * 8) blocks = 65535 * 8;  // grid-stride loops cover the rest
  return unsigned(blocks < 1 ? 1 : blocks);
}

}  // namespace dsv3::cuda
