#pragma once
// The text side of generation: a model folder's tokenizer.json (and tokenizer_config.json for
// special tokens and the chat template), behind a small interface so that generation itself
// works on token ids and a folder without a tokenizer (a parity fixture) can still be driven by
// ids.
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::tok {
class Tokenizer;
class StreamDecoder;
class ChatTemplate;
}  // namespace dsv3::tok

namespace dsv3::infer {

class TextCodec {
 public:
  // The tokenizer of `model_dir`, or null when the folder has no tokenizer.json.
  static std::unique_ptr<TextCodec> open(const std::string& model_dir);
  ~TextCodec();

  // Text -> ids, with BOS first when the tokenizer config asks for it (add_bos) or `bos` is set.
  std::vector<int32_t> encode(const std::string& text, bool bos) const;
  std::string decode(std::span<const int32_t> ids) const;
  // Streaming: the text that is complete after each id; finish() flushes and resets.
  std::string push(int32_t id);
  std::string finish();
  std::optional<int32_t> eos_id() const;
  // Which ids below `n` are tokens (ids of a model's padding rows are not).
  std::vector<bool> token_ids(int n) const;
  bool adds_bos() const;
  bool has_chat_template() const;
  // Renders `messages` ([{role, content}]) with the chat template, ending with the assistant's
  // turn opener.
  std::string render_chat(const nlohmann::ordered_json& messages) const;

 private:
  TextCodec() = default;
  std::unique_ptr<tok::Tokenizer> tokenizer_;
  std::unique_ptr<tok::StreamDecoder> stream_;
  std::unique_ptr<tok::ChatTemplate> chat_;
};

}  // namespace dsv3::infer
