#include "model/moe.h"

#include <cstring>

#include "kernels/ops.h"

namespace dsv3 {

namespace {
int64_t shared_width(const ModelConfig& c) {
  return int64_t(c.n_shared_experts) * c.moe_intermediate_size;
}
}  // namespace

MoeActivations::MoeActivations(Arena& a, const ModelConfig& c, int64_t batch, int64_t seq)
    : router(a, c, batch, seq) {
  const int64_t n = batch * seq, nk = n * c.num_experts_per_tok, d = c.hidden_size;
  expert_offsets = a.alloc({c.n_routed_experts + 1}, DType::I64);
  cursor = a.alloc({c.n_routed_experts}, DType::I64);
  permuted_token = a.alloc({nk}, DType::I32);
  permuted_row = a.alloc({nk}, DType::I32);
  x_perm = a.alloc({nk, d});
  experts = FfnActivations(a, nk, c.moe_intermediate_size);
  y_perm = a.alloc({nk, d});
  if (c.n_shared_experts > 0) shared = FfnActivations(a, n, shared_width(c));
}

MoeScratch::MoeScratch(Arena& a, const ModelConfig& c, int64_t batch, int64_t seq) {
  const int64_t n = batch * seq, nk = n * c.num_experts_per_tok, d = c.hidden_size;
  d_y_perm = a.alloc({nk, d});
  d_x_perm = a.alloc({nk, d});
  d_experts = FfnActivations(a, nk, c.moe_intermediate_size);
  if (c.n_shared_experts > 0) d_shared = FfnActivations(a, n, shared_width(c));
  d_weights = a.alloc({n, c.num_experts_per_tok});
  d_logits = a.alloc({n, c.n_routed_experts});
}

void moe_forward(const StepContext& ctx, const MoeWeights& w, const Tensor& x, MoeActivations& act,
                 Tensor& out) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = ctx.rows(), k = c.num_experts_per_tok, experts = c.n_routed_experts;
  router_forward(ctx, w, x, act.router);

  // Permute assignments into expert order (a counting sort, stable in token order).
  int64_t* off = act.expert_offsets.i64();
  const int32_t* idx = act.router.indices.i32();
  std::memset(off, 0, size_t(experts + 1) * sizeof(int64_t));
  for (int64_t a = 0; a < n * k; ++a) off[idx[a] + 1]++;
  for (int64_t e = 0; e < experts; ++e) off[e + 1] += off[e];
  int64_t* cursor = act.cursor.i64();
  std::memcpy(cursor, off, size_t(experts) * sizeof(int64_t));
  int32_t* tok = act.permuted_token.i32();
  int32_t* row_of = act.permuted_row.i32();
  for (int64_t a = 0; a < n * k; ++a) {
    int64_t r = cursor[idx[a]]++;
    tok[r] = int32_t(a / k);
    row_of[a] = int32_t(r);
  }
  ops::moe_gather_rows(x, tok, act.x_perm);

  // Each expert over its contiguous rows; experts run in parallel, each GEMM on one thread.
#pragma omp parallel for schedule(dynamic)
  for (int64_t e = 0; e < experts; ++e) {
    if (off[e + 1] == off[e]) continue;
    FfnActivations rows = act.experts.rows(off[e], off[e + 1]);
    Tensor y = act.y_perm.slice_rows(off[e], off[e + 1]);
    ffn_forward(w.experts[size_t(e)], act.x_perm.slice_rows(off[e], off[e + 1]), rows, y);
  }

  // Shared experts, then the weighted routed outputs.
  if (c.n_shared_experts > 0) {
    ffn_forward(w.shared, x, act.shared, out);
  } else {
    out.zero_();
  }
  ops::moe_combine(act.y_perm, row_of, act.router.weights, out);
}

void moe_backward(const StepContext& ctx, MoeWeights& w, const Tensor& x, const MoeActivations& act,
                  const Tensor& d_out, float alpha, MoeScratch& s, Tensor& d_x) {
  const ModelConfig& c = *ctx.config;
  const int64_t k = c.num_experts_per_tok, experts = c.n_routed_experts;
  const int64_t* off = act.expert_offsets.i64();
  const int32_t* row_of = act.permuted_row.i32();
  // Combine step: d(expert output) = weight * d_out; d(weight) = d_out . expert output.
  ops::moe_combine_backward(d_out, act.y_perm, row_of, act.router.weights, s.d_y_perm, s.d_weights);
#pragma omp parallel for schedule(dynamic)
  for (int64_t e = 0; e < experts; ++e) {
    if (off[e + 1] == off[e]) continue;
    FfnActivations rows = act.experts.rows(off[e], off[e + 1]);
    FfnActivations scratch = s.d_experts.rows(off[e], off[e + 1]);
    Tensor dx = s.d_x_perm.slice_rows(off[e], off[e + 1]);
    ffn_backward(w.experts[size_t(e)], act.x_perm.slice_rows(off[e], off[e + 1]), rows,
                 s.d_y_perm.slice_rows(off[e], off[e + 1]), scratch, dx, false);
  }
  // Shared experts write d_x first; routed inputs and the router add to it.
  if (c.n_shared_experts > 0) {
    ffn_backward(w.shared, x, act.shared, d_out, s.d_shared, d_x, false);
  } else {
    d_x.zero_();
  }
  ops::moe_scatter_add(s.d_x_perm, row_of, k, d_x);
  router_backward(ctx, w, x, act.router, s.d_weights, alpha, s.d_logits, d_x);
}

}  // namespace dsv3
