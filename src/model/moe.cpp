#include "model/moe.h"

#include <optional>
#include <vector>

#include "core/profile.h"
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
  auto [off_host, off] = a.alloc_mirrored({c.n_routed_experts + 1}, DType::I64);
  expert_offsets = off_host, device_offsets = off;
  permuted_token = a.alloc({nk}, DType::I32);
  permuted_row = a.alloc({nk}, DType::I32);
  x_perm = a.alloc_matmul_operand({nk, d});  // read only by the experts' GEMMs
  experts = FfnActivations(a, nk, c.moe_intermediate_size);
  y_perm = a.alloc_ffn_intermediate({nk, d});  // read by the combine, forward and backward
  if (c.n_shared_experts > 0) shared = FfnActivations(a, n, shared_width(c));
}

MoeScratch::MoeScratch(Arena& a, const ModelConfig& c, int64_t batch, int64_t seq)
    : router(a, c, batch, seq) {
  const int64_t n = batch * seq, nk = n * c.num_experts_per_tok, d = c.hidden_size;
  d_y_perm = a.alloc_matmul_operand({nk, d});  // read only by the experts' backward GEMMs
  d_x_perm = a.alloc_ffn_intermediate({nk, d});  // read by the scatter-add
  d_experts = FfnActivations(a, nk, c.moe_intermediate_size, FfnActivations::Role::Gradients);
  if (c.n_shared_experts > 0)
    d_shared = FfnActivations(a, n, shared_width(c), FfnActivations::Role::Gradients);
}

void moe_forward(const StepContext& ctx, const MoeWeights& w, const Tensor& x, const Tensor& x_mm,
                 MoeActivations& act, Tensor& out, const Tensor* residual) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = ctx.rows(), k = c.num_experts_per_tok, experts = c.n_routed_experts;
  std::optional<profile::Phase> phase;
  phase.emplace("moe fwd: routing + permutation", x.device());
  router_forward(ctx, w, x, act.router);

  // Permute assignments into expert order (a counting sort, stable in token order): the
  // offsets from the loads the router brought to the host, the permutation on the device.
  int64_t* off = act.expert_offsets.i64();
  off[0] = 0;
  for (int64_t e = 0; e < experts; ++e) off[e + 1] = off[e] + int64_t(act.router.load.f32()[e]);
  DSV3_CHECK(off[experts] == n * k, "moe: the router counted {} assignments, not {}",
             off[experts], n * k);
  act.device_offsets.copy_from(act.expert_offsets);  // no-op on the CPU
  ops::moe_permute(act.router.indices, act.device_offsets, act.permuted_token, act.permuted_row);
  phase.emplace("moe fwd: routed experts", x.device());
  ops::moe_gather_rows(x_mm, act.permuted_token.i32(), act.x_perm);

  // The routed experts, each over its contiguous rows: one grouped GEMM per projection for all
  // experts, and one SwiGLU over all N*K rows (row r's activation depends on row r only). On
  // the CPU the groups run in parallel, each GEMM on one thread; on a GPU each projection is
  // one cuBLAS call instead of a GEMM (and a BF16 rounding of its input) per expert.
  std::vector<const Tensor*> gate_up(static_cast<size_t>(experts)), down(gate_up.size());
  for (size_t e = 0; e < size_t(experts); ++e) {
    gate_up[e] = &w.experts[e].gate_up.for_matmul();
    down[e] = &w.experts[e].down.for_matmul();
  }
  // The buffers hold the rows of the largest batch; this step uses the first N*K.
  FfnActivations routed = act.experts.rows(0, n * k);
  Tensor y_perm = act.y_perm.slice_rows(0, n * k);
  ops::grouped_linear_forward(act.x_perm.slice_rows(0, n * k), gate_up, off,
                              routed.gate_up);                 // [N*K, 2*width]
  ops::swiglu_forward(routed.gate_up, routed.act);             // [N*K, width]
  ops::grouped_linear_forward(routed.act, down, off, y_perm);  // [N*K, d]

  // Shared experts, then the weighted routed outputs (and the residual).
  phase.emplace("moe fwd: shared + combine", x.device());
  if (c.n_shared_experts > 0) {
    ffn_forward(w.shared, x_mm, act.shared, out);
  } else {
    out.zero_();
  }
  ops::moe_combine(act.y_perm, act.permuted_row.i32(), act.router.weights, out, residual);
}

void moe_backward(const StepContext& ctx, MoeWeights& w, const Tensor& x, const Tensor& x_mm,
                  const MoeActivations& act, const Tensor& d_out, const Tensor& d_out_mm,
                  double alpha, MoeScratch& s, Tensor& d_x) {
  const ModelConfig& c = *ctx.config;
  const int64_t k = c.num_experts_per_tok, experts = c.n_routed_experts;
  const int64_t* off = act.expert_offsets.i64();
  const int32_t* row_of = act.permuted_row.i32();
  std::optional<profile::Phase> phase;
  phase.emplace("moe bwd: combine", x.device());
  // Combine step: d(expert output) = weight * d_out; d(weight) = d_out . expert output.
  ops::moe_combine_backward(d_out, act.y_perm, row_of, act.router.weights, s.d_y_perm,
                            s.router.d_weights);
  // The routed experts' backward mirrors the forward: down, SwiGLU, gate_up, each one call
  // over all experts' rows, which writes every expert's weight gradients (an expert without
  // rows gets zeros when they are overwritten). So the experts' gradients are written
  // together, and either all of them are added to or none.
  std::vector<const Tensor*> gate_up(static_cast<size_t>(experts)), down(gate_up.size());
  std::vector<Tensor*> d_gate_up(gate_up.size()), d_down(gate_up.size());
  const bool accumulate = w.experts[0].gate_up.grad_written;
  for (size_t e = 0; e < size_t(experts); ++e) {
    SwigluWeights& expert = w.experts[e];
    gate_up[e] = &expert.gate_up.for_matmul();
    down[e] = &expert.down.for_matmul();
    d_gate_up[e] = &expert.gate_up.grad;
    d_down[e] = &expert.down.grad;
    const bool up_written = expert.gate_up.accumulate_grad();
    const bool down_written = expert.down.accumulate_grad();
    DSV3_CHECK(up_written == accumulate && down_written == accumulate,
               "moe_backward: expert {}'s gradients are written and expert 0's not, or the "
               "reverse (the experts' gradients are written together)",
               e);
  }
  phase.emplace("moe bwd: routed experts", x.device());
  const int64_t nk = off[experts];  // N*K: the rows of this step
  const FfnActivations routed = act.experts.rows(0, nk);
  FfnActivations d_routed = s.d_experts.rows(0, nk);
  Tensor d_x_perm = s.d_x_perm.slice_rows(0, nk);
  ops::grouped_linear_backward(routed.act, down, s.d_y_perm.slice_rows(0, nk), off, &d_routed.act,
                               d_down, accumulate);
  ops::swiglu_backward(routed.gate_up, d_routed.act, d_routed.gate_up);
  ops::grouped_linear_backward(act.x_perm.slice_rows(0, nk), gate_up, d_routed.gate_up, off,
                               &d_x_perm, d_gate_up, accumulate);
  // Shared experts write d_x first; routed inputs and the router add to it.
  phase.emplace("moe bwd: shared", x.device());
  if (c.n_shared_experts > 0) {
    ffn_backward(w.shared, x_mm, act.shared, d_out_mm, s.d_shared, d_x, false);
  } else {
    d_x.zero_();
  }
  phase.emplace("moe bwd: scatter + router", x.device());
  ops::moe_scatter_add(s.d_x_perm, row_of, k, d_x);
  router_backward(ctx, w, x, act.router, alpha, s.router, d_x);
}

}  // namespace dsv3
