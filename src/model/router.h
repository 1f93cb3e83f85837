#pragma once
// The DeepSeekMoE router (DESIGN.md section 2): affinity scores, group-limited top-k selection
// with the auxiliary-loss-free correction bias (selection only), gating weights from the
// unbiased scores, and the complementary sequence-wise balance loss.
#include "model/expert_selection.h"
#include "model/step.h"
#include "model/weights.h"

namespace dsv3 {

// N rows, E routed experts, K experts per token, B sequences. The routing arithmetic runs on
// the model's device (ops::route_forward): the tensors below live there, except `load` and the
// host copies of the per-sequence statistics, which the host reads once per layer for the
// expert offsets, the balance term, the bias update and MaxVio. Floating buffers are in the
// arena's real dtype (float32, or float64 for the float64 step), except the counts, which are
// float32 (exact integers), and seq_prob, float64.
struct RouterActivations {
  Tensor bias;            // [E]    the correction bias, copied from the weights at each step
  Tensor logits;          // [N, E] x W_gate^T
  Tensor scores;          // [N, E] sigmoid or softmax of logits
  Tensor indices;         // [N, K] int32, chosen experts, ascending
  Tensor weights;         // [N, K] gating weights (normalized, scaled)
  Tensor score_sum;       // [N]    sum of a token's scores (the balance term normalizes by it)
  Tensor seq_counts;      // [B, E] tokens of each sequence routed to each expert
  Tensor seq_prob;        // [B, E] sum over each sequence of score / score_sum (float64)
  Tensor seq_counts_host, seq_prob_host;  // host copies (the same tensors on the CPU)
  Tensor load;            // [E]    host: tokens routed to each expert in the whole window
  double balance = 0;     // this layer's sequence-wise balance term, before alpha

  RouterActivations(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq);
};

// Chooses experts for one token's selection scores (scores + bias). `group_scores` is scratch
// of n_group values, `chosen` receives K indices sorted ascending. Shared with inference.
// T = float, or double for the float64 step. The rule itself is model/expert_selection.h.
template <typename T>
void select_experts(const ModelConfig& c, const T* selection, T* group_scores, int32_t* chosen);
// The selection settings of a config.
ExpertSelection expert_selection(const ModelConfig& c);

// Copies the correction bias (host memory: the trainer updates it between steps) to act.bias
// on the model's device. Transformer::step does it for every router at the start of a step,
// with its inputs (copies to the device are queued without a wait: core/device.h).
void upload_router_bias(const MoeWeights& w, RouterActivations& act);
// Reads act.bias (upload_router_bias) when the config has one.
void router_forward(const StepContext& ctx, const MoeWeights& w, const Tensor& x,
                    RouterActivations& act);
// Backward scratch, on the model's device.
struct RouterScratch {
  Tensor d_weights;  // [N, K] d loss / d gating weights (the MoE combine writes it)
  Tensor d_logits;   // [N, E]
  RouterScratch(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq);
};

// Reads s.d_weights (the gradient of the loss w.r.t. the gating weights); alpha scales
// the balance term's gradient; d_x += the router's input gradient.
void router_backward(const StepContext& ctx, MoeWeights& w, const Tensor& x,
                     const RouterActivations& act, double alpha, RouterScratch& s, Tensor& d_x);

}  // namespace dsv3
