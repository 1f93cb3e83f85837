#include "infer/text.h"

#include <filesystem>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::infer {

std::unique_ptr<TextCodec> TextCodec::open(const std::string& model_dir) {
  namespace fs = std::filesystem;
  fs::path dir = fs::is_directory(model_dir) ? fs::path(model_dir) : fs::path(model_dir).parent_path();
  fs::path json = dir / "tokenizer.json";
  if (!fs::exists(json)) return nullptr;
  std::unique_ptr<TextCodec> t(new TextCodec());
  t->tokenizer_ = std::make_unique<tok::Tokenizer>(tok::Tokenizer::load(json.string()));
  t->stream_ = std::make_unique<tok::StreamDecoder>(*t->tokenizer_);
  if (!t->tokenizer_->config().chat_template.empty())
    t->chat_ = std::make_unique<tok::ChatTemplate>(t->tokenizer_->config().chat_template);
  return t;
}

TextCodec::~TextCodec() = default;

std::vector<int32_t> TextCodec::encode(const std::string& text, bool bos) const {
  tok::EncodeOptions o;
  o.add_bos = bos && tokenizer_->bos_id().has_value();
  std::vector<uint32_t> ids = tokenizer_->encode(text, o);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string TextCodec::decode(std::span<const int32_t> ids) const {
  std::vector<uint32_t> u(ids.begin(), ids.end());
  return tokenizer_->decode(u);
}

std::string TextCodec::push(int32_t id) { return stream_->push(uint32_t(id)); }
std::string TextCodec::finish() { return stream_->finish(); }

std::vector<bool> TextCodec::token_ids(int n) const {
  std::vector<bool> known(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) known[size_t(i)] = tokenizer_->has_id(uint32_t(i));
  return known;
}

std::optional<int32_t> TextCodec::eos_id() const {
  auto e = tokenizer_->eos_id();
  if (!e) return std::nullopt;
  return int32_t(*e);
}

bool TextCodec::adds_bos() const { return tokenizer_->config().add_bos_token; }
bool TextCodec::has_chat_template() const { return chat_ != nullptr; }

std::string TextCodec::render_chat(const nlohmann::ordered_json& messages) const {
  DSV3_CHECK(chat_ != nullptr, "the tokenizer config has no chat_template");
  nlohmann::ordered_json context;
  context["messages"] = messages;
  const auto& c = tokenizer_->config();
  if (c.bos_token) context["bos_token"] = *c.bos_token;
  if (c.eos_token) context["eos_token"] = *c.eos_token;
  context["add_generation_prompt"] = true;
  return chat_->render(context);
}

}  // namespace dsv3::infer
