#include "tokenizer/tokenizer_config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv3::tok {

using json = nlohmann::json;

namespace {

// A token is written either as a plain string or as an AddedToken object {"content": ...}.
std::optional<std::string> token_content(const json& config, const char* key, const std::string& where) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  fail("{}: \"{}\" must be a string or an object with a string \"content\"", where, key);
}

bool flag(const json& config, const char* key, bool fallback, const std::string& where) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail("{}: \"{}\" must be true or false", where, key);
  return it->get<bool>();
}

}  // namespace

TokenizerConfig TokenizerConfig::parse(const std::string& text, const std::string& where) {
  json config;
  try {
    config = json::parse(text);
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON ({})", where, e.what());
  }
  if (!config.is_object()) fail("{}: expected a JSON object", where);
  TokenizerConfig result;
  result.bos_token = token_content(config, "bos_token", where);
  result.eos_token = token_content(config, "eos_token", where);
  result.pad_token = token_content(config, "pad_token", where);
  result.add_bos_token = flag(config, "add_bos_token", false, where);
  result.add_eos_token = flag(config, "add_eos_token", false, where);
  auto it = config.find("chat_template");
  if (it != config.end() && !it->is_null()) {
    if (it->is_string()) {
      result.chat_template = it->get<std::string>();
    } else if (it->is_array()) {
      // Newer files hold a list of named templates; "default" is the one used for chat.
      for (const json& entry : *it)
        if (entry.value("name", "") == "default") result.chat_template = entry.value("template", "");
      if (result.chat_template.empty()) fail("{}: chat_template list has no \"default\" entry", where);
    } else {
      fail("{}: chat_template must be a string", where);
    }
  }
  return result;
}

TokenizerConfig TokenizerConfig::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse(buffer.str(), path);
}

}  // namespace dsv3::tok
