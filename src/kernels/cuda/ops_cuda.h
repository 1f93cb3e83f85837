#pragma once
// The CUDA implementations of the op table (kernels/ops.h), at the tensor level. The functions
// of dsv3::ops call these when their tensors live on a CUDA device; model code never calls
// them directly. Same contracts as kernels/ops.h, plus:
//   - every tensor (and every raw pointer: ids, targets, positions, gemm operands) of one call
//     points into device memory;
//   - float32 everywhere, except linear_forward/linear_backward, which also take BF16 x, W and
//     d_y (float32 accumulation; y and d_x BF16 or float32; d_w float32 master gradients), the
//     grouped linear ops, which take BF16 or float32 weights with float32 x, d_y, y, d_x (x and
//     d_y may be BF16 against BF16 weights), and the ops whose outputs only GEMMs or the
//     tensor-core attention read, which write BF16 when that output tensor is BF16 (rounded to
//     nearest even, exactly as `convert` would): rmsnorm y and d_x (not accumulated),
//     swiglu h and d_gate_up, moe_gather_rows out, moe_combine_backward d_y_perm, and the
//     layout moves (*_bf16 below);
//   - calls are asynchronous on the backend's stream, except cross_entropy and sum_squares
//     (return a value to the host: one wait each); cross_entropy_rows leaves its losses on the
//     device. Token ids, targets and positions are range-checked on the device
//     (kernels/cuda/index_errors.h): an index out of range is raised as a dsv3::Error at the
//     next wait (any device::copy_to_host or device::synchronize), not by the call.
//   - per-call scratch comes from kernels/cuda/scratch.h: no allocation in a steady state.
// Built only with the CUDA backend; in a CPU build every function fails with
// "CUDA device requested but dsv3 was built without CUDA" (kernels/cuda_ops_nocuda.cpp).
#include "kernels/ops.h"

namespace dsv3::cuda_ops {

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void linear_forward(const Tensor& x, const Tensor& w, Tensor& y);
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& d_y, Tensor* d_x, Tensor* d_w,
                     bool accumulate_d_x, bool accumulate_d_w);
void grouped_linear_forward(const Tensor& x, const std::vector<const Tensor*>& w,
                            const int64_t* offsets, Tensor& y);
void grouped_linear_backward(const Tensor& x, const std::vector<const Tensor*>& w,
                             const Tensor& d_y, const int64_t* offsets, Tensor* d_x,
                             const std::vector<Tensor*>& d_w, bool accumulate_d_w);
// With y_bf16: y float32 and its BF16 copy, in one pass.
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd,
                     Tensor* y_bf16);
// With d_x_bf16: d_x float32 and its BF16 copy, in one pass.
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& d_y,
                      Tensor& d_x, Tensor& d_w, bool accumulate_d_x, bool accumulate_d_w,
                      Tensor* d_x_bf16);
// With out_bf16: x is left as it is and its rotated rows go to out_bf16 (BF16, x's layout;
// params.h, Rope).
void rope(float* x, const ops::RopeSlice& s, const int32_t* positions, const Tensor& cos,
          const Tensor& sin, bool inverse, uint16_t* out_bf16 = nullptr);
// The rotation in place on BF16 rows (Rope::x_bf16).
void rope_bf16(uint16_t* x, const ops::RopeSlice& s, const int32_t* positions, const Tensor& cos,
               const Tensor& sin, bool inverse);
void swiglu_forward(const Tensor& gate_up, Tensor& h);
void swiglu_backward(const Tensor& gate_up, const Tensor& d_h, Tensor& d_gate_up);
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       Tensor& probs, Tensor& o);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
                        const Tensor& d_o, float scale, Tensor& scratch, Tensor& d_q, Tensor& d_k,
                        Tensor& d_v);
void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                           Tensor& lse, Tensor& o);
void attention_backward_lse(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                            const Tensor& lse, const Tensor& d_o, float scale, Tensor& d_q,
                            Tensor& d_k, Tensor& d_v);
double cross_entropy(const Tensor& logits, const int32_t* targets, float scale, Tensor* d_logits);
void cross_entropy_rows(const Tensor& logits, const int32_t* targets, float scale,
                        Tensor* d_logits, Tensor& row_loss);
void embedding_forward(const Tensor& table, const int32_t* ids, int64_t rows, Tensor& out);
void embedding_backward(const int32_t* ids, int64_t rows, const Tensor& d_out, Tensor& d_table);
void add(const Tensor& a, const Tensor& b, Tensor& out);
void convert(const Tensor& src, Tensor& dst);
// float32 -> BF16 for every pair, in one launch.
void f32_to_bf16_all(const std::vector<std::pair<const Tensor*, Tensor*>>& pairs);
bool mla_attention_token_major(const ops::MlaAttentionShape& s);
void mla_attention_forward(const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                           const ops::MlaAttentionShape& s, float scale, Tensor& lse, Tensor& o);
void mla_attention_backward(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const Tensor& o,
                            const Tensor& lse, const Tensor& d_o, const ops::MlaAttentionShape& s,
                            float scale, Tensor& d_q, Tensor& d_kv, Tensor& d_k_pe,
                            const ops::QueryRope* rotate_back);
void rope_to_bf16(const Tensor& x, const ops::RopeSlice& s, const int32_t* positions,
                  const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out);
void tokens_to_heads(const float* tokens, float* heads, const ops::HeadCopy& c);
void heads_to_tokens(const float* heads, float* tokens, const ops::HeadCopy& c, bool accumulate);
void copy_columns(const float* src, int64_t src_cols, int64_t offset, int64_t width, float* dst,
                  int64_t rows);
void put_columns(const float* src, int64_t width, float* dst, int64_t dst_cols, int64_t offset,
                 int64_t rows);
// The same moves into a BF16 destination (mixed precision: a buffer only tensor-core kernels
// and GEMMs read), each value rounded to nearest even; heads_to_tokens as a plain move only.
void tokens_to_heads_bf16(const float* tokens, uint16_t* heads, const ops::HeadCopy& c);
void heads_to_tokens_bf16(const float* heads, uint16_t* tokens, const ops::HeadCopy& c);
void put_columns_bf16(const float* src, int64_t width, uint16_t* dst, int64_t dst_cols,
                      int64_t offset, int64_t rows);
void moe_gather_rows(const Tensor& x, const int32_t* src_row, Tensor& out);
void moe_combine(const Tensor& y_perm, const int32_t* row_of, const Tensor& weights, Tensor& out,
                 const Tensor* residual);
void moe_combine_backward(const Tensor& d_out, const Tensor& y_perm, const int32_t* row_of,
                          const Tensor& weights, Tensor& d_y_perm, Tensor& d_weights);
void route_forward(const ops::RouteSpec& spec, const Tensor& logits, const Tensor* bias,
                   Tensor& scores, Tensor& indices, Tensor& weights, Tensor& score_sum,
                   Tensor& seq_counts, Tensor& seq_prob);
void route_backward(const ops::RouteSpec& spec, double alpha, const Tensor& scores,
                    const Tensor& indices, const Tensor& score_sum, const Tensor& seq_counts,
                    const Tensor& d_weights, Tensor& d_logits);
void moe_permute(const Tensor& indices, const Tensor& offsets, Tensor& permuted_token,
                 Tensor& permuted_row);
void moe_scatter_add(const Tensor& d_x_perm, const int32_t* row_of, int64_t k, Tensor& d_x);
// Returns to the host (a wait on the stream): the global norm is a host decision (clipping).
double sum_squares(const Tensor& g, double acc);
double sum_squares_all(const std::vector<const Tensor*>& gs);
void scale_inplace(Tensor& x, float factor);
void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamWScalars& s);
void adamw_update_all(const std::vector<ops::AdamWTensors>& ts, const ops::AdamWScalars& s);

// How many float32 operands the linear ops have rounded to BF16 themselves (against BF16
// weights) since the process started: each is a full pass over the operand that the op making
// it could have saved by writing BF16 (docs/cuda.md, mixed precision). A training step keeps
// this at zero; a test pins it.
uint64_t matmul_operand_conversions();

}  // namespace dsv3::cuda_ops
