#include "model/flops.h"

namespace dsv3 {

StepFlops training_step_flops(const ModelConfig& c, int64_t batch, int64_t seq) {
  const double tokens = double(batch) * double(seq);
  const double vocab_hidden = double(c.vocab_size) * c.hidden_size;
  // The embedding is a lookup (no FLOPs); the head runs once for the main model and once per
  // MTP depth.
  double active = double(c.active_parameter_count()) - vocab_hidden +
                  double(c.num_nextn_predict_layers) * vocab_hidden;
  StepFlops f;
  f.matmul = 6.0 * active * tokens;
  const int attention_layers = c.num_hidden_layers + c.num_nextn_predict_layers;
  f.attention = 3.0 * 2.0 * double(batch) * c.num_attention_heads * double(seq) * double(seq) /
                2.0 * double(c.qk_head_dim() + c.v_head_dim) * attention_layers;
  return f;
}

}  // namespace dsv3
