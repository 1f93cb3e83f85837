// RMSNorm forward and backward on the CPU.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/device.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {

void rmsnorm_forward_with_bf16_copy(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                                    Tensor& rstd, Tensor& y_bf16) {
  if (!y_bf16.defined()) return rmsnorm_forward(x, w, eps, y, rstd);
  if (x.device() == Device::CUDA) return cuda_ops::rmsnorm_forward(x, w, eps, y, rstd, &y_bf16);
  rmsnorm_forward(x, w, eps, y, rstd);  // on the CPU: the norm, then the copy
  convert(y, y_bf16);
}

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  if (x.dtype() == DType::F64) return ref::rmsnorm_forward(x, w, eps, y, rstd);
  if (x.device() == Device::CUDA) return cuda_ops::rmsnorm_forward(x, w, eps, y, rstd, nullptr);
  const int64_t dim = w.numel(), rows = x.numel() / dim;
  const float* xp = x.f32();
  const float* wp = w.f32();
  float* yp = y.f32();
  float* rp = rstd.f32();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * dim;
    float* yr = yp + r * dim;
    float sum = 0.0f;
    for (int64_t i = 0; i < dim; ++i) sum += xr[i] * xr[i];
    float inv = 1.0f / std::sqrt(sum / float(dim) + eps);
    rp[r] = inv;
    for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * wp[i];
  }
}

void rmsnorm_backward_with_bf16_copy(const Tensor& x, const Tensor& w, const Tensor& rstd,
                                     const Tensor& d_y, Tensor& d_x, Tensor& d_w,
                                     bool accumulate_d_x, bool accumulate_d_w, Tensor& d_x_bf16) {
  if (!d_x_bf16.defined())
    return rmsnorm_backward(x, w, rstd, d_y, d_x, d_w, accumulate_d_x, accumulate_d_w);
  if (x.device() == Device::CUDA)
    return cuda_ops::rmsnorm_backward(x, w, rstd, d_y, d_x, d_w, accumulate_d_x, accumulate_d_w,
                                      &d_x_bf16);
  rmsnorm_backward(x, w, rstd, d_y, d_x, d_w, accumulate_d_x, accumulate_d_w);  // then the copy
  convert(d_x, d_x_bf16);
}

void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& d_y,
                      Tensor& d_x, Tensor& d_w, bool accumulate_d_x, bool accumulate_d_w) {
  if (x.dtype() == DType::F64)
    return ref::rmsnorm_backward(x, w, rstd, d_y, d_x, d_w, accumulate_d_x, accumulate_d_w);
  if (x.device() == Device::CUDA)
    return cuda_ops::rmsnorm_backward(x, w, rstd, d_y, d_x, d_w, accumulate_d_x, accumulate_d_w,
                                      nullptr);
  const int64_t dim = w.numel(), rows = x.numel() / dim;
  const float* xp = x.f32();
  const float* wp = w.f32();
  const float* rp = rstd.f32();
  const float* gp = d_y.f32();
  float* dxp = d_x.f32();
  float* dwp = d_w.f32();
  // d_x row by row: xhat = x * rstd; d_x = rstd * (g * w - xhat * mean(g * w * xhat)).
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * dim;
    const float* gr = gp + r * dim;
    float* dxr = dxp + r * dim;
    const float inv = rp[r];
    float dot = 0.0f;
    for (int64_t i = 0; i < dim; ++i) dot += gr[i] * wp[i] * xr[i] * inv;
    const float mean_dot = dot / float(dim);
    for (int64_t i = 0; i < dim; ++i) {
      float v = inv * (gr[i] * wp[i] - xr[i] * inv * mean_dot);
      dxr[i] = accumulate_d_x ? dxr[i] + v : v;
    }
  }
  // d_w column by column, each summed over rows in order by one thread: the result does not
  // depend on the thread count or timing (resumed runs must reproduce losses bit for bit).
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t begin = dim * t / threads, end = dim * (t + 1) / threads;
    if (!accumulate_d_w) std::fill(dwp + begin, dwp + end, 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xp + r * dim;
      const float* gr = gp + r * dim;
      const float inv = rp[r];
      for (int64_t i = begin; i < end; ++i) dwp[i] += gr[i] * xr[i] * inv;
    }
  }
}

}  // namespace dsv3::ops
