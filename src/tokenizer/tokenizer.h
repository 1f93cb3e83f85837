#pragma once
// A Hugging Face byte-level BPE tokenizer (DeepSeek-V3, Llama-3 and Qwen style tokenizer.json):
// encodes exactly as the `tokenizers` library does with add_special_tokens=false, decodes like its
// ByteLevel decoder, and prepends BOS when asked (tokenizer_config.json's add_bos_token).
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer_config.h"

namespace dsv3::tok {

enum class InvalidUtf8 {
  Reject,   // throw dsv3::Error naming the byte offset of the first bad sequence
  Replace,  // replace each bad sequence with U+FFFD, as Rust's from_utf8_lossy does
};

struct EncodeOptions {
  bool add_bos = false;  // prepend the BOS id (an error when the tokenizer has none)
  InvalidUtf8 invalid_utf8 = InvalidUtf8::Reject;
};

class Tokenizer {
 public:
  // Loads tokenizer.json; reads tokenizer_config.json from the same folder when it is there.
  static Tokenizer load(const std::string& tokenizer_json_path);
  // Builds from the text of a tokenizer.json (and optionally of a tokenizer_config.json).
  static Tokenizer from_json_text(std::string_view tokenizer_json, const std::string& where,
                                  const std::optional<TokenizerConfig>& config = std::nullopt);

  std::vector<uint32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;
  // Encodes many texts on all OpenMP threads; results are in input order.
  std::vector<std::vector<uint32_t>> encode_batch(std::span<const std::string_view> texts,
                                                  const EncodeOptions& options = {}) const;

  // Ids -> text; byte sequences that are not valid UTF-8 become U+FFFD (as in Hugging Face).
  // An id outside the vocabulary is an error.
  std::string decode(std::span<const uint32_t> ids, bool skip_special_tokens = false) const;
  // The raw bytes one id stands for (may be part of a UTF-8 character).
  std::string_view token_bytes(uint32_t id) const;
  bool is_special(uint32_t id) const { return id < special_.size() && special_[id]; }
  bool has_id(uint32_t id) const { return id < known_.size() && known_[id]; }

  std::optional<uint32_t> token_to_id(std::string_view token) const;
  // One past the largest id (model vocabulary and added tokens together).
  size_t vocab_size() const { return known_.size(); }

  const TokenizerConfig& config() const { return config_; }
  std::optional<uint32_t> bos_id() const { return bos_id_; }
  std::optional<uint32_t> eos_id() const { return eos_id_; }
  const AddedTokens& added_tokens() const { return added_; }
  const BpeModel& model() const { return model_; }

 private:
  void encode_text(std::string_view text, std::vector<uint32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<uint32_t>& out) const;
  void apply_config(const TokenizerConfig& config);

  BpeModel model_;
  PreTokenizer pre_tokenizer_;
  AddedTokens added_;
  TokenizerConfig config_;
  std::optional<uint32_t> bos_id_, eos_id_;
  std::string decode_bytes_;             // every id's bytes, back to back
  std::vector<uint32_t> decode_offsets_; // id -> [offsets[id], offsets[id + 1])
  std::vector<bool> known_, special_;
  uint64_t serial_ = 0;                  // identifies this tokenizer to the per-thread cache
};

}  // namespace dsv3::tok
