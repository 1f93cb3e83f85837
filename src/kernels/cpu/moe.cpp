// The MoE layer's data movement around the expert GEMMs: gather token rows into expert order,
// combine the experts' outputs back per token with the gating weights, and the backward of both.
// The loops are the ones the MoE layer ran inline before they became ops, so the CPU results are
// unchanged bit for bit; every token (or permuted row) is one task, and the sums over a token's
// K experts run in order j = 0 .. K-1.
#include <cstring>

#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {
namespace {

// The row length shared by all operands and the rows of `t`.
int64_t rows_of(const Tensor& t, int64_t d) { return d ? t.numel() / d : 0; }

// Indices come from the engine's own counting sort, so a bad one is a bug: cheap to catch here
// (a few thousand compares against the megabytes moved) rather than a stray write.
void check_rows(const char* op, const char* what, const int32_t* idx, int64_t n, int64_t rows) {
  for (int64_t i = 0; i < n; ++i)
    DSV3_CHECK(idx[i] >= 0 && idx[i] < rows, "{}: {}[{}] = {} is outside [0, {})", op, what, i,
               idx[i], rows);
}

}  // namespace

void moe_gather_rows(const Tensor& x, const int32_t* src_row, Tensor& out) {
  if (out.dtype() == DType::F64) return ref::moe_gather_rows(x, src_row, out);
  if (out.device() == Device::CUDA) return cuda_ops::moe_gather_rows(x, src_row, out);
  const int64_t d = out.dim(-1), m = rows_of(out, d), n = rows_of(x, d);
  DSV3_CHECK(x.dim(-1) == d, "moe_gather_rows: x {} and out {} differ in row length",
             x.shape().str(), out.shape().str());
  check_rows("moe_gather_rows", "src_row", src_row, m, n);
  const float* xp = x.f32();
  float* op = out.f32();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r)
    std::memcpy(op + r * d, xp + int64_t(src_row[r]) * d, size_t(d) * sizeof(float));
}

void moe_combine(const Tensor& y_perm, const int32_t* row_of, const Tensor& weights, Tensor& out,
                 const Tensor* residual) {
  if (out.dtype() == DType::F64) return ref::moe_combine(y_perm, row_of, weights, out, residual);
  if (out.device() == Device::CUDA)
    return cuda_ops::moe_combine(y_perm, row_of, weights, out, residual);
  const int64_t d = out.dim(-1), n = rows_of(out, d), k = n ? weights.numel() / n : 0;
  DSV3_CHECK(y_perm.dim(-1) == d && weights.numel() == n * k && y_perm.numel() == n * k * d,
             "moe_combine: y_perm {}, weights {} and out {} do not match", y_perm.shape().str(),
             weights.shape().str(), out.shape().str());
  DSV3_CHECK(!residual || (residual->device() == Device::CPU && residual->dtype() == DType::F32 &&
                           residual->numel() == out.numel() && residual->data() != out.data()),
             "moe_combine: the residual {} is not a float32 tensor of out's shape {} beside it",
             residual ? residual->shape().str() : "", out.shape().str());
  check_rows("moe_combine", "row_of", row_of, n * k, n * k);
  const float* wt = weights.f32();
  const float* y = y_perm.f32();
  const float* res = residual ? residual->f32() : nullptr;
  float* o = out.f32();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const float* yr = y + int64_t(row_of[t * k + j]) * d;
      const float g = wt[t * k + j];
      for (int64_t i = 0; i < d; ++i) o[t * d + i] += g * yr[i];
    }
    if (res)  // the row is in cache: add(residual, out)'s sum
      for (int64_t i = 0; i < d; ++i) o[t * d + i] = res[t * d + i] + o[t * d + i];
  }
}

void moe_combine_backward(const Tensor& d_out, const Tensor& y_perm, const int32_t* row_of,
                          const Tensor& weights, Tensor& d_y_perm, Tensor& d_weights) {
  if (d_out.dtype() == DType::F64)
    return ref::moe_combine_backward(d_out, y_perm, row_of, weights, d_y_perm, d_weights);
  if (d_out.device() == Device::CUDA)
    return cuda_ops::moe_combine_backward(d_out, y_perm, row_of, weights, d_y_perm, d_weights);
  const int64_t d = d_out.dim(-1), n = rows_of(d_out, d), k = n ? weights.numel() / n : 0;
  DSV3_CHECK(y_perm.dim(-1) == d && y_perm.numel() == n * k * d &&
                 d_y_perm.numel() == y_perm.numel() && d_weights.numel() == weights.numel() &&
                 weights.numel() == n * k,
             "moe_combine_backward: d_out {}, y_perm {}, weights {}, d_y_perm {}, d_weights {} "
             "do not match",
             d_out.shape().str(), y_perm.shape().str(), weights.shape().str(),
             d_y_perm.shape().str(), d_weights.shape().str());
  check_rows("moe_combine_backward", "row_of", row_of, n * k, n * k);
  const float* wt = weights.f32();
  const float* y = y_perm.f32();
  const float* g = d_out.f32();
  float* dy = d_y_perm.f32();
  float* dw = d_weights.f32();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = row_of[t * k + j];
      const float* gr = g + t * d;
      const float* yr = y + r * d;
      float* dyr = dy + r * d;
      float dot = 0.0f;
      for (int64_t i = 0; i < d; ++i) {
        dyr[i] = wt[t * k + j] * gr[i];
        dot += gr[i] * yr[i];
      }
      dw[t * k + j] = dot;
    }
}

void moe_scatter_add(const Tensor& d_x_perm, const int32_t* row_of, int64_t k, Tensor& d_x) {
  if (d_x.dtype() == DType::F64) return ref::moe_scatter_add(d_x_perm, row_of, k, d_x);
  if (d_x.device() == Device::CUDA) return cuda_ops::moe_scatter_add(d_x_perm, row_of, k, d_x);
  const int64_t d = d_x.dim(-1), n = rows_of(d_x, d), m = rows_of(d_x_perm, d);
  DSV3_CHECK(k >= 1 && d_x_perm.dim(-1) == d && m == n * k,
             "moe_scatter_add: d_x_perm {} is not [{} * {}, {}]", d_x_perm.shape().str(), n, k, d);
  check_rows("moe_scatter_add", "row_of", row_of, n * k, m);
  const float* dxp = d_x_perm.f32();
  float* dxo = d_x.f32();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const float* src = dxp + int64_t(row_of[t * k + j]) * d;
      for (int64_t i = 0; i < d; ++i) dxo[t * d + i] += src[i];
    }
}

}  // namespace dsv3::ops
