#pragma once
// Shared by the tokenizer tests: where the fetched DeepSeek-V3 files are, loaded once.
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"

namespace dsv3::tok::testing {

inline std::string deepseek_dir() { return std::string(DSV3_SOURCE_DIR) + "/third_party/deepseek_v3/models"; }
inline std::string deepseek_json() { return deepseek_dir() + "/tokenizer.json"; }

// The DeepSeek-V3 tokenizer, loaded once per test binary. scripts/setup.sh fetches it; a missing
// file fails the test (it is not skipped) because setup is part of every build.
inline const Tokenizer& deepseek() {
  static const Tokenizer tokenizer = [] {
    if (!std::filesystem::exists(deepseek_json()))
      throw std::runtime_error(deepseek_json() + " is missing: run scripts/setup.sh");
    return Tokenizer::load(deepseek_json());
  }();
  return tokenizer;
}

}  // namespace dsv3::tok::testing
