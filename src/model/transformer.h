#pragma once
// The whole DeepSeek-V3 training step on one window of tokens: embedding, the blocks, the final
// norm and head, the MTP depths, the three loss terms (DESIGN.md section 2), and the backward
// pass into every parameter's gradient. All activations are planned once for a [batch, seq]
// window when the Transformer is built; a step allocates nothing.
#include <memory>
#include <vector>

#include "model/block.h"
#include "model/weights.h"

namespace dsv3 {

struct LossWeights {
  double mtp_lambda = 0.3;      // total MTP weight, divided by the depth count
  double balance_alpha = 1e-4;  // sequence-wise balance loss weight
};

struct StepResult {
  double total = 0, main = 0;
  std::vector<double> mtp;  // CE of each depth
  double balance_sum = 0;   // sum over MoE layers (MTP blocks included) before alpha
};

class Transformer {
 public:
  Transformer(ModelWeights& weights, int64_t batch, int64_t seq);
  ~Transformer();

  // tokens, labels: [batch, seq] int32 (labels[i] is the token after tokens[i]; -1 skips a
  // position). With backward, gradients are accumulated into the weights' grads: call
  // weights.discard_grads() (or zero_grads()) before a fresh step, and nothing between the
  // micro-batches of one.
  StepResult step(const int32_t* tokens, const int32_t* labels, const LossWeights& loss,
                  bool backward);

  int64_t batch() const { return batch_; }
  int64_t seq() const { return seq_; }
  size_t activation_bytes() const { return arena_bytes_; }

  // Outputs of the last step.
  const Tensor& logits() const;               // [batch * seq, vocab]
  const Tensor& mtp_logits(int depth) const;  // depth 1..D, [batch * seq, vocab]
  const Tensor& hidden() const;               // [batch * seq, hidden] after the final norm
  // Routing of MoE layer `layer` (MTP depth k is layer num_hidden_layers + k - 1); null for a
  // dense layer.
  const RouterActivations* routing(int layer) const;

 private:
  struct Buffers;
  ModelWeights& w_;
  const ModelConfig& c_;
  int64_t batch_, seq_;
  size_t arena_bytes_ = 0;
  RopeTables rope_;
  std::vector<int64_t> mtp_count_;  // per depth: positions with a target in the current window
  std::unique_ptr<Buffers> b_;
};

}  // namespace dsv3
