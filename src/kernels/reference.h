#pragma once
// The oracle: plain, obviously-correct loop versions of every op in kernels/ops.h. No OpenMP,
// no BLAS, no cleverness; every sum is accumulated in float64. The fast kernels (CPU now, CUDA
// later) are tested against these on random shapes (kernels/op_cases.h, tests/ops/), and the
// gradient checks differentiate the float64 instantiations by central differences.
//
// Two layers:
//  - dsv3::ref::<op>(...) with the same signatures and semantics as dsv3::ops::<op> (float32
//    tensors in and out, float64 inside);
//  - dsv3::ref::t::<op><T>(...) over raw arrays of T = float or double, which the first layer
//    calls with T = float and the gradient checks call with T = double.
#include <cstdint>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace dsv3::ref {

// Runs fn(T{}) with T = double for a float64 tensor and T = float otherwise: one body serves the
// float32 oracle and the float64 training step (ops dispatch F64 tensors here).
template <typename Fn>
decltype(auto) with_real(const Tensor& probe, Fn&& fn) {
  if (probe.dtype() == DType::F64) return fn(double{});
  return fn(float{});
}

// ---- Same signatures as dsv3::ops ----
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void linear_forward(const Tensor& x, const Tensor& w, Tensor& y);
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& d_y, Tensor* d_x, Tensor* d_w,
                     bool accumulate_d_x = false, bool accumulate_d_w = true);
void grouped_linear_forward(const Tensor& x, const std::vector<const Tensor*>& w,
                            const int64_t* offsets, Tensor& y);
void grouped_linear_backward(const Tensor& x, const std::vector<const Tensor*>& w,
                             const Tensor& d_y, const int64_t* offsets, Tensor* d_x,
                             const std::vector<Tensor*>& d_w, bool accumulate_d_w = true);
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& d_y,
                      Tensor& d_x, Tensor& d_w, bool accumulate_d_x = false,
                      bool accumulate_d_w = true);
void rope_forward(float* x, const ops::RopeSlice& s, const int32_t* positions, const Tensor& cos,
                  const Tensor& sin);
void rope_backward(float* d_x, const ops::RopeSlice& s, const int32_t* positions, const Tensor& cos,
                   const Tensor& sin);
void swiglu_forward(const Tensor& gate_up, Tensor& h);
void swiglu_backward(const Tensor& gate_up, const Tensor& d_h, Tensor& d_gate_up);
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                       Tensor& probs, Tensor& o);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
                        const Tensor& d_o, double scale, Tensor& scratch, Tensor& d_q, Tensor& d_k,
                        Tensor& d_v);
void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                           Tensor& lse, Tensor& o);
void attention_backward_lse(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                            const Tensor& lse, const Tensor& d_o, double scale, Tensor& d_q,
                            Tensor& d_k, Tensor& d_v);
double cross_entropy(const Tensor& logits, const int32_t* targets, double scale, Tensor* d_logits);
// The same, each row's loss also into row_loss [rows].
double cross_entropy(const Tensor& logits, const int32_t* targets, double scale, Tensor* d_logits,
                     double* row_loss);
void cross_entropy_rows(const Tensor& logits, const int32_t* targets, double scale,
                        Tensor* d_logits, Tensor& row_loss);
void embedding_forward(const Tensor& table, const int32_t* ids, int64_t rows, Tensor& out);
void embedding_backward(const int32_t* ids, int64_t rows, const Tensor& d_out, Tensor& d_table);
void add(const Tensor& a, const Tensor& b, Tensor& out);
void tokens_to_heads(const float* tokens, float* heads, const ops::HeadCopy& c);
void heads_to_tokens(const float* heads, float* tokens, const ops::HeadCopy& c, bool accumulate);
void copy_columns(const float* src, int64_t src_cols, int64_t offset, int64_t width, float* dst,
                  int64_t rows);
void put_columns(const float* src, int64_t width, float* dst, int64_t dst_cols, int64_t offset,
                 int64_t rows);
void moe_gather_rows(const Tensor& x, const int32_t* src_row, Tensor& out);
void moe_combine(const Tensor& y_perm, const int32_t* row_of, const Tensor& weights, Tensor& out,
                 const Tensor* residual = nullptr);
void moe_combine_backward(const Tensor& d_out, const Tensor& y_perm, const int32_t* row_of,
                          const Tensor& weights, Tensor& d_y_perm, Tensor& d_weights);
void moe_scatter_add(const Tensor& d_x_perm, const int32_t* row_of, int64_t k, Tensor& d_x);
double sum_squares(const Tensor& g, double acc);
void scale_inplace(Tensor& x, float factor);
void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamWScalars& s);

// ---- Typed cores (T = float or double; explicitly instantiated for both) ----
namespace t {

// C[m, n] = alpha op(A) op(B) + beta C (beta 0: C is not read).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, double beta, T* c, int64_t ldc);
// y[rows, out] = x[rows, in] W[out, in]^T
template <typename T>
void linear_forward(const T* x, const T* w, int64_t rows, int64_t in, int64_t out, T* y);
template <typename T>
void linear_backward(const T* x, const T* w, const T* d_y, int64_t rows, int64_t in, int64_t out,
                     T* d_x, T* d_w, bool accumulate_d_x, bool accumulate_d_w);

template <typename T>
void rmsnorm_forward(const T* x, const T* w, int64_t rows, int64_t dim, double eps, T* y, T* rstd);
template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* rstd, const T* d_y, int64_t rows,
                      int64_t dim, T* d_x, T* d_w, bool accumulate_d_x, bool accumulate_d_w);

// cos/sin are [max_pos, rope_dim / 2] of type U (float tables, or double ones for the float64
// step); inverse rotates by -angle (the backward pass).
template <typename T, typename U>
void rope(T* x, const ops::RopeSlice& s, const int32_t* positions, const U* cos, const U* sin,
          int64_t max_pos, bool inverse);

// The layout moves of kernels/ops.h over T = float or double.
template <typename T>
void tokens_to_heads(const T* tokens, T* heads, const ops::HeadCopy& c);
template <typename T>
void heads_to_tokens(const T* heads, T* tokens, const ops::HeadCopy& c, bool accumulate);
template <typename T>
void copy_columns(const T* src, int64_t src_cols, int64_t offset, int64_t width, T* dst,
                  int64_t rows);
template <typename T>
void put_columns(const T* src, int64_t width, T* dst, int64_t dst_cols, int64_t offset,
                 int64_t rows);

template <typename T>
void swiglu_forward(const T* gate_up, int64_t rows, int64_t width, T* h);
template <typename T>
void swiglu_backward(const T* gate_up, const T* d_h, int64_t rows, int64_t width, T* d_gate_up);

// q, k [bh, seq, dq]; v, o [bh, seq, dv]; probs [bh, seq, seq] (bh = batch * heads).
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, int64_t bh, int64_t seq, int64_t dq,
                       int64_t dv, double scale, T* probs, T* o);
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* probs, const T* d_o,
                        int64_t bh, int64_t seq, int64_t dq, int64_t dv, double scale, T* d_q,
                        T* d_k, T* d_v);
// The lse form: lse [bh, seq] instead of probs; the backward recomputes P from q, k and lse.
template <typename T>
void attention_forward_lse(const T* q, const T* k, const T* v, int64_t bh, int64_t seq, int64_t dq,
                           int64_t dv, double scale, T* lse, T* o);
template <typename T>
void attention_backward_lse(const T* q, const T* k, const T* v, const T* o, const T* lse,
                            const T* d_o, int64_t bh, int64_t seq, int64_t dq, int64_t dv,
                            double scale, T* d_q, T* d_k, T* d_v);

// row_loss (optional): each row's loss (0 for left-out rows); the total is their sum in order.
template <typename T>
double cross_entropy(const T* logits, int64_t rows, int64_t vocab, const int32_t* targets,
                     double scale, T* d_logits, double* row_loss = nullptr);

template <typename T>
void embedding_forward(const T* table, int64_t vocab, int64_t dim, const int32_t* ids, int64_t rows,
                       T* out);
template <typename T>
void embedding_backward(const int32_t* ids, int64_t rows, int64_t vocab, int64_t dim,
                        const T* d_out, T* d_table);

// out[t, :] += sum_j weights[t, j] y_perm[row_of[t*k + j], :] over n tokens of d values (plus
// residual[t, :] when that is not null), rounded once.
template <typename T>
void moe_combine(const T* y_perm, const int32_t* row_of, const T* weights, int64_t n, int64_t k,
                 int64_t d, T* out, const T* residual = nullptr);

}  // namespace t
}  // namespace dsv3::ref
