#pragma once
// The op table: every numeric operation the model uses, forward and backward, on float32.
// Model code calls only these; each op dispatches on the device of its tensors, so a CUDA
// backend adds implementations here without touching model code. Plain reference versions of
// each op (kernels/reference.h) are the oracle the fast ones are tested against.
//
// Conventions: row-major; "rows" is the leading (token) dimension; gradient outputs named
// d_* are overwritten unless the name says accumulate ("+="). Weight gradients take a flag:
// accumulated into over a step's micro-batches and the uses of a shared weight, overwritten by
// a step's first write (Param::accumulate_grad), which spares zeroing them beforehand.
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "model/expert_selection.h"

namespace dsv3::ops {

// ---- GEMM (kernels/cpu/gemm.cpp): C = alpha * op(A) op(B) + beta * C, row-major. ----
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Achieved float32 GEMM GFLOP/s on this machine with the current threads (a short, square
// measurement): the peak that MFU estimates are taken against.
double measure_gemm_gflops();

// y[rows, out] = x[rows, in] W[out, in]^T
void linear_forward(const Tensor& x, const Tensor& w, Tensor& y);
// d_x[rows, in] (= or +=) d_y W ; d_w[out, in] (+= or =) d_y^T x
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& d_y, Tensor* d_x, Tensor* d_w,
                     bool accumulate_d_x = false, bool accumulate_d_w = true);

// Grouped linear (the routed experts of an MoE layer): G weights, and the rows of x split into
// G contiguous groups, group g being rows [offsets[g], offsets[g + 1]) (offsets: host, G + 1
// values, offsets[0] = 0, offsets[G] = R). Groups with no rows are skipped. Equal to a loop of
// linear_forward/linear_backward over the groups, in one call: on a GPU one grouped GEMM for
// all groups instead of a launch (and, with BF16 weights, a BF16 rounding of x) per group.
// y[rows of g, out] = x[rows of g, in] W_g[out, in]^T; x [R, in], y [R, out]. With BF16 weights
// on a GPU, x may be BF16 and y (like the backward's d_x) float32 or BF16 (the float32 sums
// rounded once: mixed precision stores the routed experts' outputs and input gradients so).
void grouped_linear_forward(const Tensor& x, const std::vector<const Tensor*>& w,
                            const int64_t* offsets, Tensor& y);
// d_x[rows of g] = d_y[rows of g] W_g (overwritten; rows of empty groups do not exist);
// d_w[g] (+= or =) d_y[rows of g]^T x[rows of g] (float32; an empty group's d_w is untouched
// when accumulated into, zeroed when overwritten). d_x may be null; d_w has G entries.
void grouped_linear_backward(const Tensor& x, const std::vector<const Tensor*>& w,
                             const Tensor& d_y, const int64_t* offsets, Tensor* d_x,
                             const std::vector<Tensor*>& d_w, bool accumulate_d_w = true);

// ---- RMSNorm (kernels/cpu/rmsnorm.cpp): y = x * rsqrt(mean(x^2) + eps) * w ----
// rstd[rows] is saved for the backward pass.
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
// The same with y float32 and its values also written to y_bf16 rounded to BF16, in the same
// pass (one launch on a GPU): a copy for the matrix products that read y beside float32
// readers, bit for bit what a conversion of y would give. An undefined y_bf16 (no copy kept:
// Arena::alloc_matmul_copy) writes y alone.
void rmsnorm_forward_with_bf16_copy(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                                    Tensor& rstd, Tensor& y_bf16);
// d_x (= or +=), d_w (+= or =)
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& d_y,
                      Tensor& d_x, Tensor& d_w, bool accumulate_d_x = false,
                      bool accumulate_d_w = true);
// The same with d_x float32 and its values (after any accumulation) also written to d_x_bf16
// rounded to BF16, in the same pass: the residual stream's gradient for the products that read
// it beside float32 readers, bit for bit what a conversion of d_x would give. An undefined
// d_x_bf16 writes d_x alone.
void rmsnorm_backward_with_bf16_copy(const Tensor& x, const Tensor& w, const Tensor& rstd,
                                     const Tensor& d_y, Tensor& d_x, Tensor& d_w,
                                     bool accumulate_d_x, bool accumulate_d_w, Tensor& d_x_bf16);

// ---- RoPE (kernels/cpu/rope.cpp): rotate interleaved pairs (x[2i], x[2i+1]) in place. ----
// x is [rows, heads, row_stride] and the rotated part is the `rope_dim` values starting at
// `offset` of each head; row r uses position positions[r]; cos/sin are [max_pos, rope_dim/2].
struct RopeSlice {
  int64_t rows, heads, head_stride, offset, rope_dim;
};
void rope_forward(float* x, const RopeSlice& s, const int32_t* positions, const Tensor& cos,
                  const Tensor& sin);
// The inverse rotation (the backward pass of a rotation is its transpose).
void rope_backward(float* d_x, const RopeSlice& s, const int32_t* positions, const Tensor& cos,
                   const Tensor& sin);
// Tensor forms (x: the whole buffer the slice describes): float32 tensors take the pointer
// versions above; float64 ones (the float64 step) the reference rotation, with float64 tables;
// BF16 ones on a GPU (MLA's queries in mixed precision) are rotated in place, each pair in
// float32 from its BF16 values and rounded back, the other columns untouched.
void rope_forward(Tensor& x, const RopeSlice& s, const int32_t* positions, const Tensor& cos,
                  const Tensor& sin);
void rope_backward(Tensor& d_x, const RopeSlice& s, const int32_t* positions, const Tensor& cos,
                   const Tensor& sin);

// ---- SwiGLU (kernels/cpu/swiglu.cpp): h = silu(g) * u over [rows, width] ----
// gate_up is [rows, 2*width]: gate in the first half of each row, up in the second. On a GPU
// each input and output may also be BF16 (inputs widened exactly, float32 arithmetic).
void swiglu_forward(const Tensor& gate_up, Tensor& h);
void swiglu_backward(const Tensor& gate_up, const Tensor& d_h, Tensor& d_gate_up);

// ---- Causal attention (kernels/cpu/attention.cpp) ----
// q, k: [batch, heads, seq, qk_dim]; v: [batch, heads, seq, v_dim]; o: [batch, heads, seq, v_dim]
// probs: [batch, heads, seq, seq] softmax probabilities saved for backward (upper part zero).
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                       Tensor& probs, Tensor& o);
// d_q, d_k, d_v overwritten; scratch: [batch, heads, seq, seq]
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
                        const Tensor& d_o, double scale, Tensor& scratch, Tensor& d_q, Tensor& d_k,
                        Tensor& d_v);
// The same attention without the [seq, seq] probabilities: the forward saves lse [batch, heads,
// seq], the natural-log log-sum-exp of each query row's scaled scores (scale q_i . k_j over
// j <= i), and the backward recomputes P = exp(scale q_i . k_j - lse_i) from q, k and lse. Memory
// beyond the operands is O(seq) per row block, so long sequences fit where probs would not.
void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                           Tensor& lse, Tensor& o);
// o and lse are the forward's outputs; d_q, d_k, d_v overwritten.
void attention_backward_lse(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                            const Tensor& lse, const Tensor& d_o, double scale, Tensor& d_q,
                            Tensor& d_k, Tensor& d_v);

// ---- Cross-entropy (kernels/cpu/cross_entropy.cpp) ----
// logits [rows, vocab]; targets[rows] (-1: position left out). Returns the summed loss over
// counted rows. When d_logits is given, writes scale * d(sum loss)/d(logits) (zero rows for
// left-out positions); d_logits may alias logits (in-place).
double cross_entropy(const Tensor& logits, const int32_t* targets, double scale, Tensor* d_logits);
// The same, with each row's loss written to row_loss ([rows] float64 on the logits' device; 0
// for left-out rows) instead of summed: on a GPU nothing comes back to the host, so a training
// step reads all its losses with one wait at its end. Summed in row order, the row losses give
// cross_entropy's total exactly.
void cross_entropy_rows(const Tensor& logits, const int32_t* targets, double scale,
                        Tensor* d_logits, Tensor& row_loss);

// ---- Embedding (kernels/cpu/embedding.cpp) ----
// An id of -1 stands for "no token": a zero row forward, no gradient.
void embedding_forward(const Tensor& table, const int32_t* ids, int64_t rows, Tensor& out);
// d_table[ids[r]] += d_out[r] (a scatter: accumulated into only).
void embedding_backward(const int32_t* ids, int64_t rows, const Tensor& d_out, Tensor& d_table);

// ---- Elementwise ----
// out = a + b, elementwise (float32 or float64); out may be a or b. Out of place, a residual
// stream's sum is one pass (a copy and then y += x were two).
void add(const Tensor& a, const Tensor& b, Tensor& out);
// dst = src converted between float32 and bfloat16 (round to nearest even; NaN stays NaN),
// or copied when the dtypes match. Same element count, same device.
void convert(const Tensor& src, Tensor& dst);
// convert for each (src, dst) pair: the same values, with the float32 -> BF16 pairs of a GPU in
// one launch (a model's BF16 weight copies after each optimizer step).
void convert_all(const std::vector<std::pair<const Tensor*, Tensor*>>& pairs);
void scale_inplace(Tensor& x, float factor);  // x *= factor

// ---- MoE data movement (kernels/cpu/moe.cpp) ----
// N tokens, K experts per token, d the hidden size. Token t's j-th assignment is at flat index
// t*K + j of the router's outputs; the permutation into expert order puts it at permuted row
// row_of[t*K + j]. Index arrays live on the same device as the tensors. The sums below run over
// j = 0 .. K-1 in order, so a result never depends on the thread count.
//
// out[r, :] = x[src_row[r], :] for each of the m rows of out; x [rows, d], src_row [m],
// out [m, d] (overwritten).
void moe_gather_rows(const Tensor& x, const int32_t* src_row, Tensor& out);
// out[t, :] += sum_j weights[t, j] * y_perm[row_of[t*K + j], :]
// y_perm [N*K, d], row_of [N*K], weights [N, K], out [N, d] (accumulated into). On a GPU y_perm
// may be BF16 here and in the backward (d_y_perm too), d_x_perm in the scatter-add: read widened
// exactly, summed in float32.
// With a residual [N, d] (not out), out[t, :] = residual[t, :] + (that sum) after it, in the
// same pass: the MoE block's output, bit for bit what add(residual, out) would then give,
// without a pass over out to read it back.
void moe_combine(const Tensor& y_perm, const int32_t* row_of, const Tensor& weights, Tensor& out,
                 const Tensor* residual = nullptr);
// The combine's backward: d_y_perm[row_of[t*K + j], :] = weights[t, j] * d_out[t, :] and
// d_weights[t, j] = d_out[t, :] . y_perm[row_of[t*K + j], :]. Both overwritten; rows of
// d_y_perm that row_of does not name are left as they are (a permutation names them all).
void moe_combine_backward(const Tensor& d_out, const Tensor& y_perm, const int32_t* row_of,
                          const Tensor& weights, Tensor& d_y_perm, Tensor& d_weights);
// The gather's backward when row_of is the inverse of the gather's src_row:
// d_x[t, :] += sum_j d_x_perm[row_of[t*K + j], :]; d_x_perm [N*K, d], d_x [N, d].
void moe_scatter_add(const Tensor& d_x_perm, const int32_t* row_of, int64_t k, Tensor& d_x);

// ---- MoE routing (kernels/cpu/router.cpp; model/router.h says what each quantity is) ----
// N tokens in B sequences of `seq`, E routed experts, K chosen per token. Floating tensors are
// float32, or float64 for the float64 step; the counts are float32 (exact integers) and the
// sequence sums float64 on every device.
struct RouteSpec {
  ExpertSelection select;  // experts, groups, k, ...
  bool sigmoid = true;     // scores: sigmoid, else softmax over the experts
  bool norm_topk = true;   // gating weights normalised over the chosen experts
  double scaling = 1.0;    // routed_scaling_factor
  int64_t seq = 1;         // tokens per sequence
};
// From logits [N, E] and the correction bias [E] (float32; null: none): scores [N, E],
// indices [N, K] (int32, ascending), weights [N, K] (from the unbiased scores), score_sum [N]
// (each token's sum of scores), seq_counts [B, E] (float32: tokens of sequence b routed to e) and
// seq_prob [B, E] (float64: sum over sequence b's tokens of score / score_sum, in token order).
// Every output is overwritten.
void route_forward(const RouteSpec& spec, const Tensor& logits, const Tensor* bias,
                   Tensor& scores, Tensor& indices, Tensor& weights, Tensor& score_sum,
                   Tensor& seq_counts, Tensor& seq_prob);
// d_logits [N, E] (overwritten) from d_weights [N, K] and, with alpha != 0, the sequence-wise
// balance term alpha * sum_b sum_e f_{b,e} P_{b,e} / B.
void route_backward(const RouteSpec& spec, double alpha, const Tensor& scores,
                    const Tensor& indices, const Tensor& score_sum, const Tensor& seq_counts,
                    const Tensor& d_weights, Tensor& d_logits);
// The permutation into expert order, stable in token order: offsets [E + 1] (int64, the
// indices' device: offsets[e] is expert e's first permuted row) from the counts of indices
// [N*K]; permuted_token[r] (int32 [N*K]) is the token of permuted row r, permuted_row[a] the
// permuted row of assignment a.
void moe_permute(const Tensor& indices, const Tensor& offsets, Tensor& permuted_token,
                 Tensor& permuted_row);

// ---- Optimizer (kernels/cpu/optimizer.cpp) ----
// acc + sum of g[i]^2 in float64. The elements are split into a fixed number of chunks whose
// partial sums are added to `acc` in order: the result does not depend on the thread count or
// the run (bit-exact resume), and threading `acc` through the tensors of a model keeps one
// sequence of additions for the whole global norm. The CUDA backend uses its own fixed split,
// equally deterministic, so the two backends agree to float64 rounding, not bit for bit.
double sum_squares(const Tensor& g, double acc);
// The same as threading sum_squares through `gs` in order from 0 (bit for bit), with one wait
// on a GPU instead of one per tensor: the global gradient norm of a model of many tensors.
double sum_squares_all(const std::vector<const Tensor*>& gs);
// One AdamW step's per-tensor constants, computed in double by the optimizer and rounded once.
struct AdamWScalars {
  float decay;         // 1 - lr * weight_decay, or 1 for tensors without decay
  float b1, b2;        // beta1, beta2
  float clip_scale;    // multiplies the gradient (global-norm clipping)
  float step_size;     // lr / (1 - beta1^step)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^step)
  float eps;
};
// With gc = g * clip_scale: m = b1 m + (1 - b1) gc; v = b2 v + (1 - b2) gc^2;
// p = p decay - step_size m / (sqrt(v) inv_sqrt_bc2 + eps). p, m, v updated in place.
void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const AdamWScalars& s);
// adamw_update for every tensor of a model, each with its own decay (s.decay is not read): the
// same values bit for bit, in one launch on a GPU instead of one per tensor.
struct AdamWTensors {
  Tensor* p;
  const Tensor* g;
  Tensor* m;
  Tensor* v;
  float decay;
};
void adamw_update_all(const std::vector<AdamWTensors>& ts, const AdamWScalars& s);

}  // namespace dsv3::ops

namespace dsv3::ops {
// ---- Head layout changes (kernels/cpu/heads.cpp) ----
// Moves `width` values per (token, head) between a token-major buffer (row per token of a
// [batch, seq] window, heads inside the row) and a head-major buffer [batch, heads, seq, head_dim].
struct HeadCopy {
  int64_t batch, seq, heads, width;
  int64_t tok_row_stride;   // floats between consecutive tokens in the token-major buffer
  int64_t tok_head_stride;  // floats between heads there (0: one vector shared by all heads)
  int64_t tok_offset;       // first column within a head's slot
  int64_t head_dim;         // row length of the head-major buffer
  int64_t head_offset;      // first column within that row
};
void tokens_to_heads(const float* tokens, float* heads, const HeadCopy& c);
// With tok_head_stride 0 and accumulate, the heads' values are summed into the shared vector.
void heads_to_tokens(const float* heads, float* tokens, const HeadCopy& c, bool accumulate);
// Copies a column window [offset, offset + width) of each row of src [rows, src_cols] into
// dst [rows, width] (or back, with accumulate).
void copy_columns(const float* src, int64_t src_cols, int64_t offset, int64_t width, float* dst,
                  int64_t rows);
void put_columns(const float* src, int64_t width, float* dst, int64_t dst_cols, int64_t offset,
                 int64_t rows);
// Tensor forms of the four moves: float32 tensors take the pointer versions above (and their
// device dispatch), float64 ones the reference moves. A BF16 destination (mixed precision, GPU
// only) gets the float32 values rounded to nearest even, for tokens_to_heads, put_columns and
// plain (not accumulating, not shared) heads_to_tokens moves.
void tokens_to_heads(const Tensor& tokens, Tensor& heads, const HeadCopy& c);
void heads_to_tokens(const Tensor& heads, Tensor& tokens, const HeadCopy& c, bool accumulate);
void copy_columns(const Tensor& src, int64_t src_cols, int64_t offset, int64_t width, Tensor& dst,
                  int64_t rows);
void put_columns(const Tensor& src, int64_t width, Tensor& dst, int64_t dst_cols, int64_t offset,
                 int64_t rows);

// ---- MLA attention on the token-major projections (GPU, BF16: kernels/cuda/dispatch_mla.cpp) ----
// The BF16 attention kernels read MLA's projections where they lie, instead of head-major
// copies made by the moves above (and write their outputs the same way). N = batch x seq rows:
//   q    [N, H*(nope+rope)] BF16, rope applied (rope_forward_bf16),
//   kv   [N, H*(nope+v)] BF16, each head's nope key then its value (kv_b_proj's output),
//   k_pe [N, rope] BF16, the rope key all heads share (rope applied);
//   o    [N, H*v] BF16 (o_proj's input), lse [batch, H, seq] float32.
// The values are those of attention_forward_lse / attention_backward_lse on head-major BF16
// copies (q_h = q's head h, k_h = [kv's nope of head h, k_pe], v_h = kv's v of head h), bit
// for bit, with o stored in BF16 and the backward's D = rowsum(dO o) taken from that BF16 o.
// On the CPU, and on a GPU for dims these kernels do not take, MLA moves the rows instead.
struct MlaAttentionShape {
  int64_t batch, seq, heads, nope, rope, v;
};
// Whether the current device runs these dims on the token-major kernels (every dim a multiple
// of 8, nope + rope and v within the BF16 backward's capacity). False without the CUDA backend.
bool mla_attention_token_major(const MlaAttentionShape& s);
void mla_attention_forward(const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                           const MlaAttentionShape& s, double scale, Tensor& lse, Tensor& o);
// The query rope that mla_attention_backward may undo on d_q: each head's columns [nope,
// nope + rope) rotated at the row's position with these tables (rope_forward's).
struct QueryRope {
  const int32_t* positions;  // [N] on the device
  const Tensor* cos;
  const Tensor* sin;
};
// From the forward's o and lse and the output gradient d_o [N, H*v] BF16 (all overwritten):
// d_q [N, H*(nope+rope)] float32, d_kv [N, H*(nope+v)] BF16, and d_k_pe [N, rope] float32,
// the heads' rope-key gradients summed in head order (as heads_to_tokens sums a shared vector).
// With rotate_back, d_q is BF16 instead and already rotated back: bit for bit what
// rope_backward_bf16 would make of the float32 d_q (q_b_proj's output gradient, with no
// float32 d_q written and read again in between).
void mla_attention_backward(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const Tensor& o,
                            const Tensor& lse, const Tensor& d_o, const MlaAttentionShape& s,
                            double scale, Tensor& d_q, Tensor& d_kv, Tensor& d_k_pe,
                            const QueryRope* rotate_back = nullptr);
// RoPE's forward rotation of x (float32, left unchanged) into out (BF16, the same [rows, heads,
// head_stride] layout): every column of each head, rotated or not, rounded to nearest even,
// bit for bit what rope_forward then a conversion would give. GPU only.
void rope_forward_bf16(const Tensor& x, const RopeSlice& s, const int32_t* positions,
                       const Tensor& cos, const Tensor& sin, Tensor& out);
// The same for the inverse rotation: bit for bit rope_backward then a conversion; what
// mla_attention_backward's rotate_back writes (which the training step uses, so that no
// float32 query gradient is written at all). GPU only.
void rope_backward_bf16(const Tensor& d_x, const RopeSlice& s, const int32_t* positions,
                        const Tensor& cos, const Tensor& sin, Tensor& out);
}  // namespace dsv3::ops
