#pragma once
// The group-limited top-k expert selection of DeepSeekMoE (DESIGN.md section 2), one definition
// for every router: the training router and the CPU inference engine (through select_experts in
// model/router.h) and the GPU inference engine's router kernel (infer/cuda/decode_kernels.cu)
// all call this, so they choose the same experts tie for tie.
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DSV3_HOST_DEVICE __host__ __device__
#else
#define DSV3_HOST_DEVICE
#endif

namespace dsv3 {

struct ExpertSelection {
  int experts = 0;         // routed experts E
  int groups = 1;          // n_group (at most 64)
  int topk_group = 1;      // groups kept
  int k = 0;               // experts chosen per token
  bool top2_groups = true; // a group's score: the sum of its top two (noaux_tc), else its max
};

// A group's score from its `per_group` selection scores v: the sum of its top two (the second
// counted only after a strictly greater first), or its max.
template <typename T>
DSV3_HOST_DEVICE inline T group_score(const T* v, int per_group, bool top2) {
  const T neg = -T(INFINITY);
  T first = neg, second = neg;
  for (int i = 0; i < per_group; ++i) {
    if (v[i] > first) {
      second = first;
      first = v[i];
    } else if (v[i] > second) {
      second = v[i];
    }
  }
  return top2 && per_group >= 2 ? first + second : first;
}

// `selection` [E]: one token's scores plus correction bias. `group_scores` is scratch of
// `groups` values; `chosen` receives k expert ids, ascending. Ties go to the lower index.
template <typename T>
DSV3_HOST_DEVICE inline void select_experts(const ExpertSelection& s, const T* selection,
                                            T* group_scores, int32_t* chosen) {
  const int per_group = s.experts / s.groups;
  uint64_t kept_groups = ~0ull;  // bit g set: group g may be chosen
  if (s.groups > 1) {
    for (int g = 0; g < s.groups; ++g)
      group_scores[g] = group_score(selection + g * per_group, per_group, s.top2_groups);
    kept_groups = 0;
    for (int round = 0; round < s.topk_group; ++round) {
      int best = -1;
      for (int g = 0; g < s.groups; ++g)
        if (!(kept_groups >> g & 1) && (best < 0 || group_scores[g] > group_scores[best])) best = g;
      kept_groups |= 1ull << best;
    }
  }
  // Top-k experts among the kept groups (k is small: repeated arg-max is cheapest).
  for (int j = 0; j < s.k; ++j) {
    int best = -1;
    for (int e = 0; e < s.experts; ++e) {
      if (!(kept_groups >> (e / per_group) & 1)) continue;
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= chosen[i] == e;
      if (taken) continue;
      if (best < 0 || selection[e] > selection[best]) best = e;
    }
    chosen[j] = best;
  }
  for (int i = 1; i < s.k; ++i)  // ascending ids (insertion sort: k is small)
    for (int j = i; j > 0 && chosen[j - 1] > chosen[j]; --j) {
      const int32_t t = chosen[j];
      chosen[j] = chosen[j - 1];
      chosen[j - 1] = t;
    }
}

}  // namespace dsv3
