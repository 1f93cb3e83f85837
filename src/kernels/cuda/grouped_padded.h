#pragma once
// The routed experts' grouped linear products as uniform batched GEMMs (BF16 weights). A
// grouped GEMM over experts of uneven rows (a few to thousands each) runs, product by product,
// far below the GPU's rate: a small product covers a fraction of the SMs, and each costs a
// cuBLAS call. Here each group's rows are cut into chunks of one height T
// (DSV3_GROUPED_CHUNK_ROWS, context.h), and the forward and the input gradient are one
// cublasGemmBatchedEx each over all chunks (a chunk's weight is its group's).
//
// A whole chunk (T rows of its group) is read and written where it lies in the compact rows:
// its rows are contiguous, so it is a product of its own with the compact leading dimensions.
// Only a group's last, partial chunk (its tail) is copied into a padded buffer, topped up with
// zero rows, and its outputs copied back: at most T - 1 rows per group are moved, not
// every row. (A tail cannot be written in place: its T output rows would run into the next
// group's.)
//
// The weight gradient sums over a group's rows, so its chunks cannot be products of their own
// writing one matrix side by side: it stays one product per group (blas_grouped_gemm), over the
// compact rows, each product as large as its group.
//
// Both take BF16 operands (dispatch.cpp rounds float32 ones first) and return false, having
// run nothing, where the padded products do not apply (float32 weights, no rows, or another
// DSV3_GROUPED_GEMM mode).
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dsv3::cuda {

// The output of the products: float32, or BF16 (each value the float32 sum rounded).
struct GroupedOutput {
  void* data;
  bool bf16;
  int elem_bytes() const { return bf16 ? 2 : 4; }
};

// y [rows, out] = x_g [r_g, in] W_g^T per group; x is BF16 [rows, in].
bool grouped_linear_forward_padded(const void* x, const std::vector<const Tensor*>& w,
                                   const int64_t* offsets, int64_t rows, const GroupedOutput& y);
// The input gradient d_x [rows, in] = d_y_g W_g per group; d_y is BF16 [rows, out]. (The weight
// gradients are the caller's.)
bool grouped_linear_backward_padded(const void* d_y, const std::vector<const Tensor*>& w,
                                    const int64_t* offsets, int64_t rows,
                                    const GroupedOutput& d_x);

}  // namespace dsv3::cuda
