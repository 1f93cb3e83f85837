#include "model/router.h"

#include "kernels/ops.h"

namespace dsv3 {

RouterActivations::RouterActivations(Arena& arena, const ModelConfig& c, int64_t batch,
                                     int64_t seq) {
  const int64_t n = batch * seq, e = c.n_routed_experts, k = c.num_experts_per_tok;
  bias = arena.alloc({e}, DType::F32);
  logits = arena.alloc({n, e});
  scores = arena.alloc({n, e});
  indices = arena.alloc({n, k}, DType::I32);
  weights = arena.alloc({n, k});
  score_sum = arena.alloc({n});
  auto [counts_host, counts] = arena.alloc_mirrored({batch, e}, DType::F32);
  auto [prob_host, prob] = arena.alloc_mirrored({batch, e}, DType::F64);
  seq_counts = counts, seq_counts_host = counts_host, seq_prob = prob, seq_prob_host = prob_host;
  load = arena.host().alloc({e}, DType::F32);
}

RouterScratch::RouterScratch(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq) {
  const int64_t n = batch * seq;
  d_weights = arena.alloc({n, c.num_experts_per_tok});
  d_logits = arena.alloc({n, c.n_routed_experts});
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
ops::RouteSpec route_spec(const StepContext& ctx) {
  const ModelConfig& c = *ctx.config;
  ops::RouteSpec spec;
  spec.select = expert_selection(c);
  spec.sigmoid = c.scoring_func == ScoringFunc::Sigmoid;
  spec.norm_topk = c.norm_topk_prob;
  spec.scaling = c.routed_scaling_factor;
  spec.seq = ctx.seq;
  return spec;
}
}  // namespace

void upload_router_bias(const MoeWeights& w, RouterActivations& act) {
  DSV3_CHECK(w.bias.defined() && w.bias.numel() == act.bias.numel(),
             "router: a correction bias of {} values for {} experts",
             w.bias.defined() ? w.bias.numel() : 0, act.bias.numel());
  act.bias.copy_from(w.bias);
}

void router_forward(const StepContext& ctx, const MoeWeights& w, const Tensor& x,
                    RouterActivations& act) {
  const ModelConfig& c = *ctx.config;
  DSV3_CHECK(c.n_group <= 64, "n_group = {} exceeds the 64 groups dsv3 supports", c.n_group);
  ops::linear_forward(x, w.gate.value, act.logits);
  ops::route_forward(route_spec(ctx), act.logits, c.has_bias() ? &act.bias : nullptr, act.scores,
                     act.indices, act.weights, act.score_sum, act.seq_counts, act.seq_prob);
  // The one wait of the layer on a GPU: the counts and sums the host needs (no-ops on the CPU).
  copy_to_host({{&act.seq_counts_host, &act.seq_counts}, {&act.seq_prob_host, &act.seq_prob}});
  // Loads in the whole window, and the sequence-wise balance term.
  const int64_t experts = c.n_routed_experts, k = c.num_experts_per_tok;
  const float* seq_counts = act.seq_counts_host.f32();
  const double* seq_prob = act.seq_prob_host.f64();
  float* load = act.load.f32();
  for (int64_t e = 0; e < experts; ++e) load[e] = 0.0f;
  for (int64_t b = 0; b < ctx.batch; ++b)
    for (int64_t e = 0; e < experts; ++e) load[e] += seq_counts[b * experts + e];
  double balance = 0.0;
  const double f_scale = double(experts) / double(k * ctx.seq);
  for (int64_t b = 0; b < ctx.batch; ++b)
    for (int64_t e = 0; e < experts; ++e)
      balance += f_scale * seq_counts[b * experts + e] * seq_prob[b * experts + e] /
                 double(ctx.seq);
  act.balance = balance / double(ctx.batch);
}

void router_backward(const StepContext& ctx, MoeWeights& w, const Tensor& x,
                     const RouterActivations& act, double alpha, RouterScratch& rs, Tensor& d_x) {
  ops::route_backward(route_spec(ctx), alpha, act.scores, act.indices, act.score_sum,
                      act.seq_counts, rs.d_weights, rs.d_logits);
  ops::linear_backward(x, w.gate.value, rs.d_logits, &d_x, &w.gate.grad, true,
                       w.gate.accumulate_grad());
}

}  // namespace dsv3
