#include "infer/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "core/error.h"

namespace dsv3::infer {

void SamplingParams::validate() const {
  DSV3_CHECK(std::isfinite(temperature) && temperature >= 0.0f,
             "sampling: temperature must be >= 0, got {}", temperature);
  DSV3_CHECK(top_k >= 0, "sampling: top-k must be >= 0, got {}", top_k);
  DSV3_CHECK(top_p > 0.0f && top_p <= 1.0f, "sampling: top-p must be in (0, 1], got {}", top_p);
  DSV3_CHECK(min_p >= 0.0f && min_p < 1.0f, "sampling: min-p must be in [0, 1), got {}", min_p);
  DSV3_CHECK(repetition_penalty > 0.0f, "sampling: repetition penalty must be > 0, got {}",
             repetition_penalty);
  DSV3_CHECK(std::isfinite(presence_penalty) && std::isfinite(frequency_penalty),
             "sampling: presence and frequency penalties must be finite");
  DSV3_CHECK(allowed.empty() || std::find(allowed.begin(), allowed.end(), true) != allowed.end(),
             "sampling: no token id may be drawn");
}

int32_t argmax(const float* values, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (values[i] > values[best]) best = i;
  return best;
}

Sampler::Sampler(const SamplingParams& params, int vocab_size)
    : params_(params), vocab_(vocab_size), rng_(params.seed) {
  params_.validate();
  if (!params_.allowed.empty())
    for (int i = 0; i < vocab_; ++i)
      if (size_t(i) >= params_.allowed.size() || !params_.allowed[size_t(i)]) banned_.push_back(i);
}

void Sampler::penalize(const float* logits, std::span<const int32_t> history,
                       std::vector<float>& out) const {
  out.assign(logits, logits + vocab_);
  const SamplingParams& p = params_;
  for (int32_t id : banned_) out[size_t(id)] = -std::numeric_limits<float>::infinity();
  if (history.empty() ||
      (p.repetition_penalty == 1.0f && p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f))
    return;
  std::unordered_map<int32_t, int> counts;
  for (int32_t id : history)
    if (id >= 0 && id < vocab_) counts[id]++;
  for (const auto& [id, count] : counts) {
    float& l = out[size_t(id)];
    if (p.repetition_penalty != 1.0f) l = l > 0.0f ? l / p.repetition_penalty : l * p.repetition_penalty;
    l -= p.presence_penalty + p.frequency_penalty * float(count);
  }
}

void Sampler::distribution(const float* logits, std::span<const int32_t> history,
                           std::vector<float>& probs) const {
  std::vector<float>& pen = scratch_;
  penalize(logits, history, pen);
  probs.assign(size_t(vocab_), 0.0f);
  if (params_.greedy()) {
    probs[size_t(argmax(pen.data(), vocab_))] = 1.0f;
    return;
  }
  const float inv_t = 1.0f / params_.temperature;
  float mx = *std::max_element(pen.begin(), pen.end());
  double sum = 0.0;
  for (int i = 0; i < vocab_; ++i) sum += (probs[size_t(i)] = std::exp((pen[size_t(i)] - mx) * inv_t));
  for (float& p : probs) p = float(p / sum);
  const SamplingParams& p = params_;
  const bool top_k = p.top_k > 0 && p.top_k < vocab_;
  if (!top_k && p.top_p >= 1.0f && p.min_p <= 0.0f) return;
  // Most probable first (ties: lower id first, so the kept set is deterministic).
  order_.resize(size_t(vocab_));
  std::iota(order_.begin(), order_.end(), 0);
  auto by_prob = [&](int32_t a, int32_t b) {
    return probs[size_t(a)] > probs[size_t(b)] || (probs[size_t(a)] == probs[size_t(b)] && a < b);
  };
  int keep = top_k ? p.top_k : vocab_;
  if (top_k) std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), by_prob);
  else std::sort(order_.begin(), order_.end(), by_prob);
  if (p.top_p < 1.0f) {
    double mass = 0.0;
    int n = 0;
    while (n < keep) {
      mass += probs[size_t(order_[size_t(n++)])];
      if (mass >= p.top_p) break;
    }
    keep = n;
  }
  if (p.min_p > 0.0f) {
    const float floor = p.min_p * probs[size_t(order_[0])];
    int n = 1;
    while (n < keep && probs[size_t(order_[size_t(n)])] >= floor) ++n;
    keep = n;
  }
  double kept = 0.0;
  for (int i = 0; i < keep; ++i) kept += probs[size_t(order_[size_t(i)])];
  std::vector<float> out(size_t(vocab_), 0.0f);
  for (int i = 0; i < keep; ++i) {
    const size_t id = size_t(order_[size_t(i)]);
    out[id] = float(probs[id] / kept);
  }
  probs.swap(out);
}

double Sampler::uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

int32_t Sampler::draw(std::span<const float> probs) {
  double total = 0.0;
  for (float p : probs) total += p;
  DSV3_CHECK(total > 0.0 && std::isfinite(total), "sampling: the distribution has no mass");
  const double u = uniform() * total;
  double acc = 0.0;
  int32_t last = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] <= 0.0f) continue;
    acc += probs[i];
    last = int32_t(i);
    if (u < acc) return int32_t(i);
  }
  return last;
}

int32_t Sampler::sample(const float* logits, std::span<const int32_t> history) {
  if (params_.greedy()) {
    penalize(logits, history, work_);
    return argmax(work_.data(), vocab_);
  }
  distribution(logits, history, work_);
  return draw(work_);
}

}  // namespace dsv3::infer
