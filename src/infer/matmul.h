#pragma once
// Inference matrix products over weights kept in their storage dtype (F32 or BF16), with
// float32 activations and float32 accumulation.
//
//   few rows (decode, verification, small expert groups): a hand-written AVX-512 kernel that
//     streams each weight row once; against BF16 weights, on CPUs with AVX512-BF16 it rounds the
//     activations to BF16 once and multiplies pairs with vdpbf16ps (F32 accumulation), elsewhere
//     it widens the weights exactly and keeps the activations in F32;
//   many rows (prefill): oneDNN's BF16 matmul (activations rounded to BF16, F32 accumulation,
//     AVX512-BF16 instructions), primitives cached by shape; on CPUs without AVX-512, where
//     oneDNN has no BF16 matmul, the same rounded activations against the weights widened to
//     F32 a block of 256 outputs at a time, through the F32 GEMM (the same products, exact in
//     F32, summed in another order);
//   F32 weights: the same streaming kernel for few rows, oneDNN sgemm for many.
// Up to kSmallRows rows, every output element is computed the same way whatever the row count,
// so a token's logits do not depend on which other tokens share the pass.
#include <cstdint>
#include <span>

#include "core/tensor.h"

namespace dsv3::infer {

// A row-major matrix [rows, cols] with a row stride `ld` (elements), F32 or BF16, not owned.
struct MatRef {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0, ld = 0;

  static MatRef of(const Tensor& t);  // a 2-D F32/BF16 tensor
  // Rows [begin, begin + count).
  MatRef row_block(int64_t begin, int64_t count) const;
  bool empty() const { return data == nullptr; }
};

// y[m, w.rows] (= or +=) x[m, w.cols] . w^T   (the linear layer)
void matmul_wt(const float* x, int64_t m, int64_t ldx, const MatRef& w, float* y, int64_t ldy,
               bool accumulate = false);

// Several independent products y = x . w^T run in one parallel region (fewer thread
// synchronisations per decoded token): the jobs' output rows are shared out together.
struct GemvJob {
  const float* x;
  int64_t m, ldx;
  MatRef w;
  float* y;
  int64_t ldy;
  bool accumulate = false;
};
void matmul_wt_jobs(std::span<const GemvJob> jobs);

// y[m, w.cols] = x[m, w.rows] . w   (absorbing the key up-projection into the query)
void matmul_w(const float* x, int64_t m, int64_t ldx, const MatRef& w, float* y, int64_t ldy);

// Rows below this use the streaming kernel; at or above it, the BF16 GEMM.
constexpr int64_t kSmallRows = 8;

// Tests: run the many-row BF16 products the widening way (true) even where oneDNN has a BF16
// matmul, or let the CPU decide again (false).
void force_widened_bf16_gemm(bool on);

}  // namespace dsv3::infer
