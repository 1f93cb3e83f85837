#pragma once
// Token sampling. The logits of one position go through, in order:
//   0. ids outside `allowed` (when set) get probability zero;
//   1. penalties over the tokens seen so far (prompt and generated):
//      repetition (a seen token's logit is divided by the penalty when positive, multiplied when
//      negative), presence (minus presence_penalty once per seen token) and frequency (minus
//      frequency_penalty times its count);
//   2. temperature 0 (greedy): the arg-max, ties to the lowest id; otherwise softmax(logits / T);
//   3. top-k (keep the k most probable), top-p (the smallest set of most probable tokens whose
//      mass reaches p), min-p (drop tokens below min_p times the top probability); renormalize;
//   4. one draw from the seeded generator (same seed, same draws).
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace dsv3::infer {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  // Ids that may be drawn (empty: all). A model's vocabulary may be larger than its tokenizer's
  // (DeepSeek-V3: 129,280 embedding rows, 128,815 tokens): ids without a token are never drawn.
  std::vector<bool> allowed = {};

  bool greedy() const { return temperature <= 0.0f; }
  void validate() const;  // a clear error for out-of-range values
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, int vocab_size);

  const SamplingParams& params() const { return params_; }

  // The penalized logits of one position (steps 1).
  void penalize(const float* logits, std::span<const int32_t> history, std::vector<float>& out) const;
  // The distribution tokens are drawn from (steps 1-3): a probability per id, zeros outside the
  // kept set. Under greedy decoding, one-hot on the arg-max.
  void distribution(const float* logits, std::span<const int32_t> history,
                    std::vector<float>& probs) const;
  // A token for this position (steps 1-4; greedy draws nothing from the generator).
  int32_t sample(const float* logits, std::span<const int32_t> history);
  // One draw from a distribution (need not be normalized).
  int32_t draw(std::span<const float> probs);
  // A uniform number in [0, 1) from the seeded generator.
  double uniform();

 private:
  SamplingParams params_;
  int vocab_;
  std::vector<int32_t> banned_;  // ids below vocab_ outside params_.allowed
  std::mt19937_64 rng_;
  std::vector<float> work_;
  mutable std::vector<int32_t> order_;
  mutable std::vector<float> scratch_;
};

int32_t argmax(const float* values, int n);

}  // namespace dsv3::infer
