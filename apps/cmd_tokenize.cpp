// `dsv3 tokenize` and `dsv3 detokenize`: text <-> ids through a Hugging Face tokenizer.json.
//   dsv3 tokenize --tokenizer tokenizer.json < text          -> [id, id, ...]
//   dsv3 tokenize --tokenizer tokenizer.json --jsonl < lines -> one JSON array per JSON-string line
//   dsv3 detokenize --tokenizer tokenizer.json < ids         -> text
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "command.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

using nlohmann::json;

std::string read_stdin() {
  std::ios::sync_with_stdio(false);
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

void write(const std::string& s) { std::fwrite(s.data(), 1, s.size(), stdout); }

dsv3::app::Registrar tokenize("tokenize", "Encode text from stdin into a JSON array of token ids", [](CLI::App& sub) {
  struct Options {
    std::string tokenizer;
    bool jsonl = false, add_bos = false, replace_invalid = false;
  };
  auto opt = std::make_shared<Options>();
  sub.add_option("--tokenizer", opt->tokenizer, "tokenizer.json (tokenizer_config.json beside it is read too)")->required();
  sub.add_flag("--jsonl", opt->jsonl, "each input line is a JSON string; each output line its ids");
  sub.add_flag("--add-bos", opt->add_bos, "prepend the BOS token of tokenizer_config.json");
  sub.add_flag("--replace-invalid", opt->replace_invalid, "replace invalid UTF-8 with U+FFFD instead of failing");
  return [opt]() {
    auto tok = dsv3::tok::Tokenizer::load(opt->tokenizer);
    dsv3::tok::EncodeOptions options;
    options.add_bos = opt->add_bos;
    options.invalid_utf8 = opt->replace_invalid ? dsv3::tok::InvalidUtf8::Replace : dsv3::tok::InvalidUtf8::Reject;
    std::string input = read_stdin();
    if (!opt->jsonl) {
      write(json(tok.encode(input, options)).dump() + "\n");
      return 0;
    }
    size_t line_number = 0, start = 0;
    while (start < input.size()) {
      size_t end = input.find('\n', start);
      if (end == std::string::npos) end = input.size();
      std::string line = input.substr(start, end - start);
      start = end + 1;
      ++line_number;
      if (line.empty()) continue;
      json text;
      try {
        text = json::parse(line);
      } catch (const json::parse_error&) {
        dsv3::fail("stdin line {}: not a JSON string", line_number);
      }
      if (!text.is_string()) dsv3::fail("stdin line {}: expected a JSON string", line_number);
      try {
        write(json(tok.encode(text.get_ref<const std::string&>(), options)).dump() + "\n");
      } catch (const dsv3::Error& e) {
        dsv3::fail("stdin line {}: {}", line_number, e.what());
      }
    }
    return 0;
  };
});

// Parses a JSON array of ids (non-negative integers), naming the input in errors.
std::vector<uint32_t> parse_ids(const std::string& text, const std::string& where) {
  json ids;
  try {
    ids = json::parse(text);
  } catch (const json::parse_error&) {
    dsv3::fail("{}: not valid JSON", where);
  }
  if (!ids.is_array()) dsv3::fail("{}: expected a JSON array of token ids", where);
  std::vector<uint32_t> out;
  for (const json& id : ids) {
    if (!id.is_number_unsigned() || id.get<uint64_t>() > 0xFFFFFFFFull)
      dsv3::fail("{}: {} is not a token id", where, id.dump());
    out.push_back(id.get<uint32_t>());
  }
  return out;
}

dsv3::app::Registrar detokenize("detokenize", "Decode a JSON array of token ids from stdin into text", [](CLI::App& sub) {
  struct Options {
    std::string tokenizer;
    bool jsonl = false, skip_special = false;
  };
  auto opt = std::make_shared<Options>();
  sub.add_option("--tokenizer", opt->tokenizer, "tokenizer.json")->required();
  sub.add_flag("--jsonl", opt->jsonl, "each input line is a JSON array; each output line a JSON string");
  sub.add_flag("--skip-special", opt->skip_special, "leave special tokens out of the text");
  return [opt]() {
    auto tok = dsv3::tok::Tokenizer::load(opt->tokenizer);
    std::string input = read_stdin();
    if (!opt->jsonl) {
      write(tok.decode(parse_ids(input, "stdin"), opt->skip_special));
      return 0;
    }
    size_t line_number = 0, start = 0;
    while (start < input.size()) {
      size_t end = input.find('\n', start);
      if (end == std::string::npos) end = input.size();
      std::string line = input.substr(start, end - start);
      start = end + 1;
      ++line_number;
      if (line.empty()) continue;
      std::string where = "stdin line " + std::to_string(line_number);
      write(json(tok.decode(parse_ids(line, where), opt->skip_special)).dump() + "\n");
    }
    return 0;
  };
});

}  // namespace
