#include "train/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/ops.h"

namespace dsv3 {

AdamW::AdamW(ModelWeights& weights) : w_(weights) {
  // Moments live beside their parameters (the same device and dtype), where adamw_update reads
  // them.
  for (auto& p : w_.params()) {
    const Tensor& value = p.param->value;
    m_.push_back(Tensor::zeros(value.shape(), value.dtype(), value.device()));
    v_.push_back(Tensor::zeros(value.shape(), value.dtype(), value.device()));
  }
}

void AdamW::to_device(Device device) {
  for (Tensor& t : m_) t = t.to(device);
  for (Tensor& t : v_) t = t.to(device);
}

double AdamW::grad_norm() const {
  // One float64 sum threaded through the tensors in order (see ops::sum_squares): the same
  // value for any thread count, so resume is bit-exact.
  std::vector<const Tensor*> grads;
  grads.reserve(w_.params().size());
  for (const auto& p : w_.params()) grads.push_back(&p.param->grad);
  return std::sqrt(ops::sum_squares_all(grads));
}

double AdamW::step(const AdamWSettings& s, double lr) {
  const double norm = grad_norm();
  step(s, lr, norm);
  return norm;
}

void AdamW::scale_grads(float factor) { w_.scale_grads(factor); }

void AdamW::step(const AdamWSettings& s, double lr, double norm) {
  const double clip_scale = s.clip > 0 ? std::min(1.0, s.clip / (norm + 1e-6)) : 1.0;
  ++step_;
  const double bc1 = 1.0 - std::pow(s.beta1, double(step_));
  const double bc2 = 1.0 - std::pow(s.beta2, double(step_));
  // The per-tensor constants in double, rounded once to the float32 the update runs in.
  ops::AdamWScalars k;
  k.decay = 1.0f;  // each tensor's own, below
  k.b1 = float(s.beta1);
  k.b2 = float(s.beta2);
  k.clip_scale = float(clip_scale);
  k.step_size = float(lr / bc1);
  k.inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  k.eps = float(s.eps);
  // Every tensor in one call (one launch on a GPU), each with its own decay.
  const float decay = float(1.0 - lr * s.weight_decay);
  auto& params = w_.params();
  std::vector<ops::AdamWTensors> all;
  all.reserve(params.size());
  for (size_t t = 0; t < params.size(); ++t)
    all.push_back({&params[t].param->value, &params[t].param->grad, &m_[t], &v_[t],
                   params[t].decay ? decay : 1.0f});
  ops::adamw_update_all(all, k);
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
