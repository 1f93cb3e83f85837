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
  Tensor expert_offsets;   // [E + 1] int64 (host): permuted rows of expert e are [off[e], off[e+1])
  Tensor device_offsets;   // the same on the model's device (the same tensor on the CPU)
  Tensor permuted_token;   // [N*K] int32: token row feeding each permuted row
  Tensor permuted_row;     // [N*K] int32: permuted row of assignment (t, j) at t*K + j
  Tensor x_perm;           // [N*K, hidden] inputs in expert order (BF16 in mixed precision)
  FfnActivations experts;  // [N*K, ...]
  Tensor y_perm;           // [N*K, hidden] expert outputs in expert order (BF16 in mixed precision)
  FfnActivations shared;   // [N, ...]

  MoeActivations(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq);
};

struct MoeScratch {
  Tensor d_y_perm, d_x_perm;  // [N*K, hidden] (BF16 in mixed precision)
  FfnActivations d_experts;   // [N*K, ...]
  FfnActivations d_shared;    // [N, ...]
  RouterScratch router;       // d gating weights [N, K], d logits [N, E]
  MoeScratch(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq);
};

// x_mm, d_out_mm: x and d_out as the products read them (their BF16 copies in mixed precision,
// else x and d_out themselves: matmul_view). The router reads x, the gather and the shared
// experts x_mm; the combine's backward reads d_out, the shared experts d_out_mm.
// out = the shared experts' output + the routed experts' weighted outputs, plus `residual` when
// given (the block's x_mid: out is then the block's output, written in the combine's pass).
void moe_forward(const StepContext& ctx, const MoeWeights& w, const Tensor& x, const Tensor& x_mm,
                 MoeActivations& act, Tensor& out, const Tensor* residual = nullptr);
// d_x (overwritten); alpha scales the balance term's gradient.
void moe_backward(const StepContext& ctx, MoeWeights& w, const Tensor& x, const Tensor& x_mm,
                  const MoeActivations& act, const Tensor& d_out, const Tensor& d_out_mm,
                  double alpha, MoeScratch& s, Tensor& d_x);

}  // namespace dsv3
