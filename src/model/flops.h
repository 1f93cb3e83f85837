#pragma once
// Model FLOPs of a training step, counted as the DeepSeek-V3 report does: 6 x (matrix-multiply
// parameters active per token) x tokens, plus causal attention (QK^T and PV: half the T x T
// square), forward and backward.
#include "model/config.h"

namespace dsv3 {

struct StepFlops {
  double matmul = 0;     // 6 * active matmul parameters * tokens (heads of MTP depths included)
  double attention = 0;  // 3 * 2 * batch * heads * T^2/2 * (qk + v) per attention layer
  double total() const { return matmul + attention; }
};

StepFlops training_step_flops(const ModelConfig& c, int64_t batch, int64_t seq);

}  // namespace dsv3
