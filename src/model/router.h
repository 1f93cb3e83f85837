#pragma once
// The DeepSeekMoE router (DESIGN.md section 2): affinity scores, group-limited top-k selection
// with the auxiliary-loss-free correction bias (selection only), gating weights from the
// unbiased scores, and the complementary sequence-wise balance loss.
#include "model/expert_selection.h"
#include "model/step.h"
#include "model/weights.h"

namespace dsv3 {

// N rows, E routed experts, K experts per token, B sequences. Routing runs on the host: every
// buffer here is host memory. Floating buffers are in the arena's real dtype (float32, or
// float64 for the float64 step), except the counts, which are float32 (exact integers). On a GPU
// the logits are computed there and copied over, and the gating weights copied back (device_logits,
// device_weights; the same tensors on the CPU).
struct RouterActivations {
  Tensor device_logits;   // [N, E] x W_gate^T, on the model's device
  Tensor device_weights;  // [N, K] the gating weights, on the model's device
  Tensor logits;          // [N, E] x W_gate^T
  Tensor scores;          // [N, E] sigmoid or softmax of logits
  Tensor indices;         // [N, K] int32, chosen experts, ascending
  Tensor weights;         // [N, K] gating weights (normalized, scaled)
  Tensor selection;       // [N, E] scores + correction bias (what selection ranks)
  Tensor group_scores;    // [N, n_group]
  Tensor score_sum;       // [N]    sum of a token's scores (the balance term normalizes by it)
  Tensor seq_counts;      // [B, E] tokens of each sequence routed to each expert
  Tensor load;            // [E]    tokens routed to each expert in the whole window
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

void router_forward(const StepContext& ctx, const MoeWeights& w, const Tensor& x,
                    RouterActivations& act);
// Backward scratch: host buffers for the routing arithmetic, device views for the GEMM (the
// same tensors on the CPU).
struct RouterScratch {
  Tensor d_weights;         // [N, K] host: d loss / d gating weights
  Tensor device_d_weights;  // [N, K] where the MoE combine writes it
  Tensor d_logits;          // [N, E] host
  Tensor device_d_logits;   // [N, E] on the model's device
  RouterScratch(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq);
};

// Reads s.device_d_weights (the gradient of the loss w.r.t. the gating weights); alpha scales
// the balance term's gradient; d_x += the router's input gradient.
void router_backward(const StepContext& ctx, MoeWeights& w, const Tensor& x,
                     const RouterActivations& act, double alpha, RouterScratch& s, Tensor& d_x);

}  // namespace dsv3
