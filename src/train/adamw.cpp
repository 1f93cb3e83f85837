#include "train/adamw.h"

#include <cmath>

namespace dsv3 {

AdamW::AdamW(ModelWeights& weights) : w_(weights) {
  for (auto& p : w_.params()) {
    m_.push_back(Tensor::zeros(p.param->value.shape()));
    v_.push_back(Tensor::zeros(p.param->value.shape()));
  }
}

void AdamW::to_device(Device device) {
  for (Tensor& t : m_) t = t.to(device);
  for (Tensor& t : v_) t = t.to(device);
}

double AdamW::grad_norm() const {
  // Fixed chunks summed in order: the same value for any thread count (resume is bit-exact).
  constexpr int64_t kChunks = 64;
  double sum = 0.0;
  for (const auto& p : w_.params()) {
    const float* g = p.param->grad.f32();
    const int64_t n = p.param->grad.numel();
    double partial[kChunks] = {};
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < kChunks; ++c) {
      double local = 0.0;
      for (int64_t i = n * c / kChunks; i < n * (c + 1) / kChunks; ++i) local += double(g[i]) * g[i];
      partial[c] = local;
    }
    for (double v : partial) sum += v;
  }
  return std::sqrt(sum);
}

double AdamW::step(const AdamWSettings& s, double lr) {
  const double norm = grad_norm();
  step(s, lr, norm);
  return norm;
}

void AdamW::scale_grads(float factor) {
  for (auto& p : w_.params()) {
    float* g = p.param->grad.f32();
    const int64_t n = p.param->grad.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) g[i] *= factor;
  }
}

void AdamW::step(const AdamWSettings& s, double lr, double norm) {
  const double clip_scale = s.clip > 0 ? std::min(1.0, s.clip / (norm + 1e-6)) : 1.0;
  ++step_;
  const double bc1 = 1.0 - std::pow(s.beta1, double(step_));
  const double bc2 = 1.0 - std::pow(s.beta2, double(step_));
  auto& params = w_.params();
  for (size_t t = 0; t < params.size(); ++t) {
    float* p = params[t].param->value.f32();
    const float* g = params[t].param->grad.f32();
    float* m = m_[t].f32();
    float* v = v_[t].f32();
    const int64_t n = params[t].param->value.numel();
    const float decay = params[t].decay ? float(1.0 - lr * s.weight_decay) : 1.0f;
    const float b1 = float(s.beta1), b2 = float(s.beta2), cs = float(clip_scale);
    const float step_size = float(lr / bc1), inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
    const float eps = float(s.eps);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i] * cs;
      m[i] = b1 * m[i] + (1.0f - b1) * gi;
      v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
      p[i] = p[i] * decay - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
    }
  }
}

void update_balance_bias(Tensor& bias, const Tensor& load, double gamma) {
  const int64_t e = bias.numel();
  const float* l = load.f32();
  double mean = 0.0;
  for (int64_t i = 0; i < e; ++i) mean += l[i];
  mean /= double(e);
  float* b = bias.f32();
  for (int64_t i = 0; i < e; ++i) {
    double diff = mean - l[i];
    double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
    b[i] = float(double(b[i]) + gamma * sign);  // in double: the update is exact to one rounding
  }
}

}  // namespace dsv3
