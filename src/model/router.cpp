#include "model/router.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/ops.h"

namespace dsv3 {

RouterActivations::RouterActivations(Arena& arena, const ModelConfig& c, int64_t batch,
                                     int64_t seq) {
  const int64_t n = batch * seq, e = c.n_routed_experts, k = c.num_experts_per_tok;
  auto [l, dl] = arena.alloc_mirrored({n, e});
  auto [wt, dwt] = arena.alloc_mirrored({n, k});
  logits = l, device_logits = dl, weights = wt, device_weights = dwt;
  Arena& a = arena.host();
  scores = a.alloc({n, e});
  indices = a.alloc({n, k}, DType::I32);
  selection = a.alloc({n, e});
  group_scores = a.alloc({n, c.n_group});
  score_sum = a.alloc({n});
  seq_counts = a.alloc({batch, e});
  load = a.alloc({e});
}

RouterScratch::RouterScratch(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq) {
  const int64_t n = batch * seq;
  auto [dw, ddw] = arena.alloc_mirrored({n, c.num_experts_per_tok});
  auto [dl, ddl] = arena.alloc_mirrored({n, c.n_routed_experts});
  d_weights = dw, device_d_weights = ddw, d_logits = dl, device_d_logits = ddl;
}

void select_experts(const ModelConfig& c, const float* selection, float* group_scores,
                    int32_t* chosen) {
  const int experts = c.n_routed_experts, groups = c.n_group, k = c.num_experts_per_tok;
  const int per_group = experts / groups;
  const float kNeg = -std::numeric_limits<float>::infinity();
  // Group limit: score each group (sum of its top-2 for noaux_tc, else its max), keep the best.
  uint64_t kept_groups = ~0ull;  // bit g set: group g may be chosen (n_group <= 64 checked below)
  if (groups > 1) {
    for (int g = 0; g < groups; ++g) {
      const float* s = selection + g * per_group;
      float first = kNeg, second = kNeg;
      for (int i = 0; i < per_group; ++i) {
        if (s[i] > first) {
          second = first;
          first = s[i];
        } else if (s[i] > second) {
          second = s[i];
        }
      }
      bool top2 = c.topk_method == "noaux_tc" && per_group >= 2;
      group_scores[g] = top2 ? first + second : first;
    }
    kept_groups = 0;
    for (int round = 0; round < c.topk_group; ++round) {
      int best = -1;
      for (int g = 0; g < groups; ++g)
        if (!(kept_groups >> g & 1) && (best < 0 || group_scores[g] > group_scores[best])) best = g;
      kept_groups |= 1ull << best;
    }
  }
  // Top-k experts among the kept groups (k is small: repeated arg-max is cheapest).
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < experts; ++e) {
      if (!(kept_groups >> (e / per_group) & 1)) continue;
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= chosen[i] == e;
      if (taken) continue;
      if (best < 0 || selection[e] > selection[best]) best = e;
    }
    chosen[j] = best;
  }
  std::sort(chosen, chosen + k);
}

void router_forward(const StepContext& ctx, const MoeWeights& w, const Tensor& x,
                    RouterActivations& act) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = ctx.rows(), experts = c.n_routed_experts, k = c.num_experts_per_tok;
  DSV3_CHECK(c.n_group <= 64, "n_group = {} exceeds the 64 groups dsv3 supports", c.n_group);
  ops::linear_forward(x, w.gate.value, act.device_logits);
  act.logits.copy_from(act.device_logits);  // no-op on the CPU
  const float* logits = act.logits.f32();
  float* scores = act.scores.f32();
  const float* bias = c.has_bias() ? w.bias.f32() : nullptr;
  int32_t* indices = act.indices.i32();
  float* weights = act.weights.f32();
  float* selection_all = act.selection.f32();
  float* groups_all = act.group_scores.f32();
  float* score_sum = act.score_sum.f32();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    float* selection = selection_all + t * experts;
    const float* l = logits + t * experts;
    float* s = scores + t * experts;
    if (c.scoring_func == ScoringFunc::Sigmoid) {
      for (int64_t e = 0; e < experts; ++e) s[e] = 1.0f / (1.0f + std::exp(-l[e]));
    } else {
      float mx = *std::max_element(l, l + experts), sum = 0.0f;
      for (int64_t e = 0; e < experts; ++e) sum += (s[e] = std::exp(l[e] - mx));
      for (int64_t e = 0; e < experts; ++e) s[e] /= sum;
    }
    float total = 0.0f;
    for (int64_t e = 0; e < experts; ++e) {
      selection[e] = s[e] + (bias ? bias[e] : 0.0f);
      total += s[e];
    }
    score_sum[t] = total;
    int32_t* chosen = indices + t * k;
    select_experts(c, selection, groups_all + t * c.n_group, chosen);
    // Gating weights come from the unbiased scores.
    float* wt = weights + t * k;
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += (wt[j] = s[chosen[j]]);
    float scale = float(c.routed_scaling_factor);
    if (c.norm_topk_prob) scale /= (sum + 1e-20f);
    for (int64_t j = 0; j < k; ++j) wt[j] *= scale;
  }
  act.device_weights.copy_from(act.weights);
  // Loads, per sequence and in total, and the sequence-wise balance term.
  act.seq_counts.zero_();
  act.load.zero_();
  float* seq_counts = act.seq_counts.f32();
  for (int64_t t = 0; t < n; ++t) {
    int64_t b = t / ctx.seq;
    for (int64_t j = 0; j < k; ++j) {
      seq_counts[b * experts + indices[t * k + j]] += 1.0f;
      act.load.f32()[indices[t * k + j]] += 1.0f;
    }
  }
  double balance = 0.0;
  const double f_scale = double(experts) / double(k * ctx.seq);
  for (int64_t b = 0; b < ctx.batch; ++b) {
    for (int64_t e = 0; e < experts; ++e) {
      double p = 0.0;  // P_e: mean over the sequence of the normalized score
      for (int64_t t = b * ctx.seq; t < (b + 1) * ctx.seq; ++t)
        p += double(scores[t * experts + e]) / score_sum[t];
      balance += f_scale * seq_counts[b * experts + e] * p / double(ctx.seq);
    }
  }
  act.balance = balance / double(ctx.batch);
}

void router_backward(const StepContext& ctx, MoeWeights& w, const Tensor& x,
                     const RouterActivations& act, float alpha, RouterScratch& rs, Tensor& d_x) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = ctx.rows(), experts = c.n_routed_experts, k = c.num_experts_per_tok;
  rs.d_weights.copy_from(rs.device_d_weights);  // no-op on the CPU
  const float* scores = act.scores.f32();
  const int32_t* indices = act.indices.i32();
  const float* dw = rs.d_weights.f32();
  const float* seq_counts = act.seq_counts.f32();
  float* dl = rs.d_logits.f32();
  // d(balance)/d(normalized score of expert e at a token of sequence b) = f_{b,e} / (B * T).
  const float f_scale = float(experts) / float(k * ctx.seq);
  const float balance_grad = alpha / float(ctx.batch * ctx.seq);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* s = scores + t * experts;
    float* d = dl + t * experts;
    for (int64_t e = 0; e < experts; ++e) d[e] = 0.0f;
    // Through the gating weights w_j = scale * s_j (/ Z, Z = sum of chosen s + 1e-20).
    const int32_t* chosen = indices + t * k;
    const float* g = dw + t * k;
    if (c.norm_topk_prob) {
      float z = 1e-20f, dot = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        z += s[chosen[j]];
        dot += g[j] * s[chosen[j]];
      }
      for (int64_t j = 0; j < k; ++j)
        d[chosen[j]] += float(c.routed_scaling_factor) * (g[j] / z - dot / (z * z));
    } else {
      for (int64_t j = 0; j < k; ++j) d[chosen[j]] += float(c.routed_scaling_factor) * g[j];
    }
    // Through the balance term's normalized scores s_e / sum(s).
    if (alpha != 0.0f) {
      const float* counts = seq_counts + (t / ctx.seq) * experts;
      const float total = act.score_sum.f32()[t];
      float dot = 0.0f;
      for (int64_t e = 0; e < experts; ++e) dot += balance_grad * f_scale * counts[e] * s[e];
      dot /= total;
      for (int64_t e = 0; e < experts; ++e)
        d[e] += (balance_grad * f_scale * counts[e] - dot) / total;
    }
    // Through the scoring function.
    if (c.scoring_func == ScoringFunc::Sigmoid) {
      for (int64_t e = 0; e < experts; ++e) d[e] *= s[e] * (1.0f - s[e]);
    } else {
      float dot = 0.0f;
      for (int64_t e = 0; e < experts; ++e) dot += d[e] * s[e];
      for (int64_t e = 0; e < experts; ++e) d[e] = s[e] * (d[e] - dot);
    }
  }
  rs.device_d_logits.copy_from(rs.d_logits);
  ops::linear_backward(x, w.gate.value, rs.device_d_logits, &d_x, &w.gate.grad, true);
}

}  // namespace dsv3
