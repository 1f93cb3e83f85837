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
  // float32, and the norm writes the products' copy beside it.
  h_ffn = is_moe ? a.alloc({n, d}) : a.alloc_matmul_operand({n, d});
  if (is_moe) h_ffn_mm = a.alloc_matmul_copy({n, d});
  rstd_ffn = a.alloc({n});
  if (is_moe) {
    moe = std::make_unique<MoeActivations>(a, c, batch, seq);
  } else {
    dense = std::make_unique<FfnActivations>(a, n, c.intermediate_size);
  }
}

BlockScratch::BlockScratch(Arena& a, const ModelConfig& c, int64_t batch, int64_t seq)
    : d_h(a.alloc({batch * seq, c.hidden_size})), mla(a, c, batch, seq) {
  d_residual_mm = a.alloc_matmul_copy({batch * seq, c.hidden_size});
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
  ops::add(x, act.attn_out, act.x_mid);
  ops::rmsnorm_forward_with_bf16_copy(act.x_mid, w.post_attention_layernorm.value, eps, act.h_ffn,
                                      act.rstd_ffn, act.h_ffn_mm);
  // out = x_mid + FFN(h_ffn): the FFN writes its output into out, and x_mid is added in the
  // MoE combine's pass, or in place after the dense FFN.
  if (w.moe) {
    moe_forward(ctx, w.experts, act.h_ffn, matmul_view(act.h_ffn, act.h_ffn_mm), *act.moe, out,
                &act.x_mid);
  } else {
    profile::Phase phase("dense ffn fwd", x.device());
    ffn_forward(w.dense, act.h_ffn, *act.dense, out);
    ops::add(act.x_mid, out, out);
  }
}

void residual_norm_backward(const Tensor& x, Param& w, const Tensor& rstd, const Tensor& d_y,
                            Tensor& d_residual, bool accumulate, BlockScratch& s) {
  ops::rmsnorm_backward_with_bf16_copy(x, w.value, rstd, d_y, d_residual, w.grad, accumulate,
                                       w.accumulate_grad(), s.d_residual_mm);
}

void block_backward(const StepContext& ctx, BlockWeights& w, const Tensor& x,
                    const BlockActivations& act, double alpha, BlockScratch& s,
                    Tensor& d_residual) {
  // FFN branch: d_residual (= d out) flows to x_mid directly and through the FFN and its norm.
  // The output projections' backward products read its copy in mixed precision.
  const Tensor& d_residual_mm = matmul_view(d_residual, s.d_residual_mm);
  if (w.moe) {
    moe_backward(ctx, w.experts, act.h_ffn, matmul_view(act.h_ffn, act.h_ffn_mm), *act.moe,
                 d_residual, d_residual_mm, alpha, *s.moe, s.d_h);
  } else {
    profile::Phase phase("dense ffn bwd", x.device());
    ffn_backward(w.dense, act.h_ffn, *act.dense, d_residual_mm, *s.d_dense, s.d_h, false);
  }
  residual_norm_backward(act.x_mid, w.post_attention_layernorm, act.rstd_ffn, s.d_h, d_residual,
                         true, s);
  // Attention branch: d_residual now holds d x_mid (o_proj's backward is its only reader).
  mla_backward(ctx, w.attn, act.h_attn, act.mla, d_residual_mm, s.mla, s.d_h);
  residual_norm_backward(x, w.input_layernorm, act.rstd_attn, s.d_h, d_residual, true, s);
}

}  // namespace dsv3
