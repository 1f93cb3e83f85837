#pragma once
// The group-limited top-k expert selection (model/expert_selection.h, select_experts) by one
// warp for one token: the training router (kernels/cuda/router.cu) and the inference router
// (infer/cuda/decode_kernels.cu) both call it.
//
// select_experts picks in rounds (topk_group groups, then k experts), each round a serial scan:
// best = the first candidate, replaced by each later one of a greater value. The warp computes
// each round's pick across lanes (warp_pick) with exactly that result, so the experts are the
// serial rule's tie for tie: the greatest value, ties to the lower index, except that a NaN
// first candidate is kept (nothing compares greater than it). (A thread per token running the
// serial rule took 46 us per one-token call on an H100: a few thousand dependent steps.)
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"
#include "model/expert_selection.h"

namespace dsv3::cuda {

constexpr int kWarpSelectPerLane = kMaxWarpSelectExperts / 32;  // candidates e = lane + 32 j

struct SelectCandidate {
  float v;
  int i;  // -1: none
};

// Before b in the serial scan's order among non-NaN values: greater, or equal at a lower index.
__device__ __forceinline__ bool select_beats(SelectCandidate a, SelectCandidate b) {
  if (a.i < 0) return false;
  if (b.i < 0) return true;
  return a.v > b.v || (a.v == b.v && a.i < b.i);
}

__device__ __forceinline__ SelectCandidate select_shuffle_xor(SelectCandidate c, int o) {
  return {__shfl_xor_sync(kFullMask, c.v, o), __shfl_xor_sync(kFullMask, c.i, o)};
}

// The serial scan's pick from every lane's first candidate (its lowest index) and best non-NaN
// candidate; -1 when no lane has a candidate. Every lane gets the result.
__device__ __forceinline__ int warp_pick(SelectCandidate first, SelectCandidate best) {
  for (int o = 16; o > 0; o >>= 1) {
    const SelectCandidate f = select_shuffle_xor(first, o), b = select_shuffle_xor(best, o);
    if (f.i >= 0 && (first.i < 0 || f.i < first.i)) first = f;
    if (select_beats(b, best)) best = b;
  }
  if (first.i < 0) return -1;
  return isnan(first.v) ? first.i : best.i;
}

// Adds candidate (v, i) to a lane's first and best; a lane offers its candidates in ascending i.
__device__ __forceinline__ void select_offer(float v, int i, SelectCandidate& first,
                                             SelectCandidate& best) {
  if (first.i < 0) first = {v, i};
  if (!isnan(v) && (best.i < 0 || v > best.v)) best = {v, i};
}

// The CPU's softmax normalisers of one token's logits l [E]: the max, NaNs ignored as by an
// fmaxf chain, and the sum of exp(l - max) in index order. exps [E] (shared memory) receives
// the exponentials; every lane gets mx and sum. Every lane calls.
__device__ __forceinline__ void warp_softmax_terms(const float* l, int experts, int lane,
                                                   float* exps, float& mx, float& sum) {
  mx = NAN;
  for (int e = lane; e < experts; e += 32) mx = fmaxf(mx, l[e]);
  mx = warp_max(mx);
  for (int e = lane; e < experts; e += 32) exps[e] = expf(l[e] - mx);
  __syncwarp();
  sum = 0.0f;
  if (lane == 0)
    for (int e = 0; e < experts; ++e) sum += exps[e];
  sum = __shfl_sync(kFullMask, sum, 0);
  __syncwarp();  // lane 0 has read every exponential before a caller overwrites them
}

// sel: the token's selection scores [E] in shared memory, written by the warp and synchronised
// (__syncwarp) before the call; sv: this lane's copies, sv[j] = sel[lane + 32 j] for
// lane + 32 j < E. picks [k] (shared) receives select_experts' result, ascending; every lane
// may read it after the call. E <= kMaxWarpSelectExperts; every lane calls.
__device__ __forceinline__ void warp_select_experts(const ExpertSelection& s, const float* sel,
                                                    const float (&sv)[kWarpSelectPerLane],
                                                    int lane, int32_t* picks) {
  const int experts = s.experts, per_group = experts / s.groups;
  uint64_t kept = ~0ull;  // bit g: group g may be chosen
  if (s.groups > 1) {
    float gs[2] = {0.0f, 0.0f};  // groups lane and lane + 32: the sum of their top two, or max
    for (int j = 0; j < 2; ++j) {
      const int g = lane + 32 * j;
      if (g < s.groups) gs[j] = group_score(sel + g * per_group, per_group, s.top2_groups);
    }
    kept = 0;
    for (int round = 0; round < s.topk_group; ++round) {
      SelectCandidate first{0.0f, -1}, best{0.0f, -1};
      for (int j = 0; j < 2; ++j) {
        const int g = lane + 32 * j;
        if (g < s.groups && !(kept >> g & 1)) select_offer(gs[j], g, first, best);
      }
      const int g = warp_pick(first, best);
      if (g >= 0) kept |= 1ull << g;
    }
  }
  uint32_t taken = 0;  // bit j: candidate lane + 32 j already chosen
  for (int j = 0; j < s.k; ++j) {
    SelectCandidate first{0.0f, -1}, best{0.0f, -1};
#pragma unroll
    for (int c = 0; c < kWarpSelectPerLane; ++c) {
      const int e = lane + 32 * c;
      if (e < experts && (kept >> (e / per_group) & 1) && !(taken >> c & 1))
        select_offer(sv[c], e, first, best);
    }
    const int e = warp_pick(first, best);
    if (e >= 0 && e % 32 == lane) taken |= 1u << (e / 32);
    if (lane == 0) picks[j] = e;
  }
  if (lane == 0)
    for (int i = 1; i < s.k; ++i)  // ascending ids, as select_experts leaves them
      for (int j = i; j > 0 && picks[j - 1] > picks[j]; --j) {
        const int32_t tmp = picks[j];
        picks[j] = picks[j - 1];
        picks[j - 1] = tmp;
      }
  __syncwarp();
}

}  // namespace dsv3::cuda
