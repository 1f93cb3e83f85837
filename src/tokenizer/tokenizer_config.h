#pragma once
// tokenizer_config.json: the special tokens a caller adds and the chat template.
#include <optional>
#include <string>

namespace dsv3::tok {

struct TokenizerConfig {
  std::optional<std::string> bos_token;  // content of the BOS token, when named
  std::optional<std::string> eos_token;
  std::optional<std::string> pad_token;
  bool add_bos_token = false;
  bool add_eos_token = false;
  std::string chat_template;  // empty when the file has none

  static TokenizerConfig load(const std::string& path);
  // Parses the JSON text; `where` names the source in errors.
  static TokenizerConfig parse(const std::string& text, const std::string& where);
};

}  // namespace dsv3::tok
