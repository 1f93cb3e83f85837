#pragma once
// What the BF16 attention kernels share: the head-dim capacities they are instantiated for.
// A kernel for capacity (DQ, DV) runs any qk_dim <= DQ and v_dim <= DV that are multiples of 8
// (the 16-byte cp.async chunk), zero-filling the columns in between; the smallest capacity that
// fits is taken, so 192/128 (DeepSeek-V3) and 64/64 run with no padding.
//
// The backward keeps d_k and d_v of 16 keys per warp in registers ((DQ + DV) / 2 floats per
// thread), so it stops at 192/128; larger dims take the float32 fallback (dispatch.cpp).
#include <cstdint>

#include "kernels/cuda/mma_bf16.cuh"
#include "kernels/cuda/params.h"

namespace dsv3::cuda {

// The (b, h) of a block's bh = b heads + h, and where that head's rows start in a buffer
// (params.h, HeadRows).
struct HeadOf {
  int64_t b, h;
  __device__ __forceinline__ HeadOf(int64_t bh, int64_t heads) : b(bh / heads), h(bh % heads) {}
  __device__ __forceinline__ int64_t offset(const HeadRows& r) const {
    return b * r.batch + h * r.head;
  }
  __device__ __forceinline__ const tc::bf16* bf16_rows(const uint16_t* base,
                                                       const HeadRows& r) const {
    return reinterpret_cast<const tc::bf16*>(base) + offset(r);
  }
};

// Where head `at`'s q, k and v rows come from (AttentionForwardBf16 and AttentionBackwardBf16
// name these fields alike); the key's columns past k_split from k2.
struct QkvRows {
  tc::RowSource q, k, v;
};
template <typename Params>
__device__ __forceinline__ QkvRows qkv_rows(const Params& p, const HeadOf& at) {
  return {tc::rows_of(at.bf16_rows(p.q, p.q_rows), p.q_rows.row, p.qk_dim),
          {at.bf16_rows(p.k, p.k_rows), p.k_rows.row, at.bf16_rows(p.k2, p.k2_rows), p.k2_rows.row,
           p.k_split},
          tc::rows_of(at.bf16_rows(p.v, p.v_rows), p.v_rows.row, p.v_dim)};
}

struct Capacity {
  int id;      // index into the list below; -1: none fits
  int dq, dv;  // 0 when none fits
};

__host__ inline Capacity pick_capacity(int64_t qk_dim, int64_t v_dim, int count) {
  constexpr int kCaps[4][2] = {{64, 64}, {128, 128}, {192, 128}, {256, 256}};
  if (qk_dim < 8 || v_dim < 8 || qk_dim % 8 || v_dim % 8) return {-1, 0, 0};
  for (int i = 0; i < count; ++i)
    if (qk_dim <= kCaps[i][0] && v_dim <= kCaps[i][1]) return {i, kCaps[i][0], kCaps[i][1]};
  return {-1, 0, 0};
}
__host__ inline Capacity fwd_capacity(int64_t qk_dim, int64_t v_dim) {
  return pick_capacity(qk_dim, v_dim, 4);
}
__host__ inline Capacity bwd_capacity(int64_t qk_dim, int64_t v_dim) {
  return pick_capacity(qk_dim, v_dim, 3);
}

}  // namespace dsv3::cuda
