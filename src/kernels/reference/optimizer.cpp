// Reference optimizer arithmetic: the squared norm, scaling, and the AdamW update, in float64
// from the same float32 inputs and constants, each result rounded once.
#include <cmath>

#include "kernels/reference.h"

namespace dsv3::ref {

double sum_squares(const Tensor& g, double acc) {
  return with_real(g, [&](auto real_zero) -> double {
    using T = decltype(real_zero);
    // One running float64 sum in index order (no chunks): the fast op's chunking changes only the
    // float64 rounding, far below what the comparison can see.
    double sum = 0.0;
    for (int64_t i = 0; i < g.numel(); ++i) sum += double(g.real<T>()[i]) * double(g.real<T>()[i]);
    return acc + sum;
  });
}

void scale_inplace(Tensor& x, float factor) {
  with_real(x, [&](auto real_zero) {
    using T = decltype(real_zero);
    // The float64 product of two floats is exact, so this is the correctly rounded float product.
    for (int64_t i = 0; i < x.numel(); ++i) x.real<T>()[i] = T(double(x.real<T>()[i]) * factor);
  });
}

void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamWScalars& s) {
  with_real(p, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t n = p.numel();
    DSV3_CHECK(g.numel() == n && m.numel() == n && v.numel() == n,
               "ref::adamw_update: p {}, g {}, m {}, v {} differ in size", p.shape().str(),
               g.shape().str(), m.shape().str(), v.shape().str());
    const double b1 = s.b1, b2 = s.b2;
    for (int64_t i = 0; i < n; ++i) {
      const double gi = double(g.real<T>()[i]) * s.clip_scale;
      const double mi = b1 * m.real<T>()[i] + (1.0 - b1) * gi;
      const double vi = b2 * v.real<T>()[i] + (1.0 - b2) * gi * gi;
      m.real<T>()[i] = T(mi);
      v.real<T>()[i] = T(vi);
      p.real<T>()[i] = T(double(p.real<T>()[i]) * s.decay -
                         double(s.step_size) * mi / (std::sqrt(vi) * s.inv_sqrt_bc2 + s.eps));
    }
  });
}

}  // namespace dsv3::ref
