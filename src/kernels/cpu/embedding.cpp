// Embedding lookup and its gradient (scatter-add by token id), and small elementwise ops.
#include <omp.h>

#include <cstring>

#include "core/device.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {

void embedding_forward(const Tensor& table, const int32_t* ids, int64_t rows, Tensor& out) {
  if (table.dtype() == DType::F64) return ref::embedding_forward(table, ids, rows, out);
  if (table.device() == Device::CUDA) return cuda_ops::embedding_forward(table, ids, rows, out);
  const int64_t vocab = table.dim(0), dim = table.dim(1);
  for (int64_t r = 0; r < rows; ++r)
    DSV3_CHECK(ids[r] >= -1 && ids[r] < vocab,
               "token id {} at position {} is outside the "
               "vocabulary of {}",
               ids[r], r, vocab);
  const float* tp = table.f32();
  float* op = out.f32();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    if (ids[r] < 0) {
      std::memset(op + r * dim, 0, size_t(dim) * sizeof(float));
    } else {
      std::memcpy(op + r * dim, tp + int64_t(ids[r]) * dim, size_t(dim) * sizeof(float));
    }
  }
}

void embedding_backward(const int32_t* ids, int64_t rows, const Tensor& d_out, Tensor& d_table) {
  if (d_table.dtype() == DType::F64) return ref::embedding_backward(ids, rows, d_out, d_table);
  if (d_table.device() == Device::CUDA)
    return cuda_ops::embedding_backward(ids, rows, d_out, d_table);
  const int64_t dim = d_table.dim(1);
  const float* gp = d_out.f32();
  float* tp = d_table.f32();
  // Rows sharing a token id collide, so split the work by columns instead of rows.
#pragma omp parallel
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t begin = dim * t / nt, end = dim * (t + 1) / nt;
    for (int64_t r = 0; r < rows; ++r) {
      if (ids[r] < 0) continue;
      float* dst = tp + int64_t(ids[r]) * dim;
      const float* src = gp + r * dim;
      for (int64_t i = begin; i < end; ++i) dst[i] += src[i];
    }
  }
}

void convert_all(const std::vector<std::pair<const Tensor*, Tensor*>>& pairs) {
  std::vector<std::pair<const Tensor*, Tensor*>> on_device;
  for (const auto& [src, dst] : pairs) {
    if (src->device() == Device::CUDA && dst->device() == Device::CUDA &&
        src->dtype() == DType::F32 && dst->dtype() == DType::BF16)
      on_device.push_back({src, dst});
    else
      convert(*src, *dst);
  }
  if (!on_device.empty()) cuda_ops::f32_to_bf16_all(on_device);
}

void convert(const Tensor& src, Tensor& dst) {
  if (src.device() == Device::CUDA || dst.device() == Device::CUDA)
    return cuda_ops::convert(src, dst);
  DSV3_CHECK(src.numel() == dst.numel(), "convert: {} into {}", src.shape().str(),
             dst.shape().str());
  if (src.dtype() == dst.dtype()) return dst.copy_from(src);
  if (src.dtype() == DType::F32) {
    convert_from_f32(src.f32(), dst.dtype(), dst.data(), size_t(src.numel()));
  } else {
    DSV3_CHECK(dst.dtype() == DType::F32, "convert: {} to {} (one side must be F32)",
               dtype_name(src.dtype()), dtype_name(dst.dtype()));
    convert_to_f32(src.dtype(), src.data(), dst.f32(), size_t(src.numel()));
  }
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  if (out.dtype() == DType::F64) return ref::add(a, b, out);
  if (out.device() == Device::CUDA) return cuda_ops::add(a, b, out);
  DSV3_CHECK(a.numel() == out.numel() && b.numel() == out.numel(), "add: {} + {} into {}",
             a.shape().str(), b.shape().str(), out.shape().str());
  const float *ap = a.f32(), *bp = b.f32();
  float* op = out.f32();
  const int64_t n = out.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) op[i] = ap[i] + bp[i];
}

}  // namespace dsv3::ops
