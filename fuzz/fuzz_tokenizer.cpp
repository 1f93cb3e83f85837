// Fuzz target for the tokenizer: the tokenizer.json loader on mutated JSON, the encoder and the
// streaming decoder on arbitrary bytes, and the chat-template parser and renderer on arbitrary
// templates. Any dsv3::Error is an accepted outcome; a crash, sanitizer report or broken
// invariant is a bug.
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"
#include "tokenizer/utf8.h"

namespace {

using nlohmann::json;
using dsv3::tok::Tokenizer;

// A small byte-level tokenizer with DeepSeek-V3's pre-tokenizer, a few merges, and added tokens.
json small_tokenizer(bool flagged_tokens) {
  json vocab = json::object();
  int next_extra = 256, id = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    std::string s;
    dsv3::tok::append_utf8(s, printable ? b : next_extra++);
    vocab[s] = id++;
  }
  json merges = json::array();
  for (const char* m : {"Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "e n", "a n"}) {
    std::string text = m;
    size_t space = text.find(' ');
    std::string merged = text.substr(0, space) + text.substr(space + 1);
    if (!vocab.contains(merged)) vocab[merged] = id++;
    merges.push_back(text);
  }
  json added = json::array();
  auto add = [&](const std::string& content, bool lstrip, bool rstrip, bool single_word, bool normalized) {
    added.push_back({{"id", id++}, {"content", content}, {"single_word", single_word}, {"lstrip", lstrip},
                     {"rstrip", rstrip}, {"normalized", normalized}, {"special", true}});
  };
  add("<｜User｜>", false, false, false, false);
  add("<｜Assistant｜>", false, false, false, true);
  if (flagged_tokens) {
    add("<mask>", true, true, false, false);
    add("word", false, false, true, true);
  }
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
          {"pre_tokenizer", dsv3::tok::deepseek_pre_tokenizer()},
          {"normalizer", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"added_tokens", added}};
}

const Tokenizer& plain() {
  static const Tokenizer t = Tokenizer::from_json_text(small_tokenizer(false).dump(), "fuzz");
  return t;
}
const Tokenizer& flagged() {
  static const Tokenizer t = Tokenizer::from_json_text(small_tokenizer(true).dump(), "fuzz");
  return t;
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

void fuzz_encoder(const std::string& text) {
  // Plain tokenizer: byte-level BPE is lossless, so valid text must round-trip.
  try {
    auto ids = plain().encode(text);
    check(dsv3::tok::find_invalid_utf8(text) == std::string_view::npos, "invalid UTF-8 was accepted");
    check(plain().decode(ids) == text, "decode(encode(text)) != text");
    dsv3::tok::StreamDecoder stream(plain());
    std::string streamed;
    for (uint32_t id : ids) streamed += stream.push(id);
    streamed += stream.finish();
    check(streamed == text, "streamed decode differs");
  } catch (const dsv3::Error&) {
    check(dsv3::tok::find_invalid_utf8(text) != std::string_view::npos, "valid UTF-8 was rejected");
  }
  auto replaced = flagged().encode(text, {.invalid_utf8 = dsv3::tok::InvalidUtf8::Replace});
  std::string decoded = flagged().decode(replaced);
  check(dsv3::tok::find_invalid_utf8(decoded) == std::string_view::npos, "decode produced invalid UTF-8");
}

void fuzz_loader(const std::string& text) {
  try {
    Tokenizer t = Tokenizer::from_json_text(text, "fuzz");
    auto ids = t.encode("Hello world, 12345 你好 <｜User｜>  \n");
    (void)t.decode(ids);
  } catch (const dsv3::Error&) {
  }
}

void fuzz_template(const std::string& text) {
  try {
    dsv3::tok::ChatTemplate t(text);
    nlohmann::ordered_json context = {
        {"messages", {{{"role", "user"}, {"content", "hi"}}, {{"role", "assistant"}, {"content", nullptr}}}},
        {"add_generation_prompt", true},
        {"bos_token", "<s>"}};
    (void)t.render(context);
  } catch (const dsv3::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0: fuzz_encoder(rest); break;
    case 1: fuzz_loader(rest); break;
    case 2: fuzz_template(rest); break;
  }
  return 0;
}
