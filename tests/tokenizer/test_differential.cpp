// Differential test against the live oracle (Hugging Face tokenizers 0.23.2 through Node) on
// freshly generated random Unicode strings. The seed is printed so a failure can be replayed with
// DSV3_TOKENIZER_SEED.
#include <chrono>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "hf_oracle.h"
#include "random_text.h"
#include "tokenizer_test_util.h"

namespace dsv3::tok::testing {
namespace {

TEST(TokenizerDifferential, RandomUnicodeMatchesHuggingFace) {
  if (auto why = oracle_unavailable()) GTEST_SKIP() << "differential test not run: " << *why;
  const Tokenizer& tok = deepseek();
  uint64_t seed = std::chrono::steady_clock::now().time_since_epoch().count();
  if (const char* s = std::getenv("DSV3_TOKENIZER_SEED")) seed = std::strtoull(s, nullptr, 10);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);

  // Fragments of added tokens, whole and cut, so that matching inside text is exercised.
  std::vector<std::string> fragments = {"<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>",
                                        "<｜tool▁sep｜>", "<｜User", "｜>", "<think>", "</think>"};
  int count = 2000;  // DSV3_TOKENIZER_DIFF_COUNT runs a longer campaign
  if (const char* n = std::getenv("DSV3_TOKENIZER_DIFF_COUNT")) count = std::atoi(n);
  std::vector<std::string> texts;
  for (int i = 0; i < count; ++i) texts.push_back(random_text(rng, fragments));
  auto expected = oracle_encode(deepseek_json(), texts);

  size_t mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    auto ids = tok.encode(texts[i]);
    if (ids != expected[i].ids) {
      if (++mismatches <= 5)
        ADD_FAILURE() << "encode differs on " << nlohmann::json(texts[i]).dump() << "\n  dsv3 "
                      << nlohmann::json(ids).dump() << "\n  hf   " << nlohmann::json(expected[i].ids).dump();
    }
    if (tok.decode(expected[i].ids) != expected[i].decoded) {
      if (++mismatches <= 5) ADD_FAILURE() << "decode differs on " << nlohmann::json(texts[i]).dump();
    }
  }
  EXPECT_EQ(mismatches, 0u) << "of " << texts.size() << " random strings";
}

// Shuffled ids break byte sequences mid-character: U+FFFD must appear exactly where Hugging Face
// puts it, and special tokens must decode to their text.
TEST(TokenizerDifferential, DecodingShuffledIdsMatchesHuggingFace) {
  if (auto why = oracle_unavailable()) GTEST_SKIP() << "differential test not run: " << *why;
  const Tokenizer& tok = deepseek();
  uint64_t seed = std::chrono::steady_clock::now().time_since_epoch().count();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<std::string> texts;
  for (int i = 0; i < 300; ++i) texts.push_back(random_text(rng, {"<｜User｜>", "<｜tool▁sep｜>"}));
  std::vector<std::vector<uint32_t>> id_lists;
  for (const auto& t : texts) {
    auto ids = tok.encode(t);
    std::shuffle(ids.begin(), ids.end(), rng);
    id_lists.push_back(ids);
  }
  auto expected = oracle_decode(deepseek_json(), id_lists);
  size_t mismatches = 0;
  for (size_t i = 0; i < id_lists.size(); ++i) {
    if (tok.decode(id_lists[i]) != expected[i] && ++mismatches <= 5)
      ADD_FAILURE() << "decode differs on " << nlohmann::json(id_lists[i]).dump();
  }
  EXPECT_EQ(mismatches, 0u);
}

}  // namespace
}  // namespace dsv3::tok::testing
