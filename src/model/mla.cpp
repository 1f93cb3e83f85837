#include "model/mla.h"

#include <cstdlib>
#include <string>

#include "core/profile.h"
#include "kernels/ops.h"

namespace dsv3 {

namespace {
ops::MlaAttentionShape attention_shape(const ModelConfig& c, int64_t batch, int64_t seq) {
  return {batch, seq, c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim};
}

// DSV3_MLA_TOKEN_MAJOR=0 keeps the head-major copies where the token-major kernels would run,
// to time the two side by side (scripts/gpu_checks.sh); 1 or unset, the default. Anything else
// is an error, not a silent default. Read when the buffers are planned, so a test can compare
// the two in one process.
bool token_major_allowed() {
  const char* v = std::getenv("DSV3_MLA_TOKEN_MAJOR");
  if (!v || !*v || std::string(v) == "1") return true;
  DSV3_CHECK(std::string(v) == "0",
             "DSV3_MLA_TOKEN_MAJOR={}: expected 1 (the default: MLA's attention reads the "
             "projections in place where the BF16 kernels take its dims) or 0 (head-major copies)",
             v);
  return false;
}

// The attention reads the token-major projections in place: mixed precision on a GPU whose BF16
// kernels take these dims (MlaActivations).
bool token_major_attention(const Arena& a, const ModelConfig& c, int64_t batch, int64_t seq) {
  return a.device() == Device::CUDA && a.matmul_operand_dtype() == DType::BF16 &&
         token_major_allowed() && ops::mla_attention_token_major(attention_shape(c, batch, seq));
}
}  // namespace

MlaActivations::MlaActivations(Arena& a, const ModelConfig& c, int64_t batch, int64_t seq)
    : token_major(token_major_attention(a, c, batch, seq)) {
  const int64_t n = batch * seq, h = c.num_attention_heads, dq = c.qk_head_dim(),
                r = c.kv_lora_rank, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  // The buffers that only matrix products read (q_b's and kv_b's inputs, attention's q, k, v,
  // o_proj's input) in the arena's matmul operand dtype: BF16 in mixed precision.
  if (c.q_lora_rank) {
    q_a = a.alloc({n, *c.q_lora_rank});
    q_a_rstd = a.alloc({n});
    q_a_norm = a.alloc_matmul_operand({n, *c.q_lora_rank});
  }
  kv_a = a.alloc({n, r + dr});
  c_kv = a.alloc({n, r});
  c_kv_rstd = a.alloc({n});
  c_kv_norm = a.alloc_matmul_operand({n, r});
  k_pe = a.alloc({n, dr});
  const Shape kv_shape{n, h * (c.qk_nope_head_dim + dv)};
  if (token_major) {
    q_roped = a.alloc_matmul_operand({n, h * dq});  // (no float32 q)
    k_pe_roped = a.alloc_matmul_operand({n, dr});
    kv = a.alloc_matmul_operand(kv_shape);
  } else {
    q = a.alloc({n, h * dq});
    kv = a.alloc(kv_shape);
    q_heads = a.alloc_matmul_operand({batch, h, seq, dq});
    k_heads = a.alloc_matmul_operand({batch, h, seq, dq});
    v_heads = a.alloc_matmul_operand({batch, h, seq, dv});
    o_heads = a.alloc({batch, h, seq, dv});
  }
  if (a.device() == Device::CPU)
    probs = a.alloc({batch, h, seq, seq});
  else
    lse = a.alloc({batch, h, seq});
  o = a.alloc_matmul_operand({n, h * dv});
}

MlaScratch::MlaScratch(Arena& a, const ModelConfig& c, int64_t batch, int64_t seq) {
  const int64_t n = batch * seq, h = c.num_attention_heads, dq = c.qk_head_dim(),
                r = c.kv_lora_rank, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  // As above, for the output gradients that only products read: attention's (d_o_heads, or d_o
  // itself when the attention reads it token-major), and those of kv_b, kv_a and q_a.
  if (token_major_attention(a, c, batch, seq)) {
    d_o = a.alloc_matmul_operand({n, h * dv});
    d_q_proj = a.alloc_matmul_operand({n, h * dq});
  } else {
    d_q = a.alloc({n, h * dq});
    d_o = a.alloc({n, h * dv});
    d_o_heads = a.alloc_matmul_operand({batch, h, seq, dv});
    d_q_heads = a.alloc({batch, h, seq, dq});
    d_k_heads = a.alloc({batch, h, seq, dq});
    d_v_heads = a.alloc({batch, h, seq, dv});
  }
  if (a.device() == Device::CPU) d_probs = a.alloc({batch, h, seq, seq});
  d_kv = a.alloc_matmul_operand({n, h * (c.qk_nope_head_dim + dv)});
  d_kv_a = a.alloc_matmul_operand({n, r + dr});
  d_c_kv_norm = a.alloc({n, r});
  d_c_kv = a.alloc({n, r});
  d_k_pe = a.alloc({n, dr});
  if (c.q_lora_rank) {
    d_q_a_norm = a.alloc({n, *c.q_lora_rank});
    d_q_a = a.alloc_matmul_operand({n, *c.q_lora_rank});
  }
}

namespace {
// The four layout moves between token-major projections and head-major attention inputs.
struct MlaLayouts {
  ops::HeadCopy q, k_nope, k_rope, v, o;
  MlaLayouts(const ModelConfig& c, int64_t batch, int64_t seq) {
    const int64_t h = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim,
                  dq = dn + dr, dv = c.v_head_dim;
    q = {batch, seq, h, dq, h * dq, dq, 0, dq, 0};
    k_nope = {batch, seq, h, dn, h * (dn + dv), dn + dv, 0, dq, 0};
    k_rope = {batch, seq, h, dr, dr, 0, 0, dq, dn};
    v = {batch, seq, h, dv, h * (dn + dv), dn + dv, dn, dv, 0};
    o = {batch, seq, h, dv, h * dv, dv, 0, dv, 0};
  }
};
}  // namespace

void mla_forward(const StepContext& ctx, const MlaWeights& w, const Tensor& x, MlaActivations& act,
                 Tensor& out) {
  profile::Phase phase("attention fwd (MLA, projections included)", x.device());
  const ModelConfig& c = *ctx.config;
  const int64_t n = ctx.rows(), h = c.num_attention_heads, dn = c.qk_nope_head_dim,
                dr = c.qk_rope_head_dim, r = c.kv_lora_rank;
  const float eps = float(c.rms_norm_eps);
  const Tensor &cos = ctx.rope->cos, &sin = ctx.rope->sin;
  const ops::RopeSlice q_rope{n, h, dn + dr, dn, dr}, k_rope{n, 1, dr, 0, dr};
  // Queries, rotated in place; token-major, the product writes the BF16 queries the attention
  // reads and only their rope columns are rotated (in float32 from the BF16 values, as a BF16
  // model's own rope computes), with no float32 copy of the queries at all.
  Tensor& q = act.token_major ? act.q_roped : act.q;
  if (c.q_lora_rank) {
    ops::linear_forward(x, w.q_a_proj.for_matmul(), act.q_a);
    ops::rmsnorm_forward(act.q_a, w.q_a_layernorm.value, eps, act.q_a_norm, act.q_a_rstd);
    ops::linear_forward(act.q_a_norm, w.q_b_proj.for_matmul(), q);
  } else {
    ops::linear_forward(x, w.q_proj.for_matmul(), q);
  }
  ops::rope_forward(q, q_rope, ctx.positions, cos, sin);
  // Keys and values from the compressed latent, plus the shared rope key.
  ops::linear_forward(x, w.kv_a_proj_with_mqa.for_matmul(), act.kv_a);
  ops::copy_columns(act.kv_a, r + dr, 0, r, act.c_kv, n);
  ops::copy_columns(act.kv_a, r + dr, r, dr, act.k_pe, n);
  ops::rmsnorm_forward(act.c_kv, w.kv_a_layernorm.value, eps, act.c_kv_norm, act.c_kv_rstd);
  if (act.token_major)
    ops::rope_forward_bf16(act.k_pe, k_rope, ctx.positions, cos, sin, act.k_pe_roped);
  else
    ops::rope_forward(act.k_pe, k_rope, ctx.positions, cos, sin);
  ops::linear_forward(act.c_kv_norm, w.kv_b_proj.for_matmul(), act.kv);
  if (act.token_major) {
    ops::mla_attention_forward(act.q_roped, act.kv, act.k_pe_roped,
                               attention_shape(c, ctx.batch, ctx.seq), ctx.rope->softmax_scale,
                               act.lse, act.o);
  } else {
    // Attention in head-major layout.
    MlaLayouts lay(c, ctx.batch, ctx.seq);
    ops::tokens_to_heads(act.q, act.q_heads, lay.q);
    ops::tokens_to_heads(act.kv, act.k_heads, lay.k_nope);
    ops::tokens_to_heads(act.k_pe, act.k_heads, lay.k_rope);
    ops::tokens_to_heads(act.kv, act.v_heads, lay.v);
    // q, k, v are BF16 in mixed precision: the tensor-core kernels; float32, the float32 ones.
    if (act.lse.defined()) {
      ops::attention_forward_lse(act.q_heads, act.k_heads, act.v_heads, ctx.rope->softmax_scale,
                                 act.lse, act.o_heads);
    } else {
      ops::attention_forward(act.q_heads, act.k_heads, act.v_heads, ctx.rope->softmax_scale,
                             act.probs, act.o_heads);
    }
    ops::heads_to_tokens(act.o_heads, act.o, lay.o, false);
  }
  ops::linear_forward(act.o, w.o_proj.for_matmul(), out);
}

namespace {
// The attention's backward through head-major copies: d_o moved to heads, the gradients moved
// back to token-major rows, the rope key's summed over the heads that shared it.
void attention_backward_head_major(const StepContext& ctx, const ModelConfig& c,
                                   const MlaActivations& act, MlaScratch& s) {
  MlaLayouts lay(c, ctx.batch, ctx.seq);
  ops::tokens_to_heads(s.d_o, s.d_o_heads, lay.o);
  if (act.lse.defined()) {
    ops::attention_backward_lse(act.q_heads, act.k_heads, act.v_heads, act.o_heads, act.lse,
                                s.d_o_heads, ctx.rope->softmax_scale, s.d_q_heads, s.d_k_heads,
                                s.d_v_heads);
  } else {
    ops::attention_backward(act.q_heads, act.k_heads, act.v_heads, act.probs, s.d_o_heads,
                            ctx.rope->softmax_scale, s.d_probs, s.d_q_heads, s.d_k_heads,
                            s.d_v_heads);
  }
  ops::heads_to_tokens(s.d_q_heads, s.d_q, lay.q, false);
  ops::heads_to_tokens(s.d_k_heads, s.d_kv, lay.k_nope, false);
  ops::heads_to_tokens(s.d_v_heads, s.d_kv, lay.v, false);
  ops::heads_to_tokens(s.d_k_heads, s.d_k_pe, lay.k_rope, false);
}
}  // namespace

void mla_backward(const StepContext& ctx, MlaWeights& w, const Tensor& x, const MlaActivations& act,
                  const Tensor& d_out, MlaScratch& s, Tensor& d_x) {
  profile::Phase phase("attention bwd (MLA, projections included)", x.device());
  const ModelConfig& c = *ctx.config;
  const int64_t n = ctx.rows(), h = c.num_attention_heads, dn = c.qk_nope_head_dim,
                dr = c.qk_rope_head_dim, r = c.kv_lora_rank;
  ops::linear_backward(act.o, w.o_proj.for_matmul(), d_out, &s.d_o, &w.o_proj.grad, false,
                       w.o_proj.accumulate_grad());
  if (act.token_major) {
    // d_kv's nope-key and value columns and the heads' summed d_k_pe, written in place; the
    // query gradient rotated back by the kernel that makes it, straight into the BF16 operand
    // of the query projection's backward (no float32 d_q written, rotated and read again).
    const ops::QueryRope rotate_back{ctx.positions, &ctx.rope->cos, &ctx.rope->sin};
    ops::mla_attention_backward(act.q_roped, act.kv, act.k_pe_roped, act.o, act.lse, s.d_o,
                                attention_shape(c, ctx.batch, ctx.seq), ctx.rope->softmax_scale,
                                s.d_q_proj, s.d_kv, s.d_k_pe, &rotate_back);
  } else {
    attention_backward_head_major(ctx, c, act, s);
    ops::rope_backward(s.d_q, {n, h, dn + dr, dn, dr}, ctx.positions, ctx.rope->cos, ctx.rope->sin);
  }
  const Tensor& d_q_proj = act.token_major ? s.d_q_proj : s.d_q;
  ops::rope_backward(s.d_k_pe, {n, 1, dr, 0, dr}, ctx.positions, ctx.rope->cos, ctx.rope->sin);
  // Latent path.
  ops::linear_backward(act.c_kv_norm, w.kv_b_proj.for_matmul(), s.d_kv, &s.d_c_kv_norm,
                       &w.kv_b_proj.grad, false, w.kv_b_proj.accumulate_grad());
  ops::rmsnorm_backward(act.c_kv, w.kv_a_layernorm.value, act.c_kv_rstd, s.d_c_kv_norm, s.d_c_kv,
                        w.kv_a_layernorm.grad, false, w.kv_a_layernorm.accumulate_grad());
  ops::put_columns(s.d_c_kv, r, s.d_kv_a, r + dr, 0, n);
  ops::put_columns(s.d_k_pe, dr, s.d_kv_a, r + dr, r, n);
  ops::linear_backward(x, w.kv_a_proj_with_mqa.for_matmul(), s.d_kv_a, &d_x,
                       &w.kv_a_proj_with_mqa.grad, false, w.kv_a_proj_with_mqa.accumulate_grad());
  // Query path.
  if (c.q_lora_rank) {
    ops::linear_backward(act.q_a_norm, w.q_b_proj.for_matmul(), d_q_proj, &s.d_q_a_norm,
                         &w.q_b_proj.grad, false, w.q_b_proj.accumulate_grad());
    ops::rmsnorm_backward(act.q_a, w.q_a_layernorm.value, act.q_a_rstd, s.d_q_a_norm, s.d_q_a,
                          w.q_a_layernorm.grad, false, w.q_a_layernorm.accumulate_grad());
    ops::linear_backward(x, w.q_a_proj.for_matmul(), s.d_q_a, &d_x, &w.q_a_proj.grad, true,
                         w.q_a_proj.accumulate_grad());
  } else {
    ops::linear_backward(x, w.q_proj.for_matmul(), d_q_proj, &d_x, &w.q_proj.grad, true,
                         w.q_proj.accumulate_grad());
  }
}

}  // namespace dsv3
