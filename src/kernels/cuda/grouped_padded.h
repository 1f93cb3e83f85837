#pragma once
// The routed experts' grouped linear products as uniform batched GEMMs (BF16 weights). A
// grouped GEMM over experts of uneven rows (a few to thousands each) runs, product by product,
// far below the GPU's rate: a small product covers a fraction of the SMs, and each costs a
// cuBLAS call. Here each group's rows are cut into chunks of one height T (DSV3_GROUPED_CHUNK_ROWS,
// context.h), the last chunk of a group topped up with zero rows, and copied (rounded to BF16)
// into one buffer of chunks. The forward and the input gradient are then one
// cublasGemmBatchedEx each over all chunks (a chunk's weight is its group's), and the float32
// outputs are copied back to the compact rows. Padding costs at most T - 1 rows per group.
//
// The weight gradient sums over a group's rows, so its chunks cannot be products of their own
// writing one matrix side by side: it stays one product per group (blas_grouped_gemm), over the
// compact rows, each product as large as its group.
//
// Both take the checked operands of ops::grouped_linear_forward / _backward (dispatch.cpp)
// and return false, having run nothing, where the padded products do not apply (float32
// weights, no rows, or another DSV3_GROUPED_GEMM mode).
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dsv3::cuda {

bool grouped_linear_forward_padded(const Tensor& x, const std::vector<const Tensor*>& w,
                                   const int64_t* offsets, int64_t rows, Tensor& y);
// The input gradient d_x = d_y W per group (the weight gradients are the caller's).
bool grouped_linear_backward_padded(const Tensor& d_y, const std::vector<const Tensor*>& w,
                                    const int64_t* offsets, int64_t rows, Tensor& d_x);

}  // namespace dsv3::cuda
