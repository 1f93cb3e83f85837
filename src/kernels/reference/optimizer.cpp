// Reference optimizer arithmetic: the squared norm, scaling, and the AdamW update, in float64
// from the same float32 inputs and constants, each result rounded once.
#include <cmath>

#include "kernels/reference.h"

namespace dsv3::ref {

double sum_squares(const Tensor& g, double acc) {
  // One running float64 sum in index order (no chunks): the fast op's chunking changes only the
  // float64 rounding, far below what the comparison can see.
  double sum = 0.0;
  for (int64_t i = 0; i < g.numel(); ++i) sum += double(g.f32()[i]) * double(g.f32()[i]);
  return acc + sum;
}

void scale_inplace(Tensor& x, float factor) {
  // The float64 product of two floats is exact, so this is the correctly rounded float product.
  for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = float(double(x.f32()[i]) * factor);
}

void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamWScalars& s) {
  const int64_t n = p.numel();
  DSV3_CHECK(g.numel() == n && m.numel() == n && v.numel() == n,
             "ref::adamw_update: p {}, g {}, m {}, v {} differ in size", p.shape().str(),
             g.shape().str(), m.shape().str(), v.shape().str());
  const double b1 = s.b1, b2 = s.b2;
  for (int64_t i = 0; i < n; ++i) {
    const double gi = double(g.f32()[i]) * s.clip_scale;
    const double mi = b1 * m.f32()[i] + (1.0 - b1) * gi;
    const double vi = b2 * v.f32()[i] + (1.0 - b2) * gi * gi;
    m.f32()[i] = float(mi);
    v.f32()[i] = float(vi);
    p.f32()[i] = float(double(p.f32()[i]) * s.decay -
                       double(s.step_size) * mi / (std::sqrt(vi) * s.inv_sqrt_bc2 + s.eps));
  }
}

}  // namespace dsv3::ref
