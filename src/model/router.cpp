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
  seq_counts = a.alloc({batch, e}, DType::F32);
  load = a.alloc({e}, DType::F32);
}

RouterScratch::RouterScratch(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq) {
  const int64_t n = batch * seq;
  auto [dw, ddw] = arena.alloc_mirrored({n, c.num_experts_per_tok});
  auto [dl, ddl] = arena.alloc_mirrored({n, c.n_routed_experts});
  d_weights = dw, device_d_weights = ddw, d_logits = dl, device_d_logits = ddl;
}

ExpertSelection expert_selection(const ModelConfig& c) {
  return {c.n_routed_experts, c.n_group, c.topk_group, c.num_experts_per_tok,
          c.topk_method == "noaux_tc"};
}

template <typename T>
void select_experts(const ModelConfig& c, const T* selection, T* group_scores, int32_t* chosen) {
  select_experts(expert_selection(c), selection, group_scores, chosen);
}
template void select_experts<float>(const ModelConfig&, const float*, float*, int32_t*);
template void select_experts<double>(const ModelConfig&, const double*, double*, int32_t*);

namespace {
// Scores, selection, gating weights and the balance term for every token, in T.
template <typename T>
void route_tokens(const StepContext& ctx, const MoeWeights& w, RouterActivations& act) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = ctx.rows(), experts = c.n_routed_experts, k = c.num_experts_per_tok;
  const T* logits = act.logits.real<T>();
  T* scores = act.scores.real<T>();
  const float* bias = c.has_bias() ? w.bias.f32() : nullptr;
  int32_t* indices = act.indices.i32();
  T* weights = act.weights.real<T>();
  T* selection_all = act.selection.real<T>();
  T* groups_all = act.group_scores.real<T>();
  T* score_sum = act.score_sum.real<T>();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    T* selection = selection_all + t * experts;
    const T* l = logits + t * experts;
    T* s = scores + t * experts;
    if (c.scoring_func == ScoringFunc::Sigmoid) {
      for (int64_t e = 0; e < experts; ++e) s[e] = T(1) / (T(1) + std::exp(-l[e]));
    } else {
      T mx = *std::max_element(l, l + experts), sum = T(0);
      for (int64_t e = 0; e < experts; ++e) sum += (s[e] = std::exp(l[e] - mx));
      for (int64_t e = 0; e < experts; ++e) s[e] /= sum;
    }
    T total = T(0);
    for (int64_t e = 0; e < experts; ++e) {
      selection[e] = s[e] + (bias ? T(bias[e]) : T(0));
      total += s[e];
    }
    score_sum[t] = total;
    int32_t* chosen = indices + t * k;
    select_experts(c, selection, groups_all + t * c.n_group, chosen);
    // Gating weights come from the unbiased scores.
    T* wt = weights + t * k;
    T sum = T(0);
    for (int64_t j = 0; j < k; ++j) sum += (wt[j] = s[chosen[j]]);
    T scale = T(c.routed_scaling_factor);
    if (c.norm_topk_prob) scale /= (sum + T(1e-20));
    for (int64_t j = 0; j < k; ++j) wt[j] *= scale;
  }
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

// d loss / d logits from the gating weights' gradient and the balance term, in T.
template <typename T>
void route_tokens_backward(const StepContext& ctx, const RouterActivations& act, double alpha,
                           RouterScratch& rs) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = ctx.rows(), experts = c.n_routed_experts, k = c.num_experts_per_tok;
  const T* scores = act.scores.real<T>();
  const int32_t* indices = act.indices.i32();
  const T* dw = rs.d_weights.real<T>();
  const float* seq_counts = act.seq_counts.f32();
  T* dl = rs.d_logits.real<T>();
  // d(balance)/d(normalized score of expert e at a token of sequence b) = f_{b,e} / (B * T).
  const T f_scale = T(experts) / T(k * ctx.seq);
  const T balance_grad = T(alpha) / T(ctx.batch * ctx.seq);
  const T routed_scale = T(c.routed_scaling_factor);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* s = scores + t * experts;
    T* d = dl + t * experts;
    for (int64_t e = 0; e < experts; ++e) d[e] = T(0);
    // Through the gating weights w_j = scale * s_j (/ Z, Z = sum of chosen s + 1e-20).
    const int32_t* chosen = indices + t * k;
    const T* g = dw + t * k;
    if (c.norm_topk_prob) {
      T z = T(1e-20), dot = T(0);
      for (int64_t j = 0; j < k; ++j) {
        z += s[chosen[j]];
        dot += g[j] * s[chosen[j]];
      }
      for (int64_t j = 0; j < k; ++j) d[chosen[j]] += routed_scale * (g[j] / z - dot / (z * z));
    } else {
      for (int64_t j = 0; j < k; ++j) d[chosen[j]] += routed_scale * g[j];
    }
    // Through the balance term's normalized scores s_e / sum(s).
    if (alpha != 0.0) {
      const float* counts = seq_counts + (t / ctx.seq) * experts;
      const T total = act.score_sum.real<T>()[t];
      T dot = T(0);
      for (int64_t e = 0; e < experts; ++e) dot += balance_grad * f_scale * T(counts[e]) * s[e];
      dot /= total;
      for (int64_t e = 0; e < experts; ++e)
        d[e] += (balance_grad * f_scale * T(counts[e]) - dot) / total;
    }
    // Through the scoring function.
    if (c.scoring_func == ScoringFunc::Sigmoid) {
      for (int64_t e = 0; e < experts; ++e) d[e] *= s[e] * (T(1) - s[e]);
    } else {
      T dot = T(0);
      for (int64_t e = 0; e < experts; ++e) dot += d[e] * s[e];
      for (int64_t e = 0; e < experts; ++e) d[e] = s[e] * (d[e] - dot);
    }
  }
}
}  // namespace

void router_forward(const StepContext& ctx, const MoeWeights& w, const Tensor& x,
                    RouterActivations& act) {
  DSV3_CHECK(ctx.config->n_group <= 64, "n_group = {} exceeds the 64 groups dsv3 supports",
             ctx.config->n_group);
  ops::linear_forward(x, w.gate.value, act.device_logits);
  act.logits.copy_from(act.device_logits);  // no-op on the CPU
  if (act.logits.dtype() == DType::F64)
    route_tokens<double>(ctx, w, act);
  else
    route_tokens<float>(ctx, w, act);
  act.device_weights.copy_from(act.weights);
}

void router_backward(const StepContext& ctx, MoeWeights& w, const Tensor& x,
                     const RouterActivations& act, double alpha, RouterScratch& rs, Tensor& d_x) {
  rs.d_weights.copy_from(rs.device_d_weights);  // no-op on the CPU
  if (rs.d_logits.dtype() == DType::F64)
    route_tokens_backward<double>(ctx, act, alpha, rs);
  else
    route_tokens_backward<float>(ctx, act, alpha, rs);
  rs.device_d_logits.copy_from(rs.d_logits);
  ops::linear_backward(x, w.gate.value, rs.device_d_logits, &d_x, &w.gate.grad, true);
}

}  // namespace dsv3
