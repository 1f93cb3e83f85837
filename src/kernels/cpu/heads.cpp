// Layout changes between token-major activations and the head-major layout attention uses.
#include <cstring>

#include "core/device.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {

void tokens_to_heads(const float* tokens, float* heads, const HeadCopy& c) {
  if (device::is_cuda_pointer(heads)) return cuda_ops::tokens_to_heads(tokens, heads, c);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t t = 0; t < c.seq; ++t) {
        const float* src =
            tokens + (b * c.seq + t) * c.tok_row_stride + h * c.tok_head_stride + c.tok_offset;
        float* dst = heads + ((b * c.heads + h) * c.seq + t) * c.head_dim + c.head_offset;
        std::memcpy(dst, src, size_t(c.width) * sizeof(float));
      }
}

void heads_to_tokens(const float* heads, float* tokens, const HeadCopy& c, bool accumulate) {
  if (device::is_cuda_pointer(tokens))
    return cuda_ops::heads_to_tokens(heads, tokens, c, accumulate);
  // One task per token: heads sharing a destination (tok_head_stride 0) add up in order.
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < c.batch * c.seq; ++bt) {
    const int64_t b = bt / c.seq, t = bt % c.seq;
    float* row = tokens + bt * c.tok_row_stride + c.tok_offset;
    if (!accumulate && c.tok_head_stride == 0) std::memset(row, 0, size_t(c.width) * 4);
    for (int64_t h = 0; h < c.heads; ++h) {
      const float* src = heads + ((b * c.heads + h) * c.seq + t) * c.head_dim + c.head_offset;
      float* dst = row + h * c.tok_head_stride;
      if (accumulate || c.tok_head_stride == 0) {
        for (int64_t i = 0; i < c.width; ++i) dst[i] += src[i];
      } else {
        std::memcpy(dst, src, size_t(c.width) * sizeof(float));
      }
    }
  }
}

void copy_columns(const float* src, int64_t src_cols, int64_t offset, int64_t width, float* dst,
                  int64_t rows) {
  if (device::is_cuda_pointer(dst))
    return cuda_ops::copy_columns(src, src_cols, offset, width, dst, rows);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * width, src + r * src_cols + offset, size_t(width) * sizeof(float));
}

void put_columns(const float* src, int64_t width, float* dst, int64_t dst_cols, int64_t offset,
                 int64_t rows) {
  if (device::is_cuda_pointer(dst))
    return cuda_ops::put_columns(src, width, dst, dst_cols, offset, rows);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * dst_cols + offset, src + r * width, size_t(width) * sizeof(float));
}

void tokens_to_heads(const Tensor& tokens, Tensor& heads, const HeadCopy& c) {
  if (heads.dtype() == DType::F64) return ref::t::tokens_to_heads(tokens.f64(), heads.f64(), c);
  if (heads.dtype() == DType::BF16)
    return cuda_ops::tokens_to_heads_bf16(tokens.f32(), heads.bf16(), c);
  tokens_to_heads(tokens.f32(), heads.f32(), c);
}

void heads_to_tokens(const Tensor& heads, Tensor& tokens, const HeadCopy& c, bool accumulate) {
  if (tokens.dtype() == DType::F64)
    return ref::t::heads_to_tokens(heads.f64(), tokens.f64(), c, accumulate);
  if (tokens.dtype() == DType::BF16) {
    DSV3_CHECK(!accumulate, "heads_to_tokens: a bfloat16 destination cannot be accumulated into");
    return cuda_ops::heads_to_tokens_bf16(heads.f32(), tokens.bf16(), c);
  }
  heads_to_tokens(heads.f32(), tokens.f32(), c, accumulate);
}

void copy_columns(const Tensor& src, int64_t src_cols, int64_t offset, int64_t width, Tensor& dst,
                  int64_t rows) {
  if (dst.dtype() == DType::F64)
    return ref::t::copy_columns(src.f64(), src_cols, offset, width, dst.f64(), rows);
  copy_columns(src.f32(), src_cols, offset, width, dst.f32(), rows);
}

void put_columns(const Tensor& src, int64_t width, Tensor& dst, int64_t dst_cols, int64_t offset,
                 int64_t rows) {
  if (dst.dtype() == DType::F64)
    return ref::t::put_columns(src.f64(), width, dst.f64(), dst_cols, offset, rows);
  if (dst.dtype() == DType::BF16)
    return cuda_ops::put_columns_bf16(src.f32(), width, dst.bf16(), dst_cols, offset, rows);
  put_columns(src.f32(), width, dst.f32(), dst_cols, offset, rows);
}

}  // namespace dsv3::ops
