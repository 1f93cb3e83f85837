#include "model/block.h"

#include <cstring>

#include "core/profile.h"
#include "kernels/ops.h"

namespace dsv3 {

BlockActivations::BlockActivations(Arena& a, const ModelConfig& c, bool is_moe, int64_t batch,
                                   int64_t seq)
    : mla(a, c, batch, seq) {
  const int64_t n = batch * seq, d = c.hidden_size;
  h_attn = a.alloc_matmul_operand({n, d});  // read by the q_a (or q) and kv_a products only
  rstd_attn = a.alloc({n});
  attn_out = a.alloc({n, d});
  x_mid = a.alloc({n, d});
  // A dense FFN is the norm's only reader: its products' dtype. The MoE's router reads it in
  // float32, and the norm writes the products' BF16 copy beside it (MoeActivations::x_mm).
  h_ffn = is_moe ? a.alloc({n, d}) : a.alloc_matmul_operand({n, d});
  rstd_ffn = a.alloc({n});
  ffn_out = a.alloc({n, d});
  if (is_moe) {
    moe = std::make_unique<MoeActivations>(a, c, batch, seq);
  } else {
    dense = std::make_unique<FfnActivations>(a, n, c.intermediate_size);
  }
}

BlockScratch::BlockScratch(Arena& a, const ModelConfig& c, int64_t batch, int64_t seq)
    : d_h(a.alloc({batch * seq, c.hidden_size})), mla(a, c, batch, seq) {
  bool any_dense = c.first_k_dense_replace > 0 || c.moe_layer_freq > 1 || c.n_routed_experts == 0;
  if (any_dense)
    d_dense = std::make_unique<FfnActivations>(a, batch * seq, c.intermediate_size,
                                               FfnActivations::Role::Gradients);
  if (c.n_routed_experts > 0) moe = std::make_unique<MoeScratch>(a, c, batch, seq);
}

void block_forward(const StepContext& ctx, const BlockWeights& w, const Tensor& x,
                   BlockActivations& act, Tensor& out) {
  const float eps = float(ctx.config->rms_norm_eps);
  ops::rmsnorm_forward(x, w.input_layernorm.value, eps, act.h_attn, act.rstd_attn);
  mla_forward(ctx, w.attn, act.h_attn, act.mla, act.attn_out);
  act.x_mid.copy_from(x);
  ops::add_inplace(act.x_mid, act.attn_out);
  if (act.moe && act.moe->x_mm.defined())
    ops::rmsnorm_forward_with_bf16_copy(act.x_mid, w.post_attention_layernorm.value, eps,
                                        act.h_ffn, act.rstd_ffn, act.moe->x_mm);
  else
    ops::rmsnorm_forward(act.x_mid, w.post_attention_layernorm.value, eps, act.h_ffn,
                         act.rstd_ffn);
  if (w.moe) {
    moe_forward(ctx, w.experts, act.h_ffn, *act.moe, act.ffn_out);
  } else {
    profile::Phase phase("dense ffn fwd", x.device());
    ffn_forward(w.dense, act.h_ffn, *act.dense, act.ffn_out);
  }
  out.copy_from(act.x_mid);
  ops::add_inplace(out, act.ffn_out);
}

void block_backward(const StepContext& ctx, BlockWeights& w, const Tensor& x,
                    const BlockActivations& act, double alpha, BlockScratch& s,
                    Tensor& d_residual) {
  // FFN branch: d_residual (= d out) flows to x_mid directly and through the FFN and its norm.
  if (w.moe) {
    moe_backward(ctx, w.experts, act.h_ffn, *act.moe, d_residual, alpha, *s.moe, s.d_h);
  } else {
    profile::Phase phase("dense ffn bwd", x.device());
    ffn_backward(w.dense, act.h_ffn, *act.dense, d_residual, *s.d_dense, s.d_h, false);
  }
  ops::rmsnorm_backward(act.x_mid, w.post_attention_layernorm.value, act.rstd_ffn, s.d_h,
                        d_residual, w.post_attention_layernorm.grad, true);
  // Attention branch: d_residual now holds d x_mid.
  mla_backward(ctx, w.attn, act.h_attn, act.mla, d_residual, s.mla, s.d_h);
  ops::rmsnorm_backward(x, w.input_layernorm.value, act.rstd_attn, s.d_h, d_residual,
                        w.input_layernorm.grad, true);
}

}  // namespace dsv3
