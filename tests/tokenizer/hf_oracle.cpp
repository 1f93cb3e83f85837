#include "hf_oracle.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <unistd.h>

#include <nlohmann/json.hpp>

namespace dsv3::tok::testing {
namespace {

std::string modules_dir() { return std::string(DSV3_SOURCE_DIR) + "/third_party/node/node_modules"; }

}  // namespace

std::optional<std::string> oracle_unavailable() {
  if (std::system("node --version >/dev/null 2>&1") != 0)
    return "node is not installed (scripts/setup.sh installs it)";
  if (!std::filesystem::exists(modules_dir() + "/tokenizers/package.json"))
    return "npm package tokenizers@0.23.2 is missing from third_party/node (run scripts/setup.sh)";
  return std::nullopt;
}

// Runs the oracle on JSON request lines and returns its JSON answer lines.
std::vector<nlohmann::json> run_oracle(const std::string& tokenizer_json,
                                       const std::vector<nlohmann::json>& requests) {
  auto dir = std::filesystem::temp_directory_path() /
             ("dsv3_oracle_" + std::to_string(getpid()) + "_" + std::to_string(std::rand()));
  std::filesystem::create_directories(dir);
  auto input = dir / "in.jsonl", output = dir / "out.jsonl";
  {
    std::ofstream in(input, std::ios::binary);
    for (const auto& r : requests) in << r.dump() << "\n";
  }
  std::string command = "node '" + std::string(DSV3_SOURCE_DIR) + "/tests/tokenizer/hf_oracle.js' '" +
                        tokenizer_json + "' '" + modules_dir() + "' < '" + input.string() + "' > '" +
                        output.string() + "'";
  int rc = std::system(command.c_str());
  if (rc != 0) {
    std::filesystem::remove_all(dir);
    throw std::runtime_error("oracle failed: " + command);
  }
  std::ifstream out(output, std::ios::binary);
  std::vector<nlohmann::json> answers;
  std::string line;
  while (std::getline(out, line)) answers.push_back(nlohmann::json::parse(line));
  std::filesystem::remove_all(dir);
  if (answers.size() != requests.size()) throw std::runtime_error("oracle returned the wrong count");
  return answers;
}

std::vector<OracleResult> oracle_encode(const std::string& tokenizer_json,
                                        const std::vector<std::string>& texts) {
  std::vector<nlohmann::json> requests(texts.begin(), texts.end());
  std::vector<OracleResult> results;
  for (const auto& a : run_oracle(tokenizer_json, requests))
    results.push_back({a["ids"].get<std::vector<uint32_t>>(), a["decoded"].get<std::string>()});
  return results;
}

std::vector<std::string> oracle_decode(const std::string& tokenizer_json,
                                       const std::vector<std::vector<uint32_t>>& id_lists) {
  std::vector<nlohmann::json> requests;
  for (const auto& ids : id_lists) requests.push_back({{"decode", ids}});
  std::vector<std::string> results;
  for (const auto& a : run_oracle(tokenizer_json, requests)) results.push_back(a["decoded"].get<std::string>());
  return results;
}

}  // namespace dsv3::tok::testing
