#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace dsv3 {

double yarn_mscale(double factor, double mscale) {
  if (factor <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(factor) + 1.0;
}

RopeTables build_rope_tables(const ModelConfig& c, int positions, DType dtype) {
  const int dim = c.qk_rope_head_dim, half = dim / 2;
  const double theta = c.rope_theta;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) inv_freq[size_t(i)] = std::pow(theta, -2.0 * i / dim);

  double magnitude = 1.0;
  RopeTables t;
  t.softmax_scale = 1.0 / std::sqrt(double(c.qk_head_dim()));
  if (c.rope_scaling.yarn) {
    const RopeScaling& y = c.rope_scaling;
    const double orig = y.original_max_position_embeddings;
    // The rotation count r at which a dimension pair completes r turns over the original
    // context: d(r) = dim * ln(orig / (2 pi r)) / (2 ln theta).
    auto correction_dim = [&](double rotations) {
      return dim * std::log(orig / (rotations * 2.0 * M_PI)) / (2.0 * std::log(theta));
    };
    double low = std::max(std::floor(correction_dim(y.beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(y.beta_slow)), double(dim - 1));
    if (low == high) high += 0.001;
    for (int i = 0; i < half; ++i) {
      // ramp = 0: keep the original frequency (fast-rotating pairs); 1: interpolate by factor.
      double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
      double f = inv_freq[size_t(i)];
      inv_freq[size_t(i)] = f / y.factor * ramp + f * (1.0 - ramp);
    }
    magnitude = yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim);
    double m = yarn_mscale(y.factor, y.mscale_all_dim);
    t.softmax_scale = 1.0 / std::sqrt(double(c.qk_head_dim())) * m * m;
  }
  DSV3_CHECK(dtype == DType::F32 || dtype == DType::F64, "rope tables in {} are not supported",
             dtype_name(dtype));
  t.cos = Tensor::zeros({positions, half}, dtype);
  t.sin = Tensor::zeros({positions, half}, dtype);
  for (int p = 0; p < positions; ++p) {
    for (int i = 0; i < half; ++i) {
      const double angle = double(p) * inv_freq[size_t(i)];
      const double c_val = std::cos(angle) * magnitude, s_val = std::sin(angle) * magnitude;
      if (dtype == DType::F64) {
        t.cos.f64()[p * half + i] = c_val;
        t.sin.f64()[p * half + i] = s_val;
      } else {
        t.cos.f32()[p * half + i] = float(c_val);
        t.sin.f32()[p * half + i] = float(s_val);
      }
    }
  }
  return t;
}

}  // namespace dsv3
