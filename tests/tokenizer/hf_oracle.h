#pragma once
// Runs tests/tokenizer/hf_oracle.js (Hugging Face tokenizers through Node) on a list of strings.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dsv3::tok::testing {

struct OracleResult {
  std::vector<uint32_t> ids;
  std::string decoded;
};

// Why the oracle cannot run (node or the npm package missing), or nullopt when it can.
std::optional<std::string> oracle_unavailable();

// Encodes each text with the oracle; throws std::runtime_error when node fails.
std::vector<OracleResult> oracle_encode(const std::string& tokenizer_json,
                                        const std::vector<std::string>& texts);

// Decodes each id list with the oracle.
std::vector<std::string> oracle_decode(const std::string& tokenizer_json,
                                       const std::vector<std::vector<uint32_t>>& id_lists);

}  // namespace dsv3::tok::testing
