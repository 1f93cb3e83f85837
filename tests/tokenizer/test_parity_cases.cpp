// Parity with Hugging Face tokenizers 0.23.2 on the 545 reference cases (../shared/tokenizer).
#include <fstream>

#include <nlohmann/json.hpp>

#include "tokenizer_test_util.h"

namespace dsv3::tok::testing {
namespace {

TEST(TokenizerParity, AllReferenceCasesEncodeAndDecodeIdentically) {
  const Tokenizer& tok = deepseek();
  std::ifstream in(std::string(DSV3_TEST_DATA) + "/tokenizer/cases.jsonl");
  ASSERT_TRUE(in) << "tests/data/tokenizer/cases.jsonl is missing";
  std::string line;
  size_t cases = 0, encode_mismatches = 0, decode_mismatches = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto c = nlohmann::json::parse(line);
    std::string text = c["text"];
    std::vector<uint32_t> expected = c["ids"].get<std::vector<uint32_t>>();
    std::vector<uint32_t> ids = tok.encode(text);
    if (ids != expected) {
      ++encode_mismatches;
      ADD_FAILURE() << "case " << cases << " encodes differently: " << nlohmann::json(text).dump()
                    << "\n  got      " << nlohmann::json(ids).dump()
                    << "\n  expected " << nlohmann::json(expected).dump();
    }
    std::string decoded = tok.decode(expected);
    if (decoded != c["decoded"].get<std::string>()) {
      ++decode_mismatches;
      ADD_FAILURE() << "case " << cases << " decodes differently: " << nlohmann::json(decoded).dump();
    }
    ++cases;
  }
  EXPECT_EQ(cases, 545u);
  EXPECT_EQ(encode_mismatches, 0u);
  EXPECT_EQ(decode_mismatches, 0u);
}

TEST(TokenizerParity, BosIsPrependedWhenAsked) {
  const Tokenizer& tok = deepseek();
  ASSERT_TRUE(tok.bos_id().has_value());
  EXPECT_TRUE(tok.config().add_bos_token);
  auto plain = tok.encode("Hello world");
  auto with_bos = tok.encode("Hello world", {.add_bos = true});
  ASSERT_EQ(with_bos.size(), plain.size() + 1);
  EXPECT_EQ(with_bos[0], *tok.bos_id());
  EXPECT_EQ(tok.decode(std::vector<uint32_t>{*tok.bos_id()}), "<｜begin▁of▁sentence｜>");
}

}  // namespace
}  // namespace dsv3::tok::testing
