// Malformed or unsupported tokenizer files are refused with one clear error.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::tok {
namespace {

using json = nlohmann::json;

// A tiny valid byte-level tokenizer: the 256-byte alphabet plus one merge.
json tiny_tokenizer() {
  json vocab = json::object();
  const char* letters[] = {"a", "b", "ab"};
  int id = 0;
  for (const char* l : letters) vocab[l] = id++;
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"a b"}}}},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"normalizer", nullptr},
          {"added_tokens", json::array()}};
}

std::string error_of(const json& spec) {
  try {
    Tokenizer::from_json_text(spec.dump(), "test.json");
  } catch (const dsv3::Error& e) {
    return e.what();
  }
  return "";
}

TEST(TokenizerLoader, TinyTokenizerWorksWithBothMergeForms) {
  json spec = tiny_tokenizer();
  auto tok = Tokenizer::from_json_text(spec.dump(), "test.json");
  EXPECT_EQ(tok.encode("ab"), (std::vector<uint32_t>{2}));
  spec["model"]["merges"] = json::array({json::array({"a", "b"})});
  auto pair_form = Tokenizer::from_json_text(spec.dump(), "test.json");
  EXPECT_EQ(pair_form.encode("abba"), (std::vector<uint32_t>{2, 1, 0}));
}

TEST(TokenizerLoader, UnsupportedComponentsAreRefusedByName) {
  json spec = tiny_tokenizer();
  spec["normalizer"] = {{"type", "NFKC"}};
  EXPECT_NE(error_of(spec).find("unsupported normalizer type \"NFKC\""), std::string::npos) << error_of(spec);
  spec = tiny_tokenizer();
  spec["pre_tokenizer"] = {{"type", "Metaspace"}};
  EXPECT_NE(error_of(spec).find("unsupported type \"Metaspace\""), std::string::npos) << error_of(spec);
  spec = tiny_tokenizer();
  spec["model"]["type"] = "WordPiece";
  EXPECT_NE(error_of(spec).find("WordPiece"), std::string::npos) << error_of(spec);
  spec = tiny_tokenizer();
  spec["decoder"] = {{"type", "WordPiece"}};
  EXPECT_NE(error_of(spec).find("unsupported decoder type"), std::string::npos) << error_of(spec);
}

TEST(TokenizerLoader, MalformedFilesGiveOneLineErrors) {
  EXPECT_NE(error_of(json("not an object")).find("expected a JSON object"), std::string::npos);
  json spec = tiny_tokenizer();
  spec["model"]["merges"] = {"a c"};
  EXPECT_NE(error_of(spec).find("not in the vocabulary"), std::string::npos) << error_of(spec);
  spec = tiny_tokenizer();
  spec["model"]["merges"] = {"abc"};
  EXPECT_NE(error_of(spec).find("two tokens"), std::string::npos) << error_of(spec);
  spec = tiny_tokenizer();
  spec["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(error_of(spec).find("regex"), std::string::npos) << error_of(spec);
  spec = tiny_tokenizer();
  spec["model"]["vocab"]["a"] = "zero";
  EXPECT_FALSE(error_of(spec).empty());
  EXPECT_THROW(Tokenizer::from_json_text("{\"model\": ", "x"), dsv3::Error);
  // Deep nesting is refused before the recursive component builders see it.
  std::string deep = "{\"pre_tokenizer\":";
  for (int i = 0; i < 100000; ++i) deep += "{\"type\":\"Sequence\",\"pretokenizers\":[";
  for (int i = 0; i < 100000; ++i) deep += "]}";
  deep += "}";
  EXPECT_THROW(Tokenizer::from_json_text(deep, "x"), dsv3::Error);
  EXPECT_THROW(Tokenizer::load("/nonexistent/tokenizer.json"), dsv3::Error);
}

}  // namespace
}  // namespace dsv3::tok
