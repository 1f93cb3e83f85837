#pragma once
// Shared by the data pipeline tests: a scratch folder and a tiny byte-level tokenizer written to
// disk (the 256-byte alphabet, two merges, BOS/EOS and the three FIM sentinels).
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/byte_level.h"

namespace dsv3::testing {

class ScratchDir {
 public:
  ScratchDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("dsv3_data_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::string& path, const std::string& contents) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << contents;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

struct TinyTokenizerIds {
  static constexpr uint32_t bos = 258, eos = 259, fim_hole = 260, fim_begin = 261, fim_end = 262, vocab = 263;
};

// Writes <dir>/tokenizer.json and tokenizer_config.json; returns the tokenizer.json path.
inline std::string write_tiny_tokenizer(const std::string& dir, bool add_bos = true, bool with_fim = true) {
  using nlohmann::json;
  const auto& alphabet = tok::ByteLevelAlphabet::get();
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[alphabet.encode(std::string(1, static_cast<char>(b)))] = b;
  vocab["th"] = 256;
  vocab["the"] = 257;
  json added = json::array();
  auto add = [&](uint32_t id, const char* content) {
    added.push_back({{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  };
  add(TinyTokenizerIds::bos, "<｜begin▁of▁sentence｜>");
  add(TinyTokenizerIds::eos, "<｜end▁of▁sentence｜>");
  if (with_fim) {
    add(TinyTokenizerIds::fim_hole, "<｜fim▁hole｜>");
    add(TinyTokenizerIds::fim_begin, "<｜fim▁begin｜>");
    add(TinyTokenizerIds::fim_end, "<｜fim▁end｜>");
  }
  json spec = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"t h", "th e"}}}},
               {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
               {"decoder", {{"type", "ByteLevel"}}},
               {"normalizer", nullptr},
               {"added_tokens", added}};
  std::filesystem::create_directories(dir);
  write_file(dir + "/tokenizer.json", spec.dump());
  write_file(dir + "/tokenizer_config.json",
             json({{"add_bos_token", add_bos},
                   {"bos_token", "<｜begin▁of▁sentence｜>"},
                   {"eos_token", "<｜end▁of▁sentence｜>"}})
                 .dump());
  return dir + "/tokenizer.json";
}

// The message of the dsv3::Error that `f` throws, or "" when it does not throw.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const dsv3::Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_HAS(expr, needle)                                      \
  do {                                                                      \
    std::string dsv3_message_ = ::dsv3::testing::error_of([&] { expr; });   \
    EXPECT_NE(dsv3_message_.find(needle), std::string::npos)                \
        << "error was: \"" << dsv3_message_ << "\", expected to contain \"" << (needle) << "\""; \
  } while (0)

}  // namespace dsv3::testing
