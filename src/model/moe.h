#pragma once
// DeepSeekMoE layer: route each token to K experts, run each expert once over the tokens it
// received (tokens permuted into expert order so every expert is one contiguous GEMM), combine
// with the gating weights, add the shared experts.
#include "model/ffn.h"
#include "model/router.h"

namespace dsv3 {

// N rows, K experts per token, E experts, W expert width, S shared width.
struct MoeActivations {
  RouterActivations router;
  // [N, hidden] in mixed precision only: x rounded to BF16 by the norm that makes x (the router
  // reads x in float32; the gather and the shared experts' products read this copy).
  Tensor x_mm;
  Tensor expert_offsets;   // [E + 1] int64 (host): permuted rows of expert e are [off[e], off[e+1])
  Tensor device_offsets;   // the same on the model's device (the same tensor on the CPU)
  Tensor permuted_token;   // [N*K] int32: token row feeding each permuted row
  Tensor permuted_row;     // [N*K] int32: permuted row of assignment (t, j) at t*K + j
  Tensor x_perm;           // [N*K, hidden] inputs in expert order (BF16 in mixed precision)
  FfnActivations experts;  // [N*K, ...]
  Tensor y_perm;           // [N*K, hidden] expert outputs in expert order
  FfnActivations shared;   // [N, ...]

  MoeActivations(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq);
};

struct MoeScratch {
  Tensor d_y_perm, d_x_perm;  // [N*K, hidden] (d_y_perm BF16 in mixed precision)
  FfnActivations d_experts;   // [N*K, ...]
  FfnActivations d_shared;    // [N, ...]
  RouterScratch router;       // d gating weights [N, K], d logits [N, E]
  MoeScratch(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq);
};

// Where act.x_mm is defined, the caller has written x's BF16 copy there (block_forward's norm
// writes both).
void moe_forward(const StepContext& ctx, const MoeWeights& w, const Tensor& x, MoeActivations& act,
                 Tensor& out);
// d_x (overwritten); alpha scales the balance term's gradient. d_out_mm: d_out as the shared
// experts' products read it (its BF16 copy in mixed precision, else d_out itself).
void moe_backward(const StepContext& ctx, MoeWeights& w, const Tensor& x, const MoeActivations& act,
                  const Tensor& d_out, const Tensor& d_out_mm, double alpha, MoeScratch& s,
                  Tensor& d_x);

}  // namespace dsv3
