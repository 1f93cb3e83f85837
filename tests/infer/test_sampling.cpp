// Sampling: determinism by seed and the effect of each filter and penalty.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "infer/generator.h"
#include "infer/sampling.h"

namespace {
using namespace dsv3::infer;

std::vector<float> logits() { return {1.0f, 3.0f, 2.5f, -1.0f, 0.5f, 2.9f, -3.0f, 0.0f}; }
constexpr int kV = 8;

int support(const std::vector<float>& p) {
  int n = 0;
  for (float x : p) n += x > 0;
  return n;
}

TEST(Sampling, GreedyIsArgmax) {
  Sampler s({}, kV);
  auto l = logits();
  EXPECT_EQ(s.sample(l.data(), {}), 1);
}

TEST(Sampling, SameSeedSameDraws) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 123;
  Sampler a(p, kV), b(p, kV);
  p.seed = 124;
  Sampler c(p, kV);
  auto l = logits();
  std::vector<int32_t> da, db, dc;
  for (int i = 0; i < 200; ++i) {
    da.push_back(a.sample(l.data(), {}));
    db.push_back(b.sample(l.data(), {}));
    dc.push_back(c.sample(l.data(), {}));
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
}

TEST(Sampling, TemperatureFollowsSoftmax) {
  SamplingParams p;
  p.temperature = 0.5f;
  Sampler s(p, kV);
  auto l = logits();
  std::vector<float> probs;
  s.distribution(l.data(), {}, probs);
  double z = 0;
  for (float x : l) z += std::exp(x / 0.5);
  for (int i = 0; i < kV; ++i) EXPECT_NEAR(probs[i], std::exp(l[i] / 0.5) / z, 1e-6);
  // Empirical frequencies follow it.
  std::map<int, int> count;
  const int n = 20000;
  for (int i = 0; i < n; ++i) count[s.sample(l.data(), {})]++;
  for (int i = 0; i < kV; ++i) EXPECT_NEAR(double(count[i]) / n, probs[i], 0.015) << i;
}

TEST(Sampling, TopKKeepsK) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 3;
  Sampler s(p, kV);
  auto l = logits();
  std::vector<float> probs;
  s.distribution(l.data(), {}, probs);
  EXPECT_EQ(support(probs), 3);
  EXPECT_GT(probs[1], 0);
  EXPECT_GT(probs[5], 0);
  EXPECT_GT(probs[2], 0);
  double sum = 0;
  for (float x : probs) sum += x;
  EXPECT_NEAR(sum, 1.0, 1e-6);
}

TEST(Sampling, TopPKeepsSmallestSetReachingMass) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.5f;
  Sampler s(p, kV);
  auto l = logits();
  std::vector<float> full, probs;
  Sampler({.temperature = 1.0f}, kV).distribution(l.data(), {}, full);
  s.distribution(l.data(), {}, probs);
  // Tokens 1 (3.0) and 5 (2.9): their mass passes 0.5, token 1 alone does not.
  ASSERT_LT(full[1], 0.5f);
  ASSERT_GE(full[1] + full[5], 0.5f);
  EXPECT_EQ(support(probs), 2);
  EXPECT_GT(probs[1], 0);
  EXPECT_GT(probs[5], 0);
}

TEST(Sampling, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.min_p = 0.5f;
  Sampler s(p, kV);
  auto l = logits();
  std::vector<float> full, probs;
  Sampler({.temperature = 1.0f}, kV).distribution(l.data(), {}, full);
  s.distribution(l.data(), {}, probs);
  for (int i = 0; i < kV; ++i) EXPECT_EQ(probs[i] > 0, full[i] >= 0.5f * full[1]) << i;
}

TEST(Sampling, Penalties) {
  auto l = logits();
  std::vector<float> out;
  std::vector<int32_t> history = {1, 1, 3};
  Sampler rep({.repetition_penalty = 2.0f}, kV);
  rep.penalize(l.data(), history, out);
  EXPECT_FLOAT_EQ(out[1], 1.5f);   // positive: divided
  EXPECT_FLOAT_EQ(out[3], -2.0f);  // negative: multiplied
  EXPECT_FLOAT_EQ(out[2], 2.5f);   // unseen: unchanged
  // Greedy switches from token 1 to token 5 once 1 is penalized.
  EXPECT_EQ(rep.sample(l.data(), history), 5);
  Sampler pres({.presence_penalty = 0.5f}, kV);
  pres.penalize(l.data(), history, out);
  EXPECT_FLOAT_EQ(out[1], 2.5f);
  EXPECT_FLOAT_EQ(out[3], -1.5f);
  Sampler freq({.frequency_penalty = 0.5f}, kV);
  freq.penalize(l.data(), history, out);
  EXPECT_FLOAT_EQ(out[1], 2.0f);  // seen twice
  EXPECT_FLOAT_EQ(out[3], -1.5f);
}

TEST(Sampling, InvalidParametersAreErrors) {
  EXPECT_THROW(Sampler({.temperature = -1.0f}, kV), dsv3::Error);
  EXPECT_THROW(Sampler({.top_p = 0.0f}, kV), dsv3::Error);
  EXPECT_THROW(Sampler({.min_p = 1.5f}, kV), dsv3::Error);
  EXPECT_THROW(Sampler({.top_k = -2}, kV), dsv3::Error);
}

TEST(StopStrings, HoldsBackPartialMatchesAndStops) {
  StopStrings s({"END", "\n\n"});
  EXPECT_EQ(s.push("hello E"), "hello ");
  EXPECT_EQ(s.push("N"), "");
  EXPECT_EQ(s.push("x world"), "ENx world");
  EXPECT_FALSE(s.stopped());
  EXPECT_EQ(s.push("!EN"), "!");
  EXPECT_EQ(s.push("D tail"), "");
  EXPECT_TRUE(s.stopped());
  StopStrings t({"END"});
  EXPECT_EQ(t.push("abc E"), "abc ");
  EXPECT_EQ(t.finish(), "E");
}

}  // namespace

namespace {
// The speculative-sampling rule turns drafts from q into tokens distributed as p.
TEST(Speculative, ChoiceRuleYieldsTheTargetDistribution) {
  using namespace dsv3::infer;
  const std::vector<float> p = {0.5f, 0.3f, 0.2f, 0.0f, 0.0f};
  const std::vector<float> q = {0.1f, 0.2f, 0.2f, 0.4f, 0.1f};
  Sampler s({.temperature = 1.0f, .seed = 9}, 5);
  const int n = 40000;
  std::vector<int> count(5, 0);
  int kept = 0;
  for (int i = 0; i < n; ++i) {
    const int32_t draft = s.draw(q);
    std::vector<float> pc = p;
    auto [token, accepted] = speculative_choice(pc, q, draft, s);
    count[size_t(token)]++;
    kept += accepted;
    if (accepted) EXPECT_EQ(token, draft);
  }
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(double(count[size_t(i)]) / n, p[size_t(i)], 0.01) << i;
  // Acceptance probability is sum_i min(p_i, q_i) = 0.1 + 0.2 + 0.2 = 0.5.
  EXPECT_NEAR(double(kept) / n, 0.5, 0.01);
}
}  // namespace

TEST(Sampling, OnlyAllowedIdsAreDrawn) {
  // The most likely ids (5 and 6) are not allowed: greedy and sampled draws avoid them.
  std::vector<float> logits(8, 0.0f);
  logits[5] = 9.0f;
  logits[6] = 8.0f;
  SamplingParams p;
  p.allowed = {true, true, true, true, true, false, false};  // id 7: beyond the list, not allowed
  Sampler greedy(p, 8);
  EXPECT_EQ(greedy.sample(logits.data(), {}), 0);
  p.temperature = 1.0f;
  p.seed = 3;
  Sampler sampled(p, 8);
  for (int i = 0; i < 200; ++i) EXPECT_LT(sampled.sample(logits.data(), {}), 5);
  p.allowed.assign(8, false);
  EXPECT_THROW(Sampler(p, 8), dsv3::Error);
}
