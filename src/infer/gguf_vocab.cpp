#include "infer/gguf_vocab.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "tokenizer/tokenizer_config.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer/trainer.h"

namespace dsv3::infer {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// llama.cpp's token types (llama_token_type).
constexpr int32_t kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5;

// The regexes of a pre-tokenizer that is a Sequence of Split(Regex, Isolated) steps ending in a
// ByteLevel step without its own regex; empty when it has another form.
std::vector<std::string> split_regexes(const json& spec) {
  if (!spec.is_object() || spec.value("type", "") != "Sequence" ||
      !spec.contains("pretokenizers") || !spec["pretokenizers"].is_array())
    return {};
  const json& steps = spec["pretokenizers"];
  std::vector<std::string> out;
  for (size_t i = 0; i < steps.size(); ++i) {
    const json& s = steps[i];
    const std::string type = s.is_object() ? s.value("type", "") : "";
    if (i + 1 == steps.size()) {
      if (type != "ByteLevel" || s.value("use_regex", true) || s.value("add_prefix_space", false))
        return {};
      break;
    }
    if (type != "Split" || s.value("behavior", "") != "Isolated" || s.value("invert", false) ||
        !s.contains("pattern") || !s["pattern"].is_object() || !s["pattern"].contains("Regex") ||
        !s["pattern"]["Regex"].is_string())
      return {};
    out.push_back(s["pattern"]["Regex"].get<std::string>());
  }
  return out;
}

// A normalizer that leaves text unchanged: null or an empty Sequence (DeepSeek-V3's).
bool identity_normalizer(const json& spec) {
  if (spec.is_null()) return true;
  if (!spec.is_object() || spec.value("type", "") != "Sequence") return false;
  const json& inner = spec.value("normalizers", json::array());
  if (!inner.is_array()) return false;
  for (const json& n : inner)
    if (!identity_normalizer(n)) return false;
  return true;
}

bool looks_special(const std::string& t) {
  auto wrapped = [&](std::string_view open, std::string_view close) {
    return t.size() >= open.size() + close.size() && t.compare(0, open.size(), open) == 0 &&
           t.compare(t.size() - close.size(), close.size(), close) == 0;
  };
  return wrapped("<|", "|>") || wrapped("<｜", "｜>");
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  DSV3_CHECK(in.good(), "{}: cannot open", p.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

GgufVocab read_gguf_vocab(const std::string& dir, const ModelConfig& c) {
  GgufVocab v;
  const fs::path tok_path = fs::path(dir) / "tokenizer.json";
  std::error_code ec;
  if (!fs::exists(tok_path, ec)) return v;
  const std::string where = tok_path.string();
  tok::TokenizerJson tj = tok::parse_tokenizer_json(read_text(tok_path), where);
  const json& rest = tj.rest;

  const json model = rest.value("model", json::object());
  DSV3_CHECK(model.is_object() && model.value("type", "BPE") == "BPE",
             "{}: model type {} is not exported (only byte-level BPE)", where,
             model.is_object() ? model.value("type", "") : model.dump());
  DSV3_CHECK(!model.value("byte_fallback", false),
             "{}: byte_fallback BPE is not exported (llama.cpp's gpt2 vocabulary has none)", where);
  DSV3_CHECK(tj.has_vocab && tj.has_merges, "{}: model.vocab or model.merges is missing", where);
  DSV3_CHECK(identity_normalizer(rest.value("normalizer", json())),
             "{}: the normalizer changes text; llama.cpp's deepseek-v3 vocabulary has none", where);
  const std::vector<std::string> ours =
      split_regexes(json::parse(tok::deepseek_pre_tokenizer().dump()));
  const std::vector<std::string> theirs = split_regexes(rest.value("pre_tokenizer", json()));
  DSV3_CHECK(!theirs.empty() && theirs == ours,
             "{}: the pre-tokenizer is not DeepSeek-V3's, and llama.cpp would split text "
             "differently; export without the vocabulary (--no-vocab) instead",
             where);

  const int32_t n = c.vocab_size;
  v.model = "gpt2";
  v.pre = "deepseek-v3";
  v.tokens.assign(size_t(n), std::string());
  v.types.assign(size_t(n), kUnused);
  std::vector<bool> have(size_t(n), false);
  std::map<std::string, int32_t> id_of;
  auto place = [&](uint32_t id, const std::string& text, int32_t type) {
    DSV3_CHECK(id < uint32_t(n), "{}: token id {} ('{}') is outside the model's vocab_size {}",
               where, id, text, n);
    v.tokens[id] = text;
    v.types[id] = type;
    have[id] = true;
    id_of[text] = int32_t(id);
  };
  for (const auto& [text, id] : tj.vocab) place(id, text, kNormal);
  const json added = rest.value("added_tokens", json::array());
  DSV3_CHECK(added.is_array(), "{}: added_tokens must be a list", where);
  for (const json& a : added) {
    DSV3_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_unsigned() &&
                   a.contains("content") && a["content"].is_string(),
               "{}: an added token needs an id and a content: {}", where, a.dump());
    const std::string content = a["content"];
    const bool special = a.value("special", false) || looks_special(content);
    place(a["id"].get<uint32_t>(), content, special ? kControl : kUserDefined);
  }
  for (int32_t i = 0; i < n; ++i)
    if (!have[size_t(i)]) v.tokens[size_t(i)] = "[PAD" + std::to_string(i) + "]";

  v.merges.reserve(tj.merges.size());
  for (const auto& [left, right] : tj.merges) v.merges.push_back(left + " " + right);

  // Special ids: tokenizer_config.json names the tokens; config.json has fallback ids.
  const fs::path cfg_path = fs::path(dir) / "tokenizer_config.json";
  auto id_for = [&](const std::optional<std::string>& content,
                    const char* what) -> std::optional<int32_t> {
    if (!content) return std::nullopt;
    auto it = id_of.find(*content);
    DSV3_CHECK(it != id_of.end(), "{}: {} '{}' is not a token of tokenizer.json", cfg_path.string(),
               what, *content);
    return it->second;
  };
  if (fs::exists(cfg_path, ec)) {
    const tok::TokenizerConfig tc = tok::TokenizerConfig::load(cfg_path.string());
    v.bos = id_for(tc.bos_token, "bos_token");
    v.eos = id_for(tc.eos_token, "eos_token");
    v.pad = id_for(tc.pad_token, "pad_token");
    v.add_bos = tc.add_bos_token;
    v.add_eos = tc.add_eos_token;
    v.chat_template = tc.chat_template;
  }
  if (!v.bos && c.bos_token_id && *c.bos_token_id < n) v.bos = *c.bos_token_id;
  if (!v.eos && c.eos_token_id && *c.eos_token_id < n) v.eos = *c.eos_token_id;
  return v;
}

void add_gguf_vocab(gguf::Writer& w, const GgufVocab& v) {
  w.add_string("tokenizer.ggml.model", v.model);
  if (v.model == "none") return;
  w.add_string("tokenizer.ggml.pre", v.pre);
  w.add_strings("tokenizer.ggml.tokens", v.tokens);
  w.add_i32s("tokenizer.ggml.token_type", v.types);
  w.add_strings("tokenizer.ggml.merges", v.merges);
  if (v.bos) w.add_u32("tokenizer.ggml.bos_token_id", uint32_t(*v.bos));
  if (v.eos) w.add_u32("tokenizer.ggml.eos_token_id", uint32_t(*v.eos));
  if (v.pad) w.add_u32("tokenizer.ggml.padding_token_id", uint32_t(*v.pad));
  if (v.add_bos) w.add_bool("tokenizer.ggml.add_bos_token", *v.add_bos);
  if (v.add_eos) w.add_bool("tokenizer.ggml.add_eos_token", *v.add_eos);
  if (!v.chat_template.empty()) w.add_string("tokenizer.chat_template", v.chat_template);
}

}  // namespace dsv3::infer
