#pragma once
// Chat templates: the Jinja template of tokenizer_config.json, rendered by dsv3's own interpreter
// of the Jinja subset that chat templates use. Output is byte-identical to python3-jinja2's
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) as Hugging Face uses it.
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace dsv3::tok {

namespace jinja {
struct Stmt;
}

class ChatTemplate {
 public:
  // Parses the template; syntax errors are reported with their line.
  explicit ChatTemplate(const std::string& source);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;

  // Renders with `context` (a JSON object: messages, tools, ...) as the template's variables,
  // plus raise_exception() and namespace(). Template errors and raise_exception throw dsv3::Error.
  std::string render(const nlohmann::ordered_json& context) const;

 private:
  std::unique_ptr<std::vector<std::unique_ptr<jinja::Stmt>>> program_;
};

}  // namespace dsv3::tok
