// RMSNorm forward and backward on the CPU.
#include <cmath>
#include <vector>

#include "kernels/ops.h"

namespace dsv3::ops {

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
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

void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& d_y,
                      Tensor& d_x, Tensor& d_w, bool accumulate_d_x) {
  const int64_t dim = w.numel(), rows = x.numel() / dim;
  const float* xp = x.f32();
  const float* wp = w.f32();
  const float* rp = rstd.f32();
  const float* gp = d_y.f32();
  float* dxp = d_x.f32();
  float* dwp = d_w.f32();
  // d_w is a reduction over rows: each thread sums its rows privately, then adds once.
#pragma omp parallel
  {
    std::vector<float> dw_local(size_t(dim), 0.0f);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xp + r * dim;
      const float* gr = gp + r * dim;
      float* dxr = dxp + r * dim;
      float inv = rp[r];
      // xhat = x * inv; d_xhat = g * w; d_x = inv * (d_xhat - xhat * mean(d_xhat * xhat))
      float dot = 0.0f;
      for (int64_t i = 0; i < dim; ++i) {
        float xhat = xr[i] * inv;
        dot += gr[i] * wp[i] * xhat;
        dw_local[size_t(i)] += gr[i] * xhat;
      }
      float mean_dot = dot / float(dim);
      for (int64_t i = 0; i < dim; ++i) {
        float v = inv * (gr[i] * wp[i] - xr[i] * inv * mean_dot);
        dxr[i] = accumulate_d_x ? dxr[i] + v : v;
      }
    }
#pragma omp critical
    for (int64_t i = 0; i < dim; ++i) dwp[i] += dw_local[size_t(i)];
  }
}

}  // namespace dsv3::ops
