// Reference RMSNorm: y = x * rsqrt(mean(x^2) + eps) * w, and its gradient, in float64.
#include <cmath>
#include <vector>

#include "kernels/reference.h"

namespace dsv3::ref {
namespace t {

template <typename T>
void rmsnorm_forward(const T* x, const T* w, int64_t rows, int64_t dim, double eps, T* y, T* rstd) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    double sum = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum += double(xr[i]) * double(xr[i]);
    const double inv = 1.0 / std::sqrt(sum / double(dim) + eps);
    rstd[r] = T(inv);
    for (int64_t i = 0; i < dim; ++i) y[r * dim + i] = T(double(xr[i]) * inv * double(w[i]));
  }
}

// With xhat = x * rstd: d_xhat = d_y * w, d_x = rstd * (d_xhat - xhat * mean(d_xhat * xhat)),
// d_w = sum over rows of d_y * xhat.
template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* rstd, const T* d_y, int64_t rows,
                      int64_t dim, T* d_x, T* d_w, bool accumulate_d_x, bool accumulate_d_w) {
  std::vector<double> dw(static_cast<size_t>(dim));
  if (accumulate_d_w)
    for (int64_t i = 0; i < dim; ++i) dw[size_t(i)] = d_w[i];
  for (int64_t r = 0; r < rows; ++r) {
    const double inv = rstd[r];
    double dot = 0.0;
    for (int64_t i = 0; i < dim; ++i) {
      const double xhat = double(x[r * dim + i]) * inv, g = d_y[r * dim + i];
      dot += g * double(w[i]) * xhat;
      dw[size_t(i)] += g * xhat;
    }
    const double mean_dot = dot / double(dim);
    for (int64_t i = 0; i < dim; ++i) {
      const double xhat = double(x[r * dim + i]) * inv;
      double v = inv * (double(d_y[r * dim + i]) * double(w[i]) - xhat * mean_dot);
      if (accumulate_d_x) v += double(d_x[r * dim + i]);
      d_x[r * dim + i] = T(v);
    }
  }
  for (int64_t i = 0; i < dim; ++i) d_w[i] = T(dw[size_t(i)]);
}

#define DSV3_INSTANTIATE(T)                                                                       \
  template void rmsnorm_forward<T>(const T*, const T*, int64_t, int64_t, double, T*, T*);         \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, T*, \
                                    T*, bool, bool);
DSV3_INSTANTIATE(float)
DSV3_INSTANTIATE(double)
#undef DSV3_INSTANTIATE

}  // namespace t

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  with_real(x, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t dim = w.numel(), rows = x.numel() / dim;
    t::rmsnorm_forward(x.real<T>(), w.real<T>(), rows, dim, eps, y.real<T>(), rstd.real<T>());
  });
}

void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& d_y,
                      Tensor& d_x, Tensor& d_w, bool accumulate_d_x, bool accumulate_d_w) {
  with_real(x, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t dim = w.numel(), rows = x.numel() / dim;
    t::rmsnorm_backward(x.real<T>(), w.real<T>(), rstd.real<T>(), d_y.real<T>(), rows, dim,
                        d_x.real<T>(), d_w.real<T>(), accumulate_d_x, accumulate_d_w);
  });
}

}  // namespace dsv3::ref
