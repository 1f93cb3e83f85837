#pragma once
// Byte-level BPE training: counts the pre-tokens of a corpus (DeepSeek-V3's pre-tokenizer), then
// repeatedly merges the most frequent adjacent pair until the vocabulary reaches the asked size.
// The result is a tokenizer.json that Hugging Face's tokenizers loads and encodes identically to
// dsv3, and a tokenizer_config.json beside it.
#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::tok {

// Special tokens of a trained tokenizer, in id order (ids 0..): DeepSeek-V3's names.
const std::vector<std::string>& default_special_tokens();
constexpr const char* kBosToken = "<｜begin▁of▁sentence｜>";
constexpr const char* kEosToken = "<｜end▁of▁sentence｜>";
constexpr const char* kPadToken = "<｜▁pad▁｜>";
constexpr const char* kFimHoleToken = "<｜fim▁hole｜>";
constexpr const char* kFimBeginToken = "<｜fim▁begin｜>";
constexpr const char* kFimEndToken = "<｜fim▁end｜>";

struct TrainerOptions {
  size_t vocab_size = 4096;  // special tokens + 256 bytes + merges
  std::vector<std::string> special_tokens = default_special_tokens();
  std::string chat_template;  // copied into tokenizer_config.json when not empty
  bool verbose = false;
};

struct TrainedTokenizer {
  nlohmann::ordered_json tokenizer;  // tokenizer.json
  nlohmann::ordered_json config;     // tokenizer_config.json
  size_t merges = 0;
};

// Counts pre-tokens over the files (in parallel) and learns merges.
TrainedTokenizer train_bpe(const std::vector<std::string>& files, const TrainerOptions& options);

// Writes tokenizer.json to `path` and tokenizer_config.json in the same folder.
void write_trained(const TrainedTokenizer& trained, const std::string& path);

// The pre-tokenizer DeepSeek-V3 uses (digits, CJK runs, then words/punctuation/whitespace).
nlohmann::ordered_json deepseek_pre_tokenizer();

}  // namespace dsv3::tok
