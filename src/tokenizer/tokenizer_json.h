#pragma once
// Streaming parse of tokenizer.json. The vocabulary and merge list are most of the file (7 MB for
// DeepSeek-V3); they go straight into flat vectors instead of a JSON tree of 250k nodes, which
// halves load time. Everything else is kept as a JSON tree.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::tok {

struct TokenizerJson {
  nlohmann::json rest;  // the document without model.vocab and model.merges
  std::vector<std::pair<std::string, uint32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
  bool has_vocab = false, has_merges = false;
};

// Throws dsv3::Error naming `where` for invalid JSON or a malformed vocab or merge entry.
TokenizerJson parse_tokenizer_json(std::string_view text, const std::string& where);

}  // namespace dsv3::tok
