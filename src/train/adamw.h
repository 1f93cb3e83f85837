#pragma once
// AdamW as DESIGN.md section 2 states it: clip the global gradient norm, moments from zero,
// bias correction, decoupled weight decay on tensors of two or more dimensions only.
#include <vector>

#include "model/weights.h"

namespace dsv3 {

struct AdamWSettings {
  double lr = 2.2e-4;
  double beta1 = 0.9, beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip = 1.0;  // global-norm clip; <= 0 disables
};

class AdamW {
 public:
  explicit AdamW(ModelWeights& weights);
  // The global L2 norm of all gradients (float64 accumulation).
  double grad_norm() const;
  // One update with learning rate `lr`; returns the gradient norm before clipping.
  double step(const AdamWSettings& s, double lr);
  // The same with the gradient norm already computed (the trainer checks it first).
  void step(const AdamWSettings& s, double lr, double grad_norm);
  // Multiplies every gradient by `factor` (averaging over accumulated micro-batches).
  void scale_grads(float factor);

  // Moves the moments to `device` (the weights' device: call after weights.to_device).
  void to_device(Device device);

  int64_t steps() const { return step_; }
  void set_steps(int64_t steps) { step_ = steps; }
  // Moments, in the order of weights.params(): m then v for each.
  std::vector<Tensor>& first_moments() { return m_; }
  std::vector<Tensor>& second_moments() { return v_; }

 private:
  ModelWeights& w_;
  std::vector<Tensor> m_, v_;
  int64_t step_ = 0;
};

// The auxiliary-loss-free balancing update of one MoE layer: b_i += gamma * sign(mean - load_i).
void update_balance_bias(Tensor& bias, const Tensor& load, double gamma);

}  // namespace dsv3
