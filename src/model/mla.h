#pragma once
// Multi-head Latent Attention, training form (DESIGN.md section 2): queries through an
// optional low-rank bottleneck, keys and values decompressed from a shared latent c_kv, a
// decoupled rope key shared by all heads, causal softmax attention, output projection.
#include "model/step.h"
#include "model/weights.h"

namespace dsv3 {

// Activations one MLA layer keeps from forward for backward, planned for a [batch, seq] window.
// N = batch * seq rows; H heads; dq = nope + rope; R = kv_lora_rank; Q = q_lora_rank.
// (mm): only matrix products read it, so it is in the arena's matmul operand dtype (BF16 in
// mixed precision; Arena::alloc_matmul_operand).
//
// Token-major attention (mixed precision on a GPU, for dims the BF16 kernels take;
// ops::mla_attention_token_major): the attention reads q_roped, kv and k_pe_roped in place and
// writes o, so the head-major buffers (q_heads .. o_heads, and the scratch's d_*_heads) are not
// allocated. Otherwise q and k_pe are rotated in place and moved into the head-major buffers.
struct MlaActivations {
  bool token_major = false;
  Tensor q_a;        // [N, Q]      q_a_proj(x)                  (q LoRA only)
  Tensor q_a_rstd;   // [N]
  Tensor q_a_norm;   // [N, Q]      RMSNorm_q(q_a) (mm)
  Tensor q;          // [N, H*dq]   per-head queries, rope applied in place (not token-major)
  Tensor q_roped;    // [N, H*dq]   BF16 queries, the product's output with rope applied in
                     //             place (token-major only)
  Tensor kv_a;       // [N, R+rope] kv_a_proj_with_mqa(x)
  Tensor c_kv;       // [N, R]      latent (pre-norm)
  Tensor c_kv_rstd;  // [N]
  Tensor c_kv_norm;  // [N, R]      RMSNorm_kv(c_kv): what the decode cache stores (mm)
  Tensor k_pe;       // [N, rope]   shared rope key (rotated in place unless token-major)
  Tensor k_pe_roped;  // [N, rope]  BF16 rope key, rotated (token-major only)
  Tensor kv;         // [N, H*(nope+v)] kv_b_proj(c_kv_norm) (mm when token-major)
  Tensor q_heads;    // [B, H, T, dq] (mm)
  Tensor k_heads;    // [B, H, T, dq] (mm)
  Tensor v_heads;    // [B, H, T, v]  (mm)
  Tensor probs;      // [B, H, T, T] on the CPU (its attention saves P)
  Tensor lse;        // [B, H, T] on a GPU (flash attention saves the log-sum-exp, never P)
  Tensor o_heads;    // [B, H, T, v]
  Tensor o;          // [N, H*v]    attention output, token-major (input of o_proj) (mm)

  MlaActivations(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq);
};

// Scratch shared by all layers' backward passes (only one layer is in backward at a time).
struct MlaScratch {
  Tensor d_o;                   // [N, H*v] (mm when token-major: the attention reads it)
  Tensor d_o_heads;             // [B, H, T, v] (mm, as in MlaActivations)
  Tensor d_q_heads, d_k_heads;  // [B, H, T, dq]
  Tensor d_v_heads;             // [B, H, T, v]
  Tensor d_probs;               // [B, H, T, T] on the CPU only
  Tensor d_q;                   // [N, H*dq] of the rotated queries, rotated back in place
                                //   (not token-major)
  Tensor d_q_proj;              // [N, H*dq] (mm, token-major only): the queries' gradient
                                //   rotated back by the attention backward, the query
                                //   projection's output gradient
  Tensor d_kv;                  // [N, H*(nope+v)] (mm)
  Tensor d_kv_a;                // [N, R+rope] (mm)
  Tensor d_c_kv_norm, d_c_kv;   // [N, R]
  Tensor d_k_pe;                // [N, rope]
  Tensor d_q_a_norm, d_q_a;     // [N, Q] (d_q_a: mm)

  MlaScratch(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq);
};

// out [N, hidden] = MLA(x [N, hidden]); x is the pre-normed block input.
void mla_forward(const StepContext& ctx, const MlaWeights& w, const Tensor& x, MlaActivations& act,
                 Tensor& out);
// d_x (overwritten) = d_out . d(out)/d(x); parameter gradients accumulate into w.s grads.
// d_out may be in the matmul operand dtype: only o_proj's backward product reads it.
void mla_backward(const StepContext& ctx, MlaWeights& w, const Tensor& x, const MlaActivations& act,
                  const Tensor& d_out, MlaScratch& s, Tensor& d_x);

}  // namespace dsv3
