#include "tokenizer/tokenizer.h"

#include <atomic>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/piece_cache.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok {

using json = nlohmann::json;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The normalizer must leave text unchanged: null or a Sequence of nothing (what DeepSeek-V3
// ships). Anything else would change the ids, so it is refused rather than ignored.
void check_normalizer(const json& spec, const std::string& where) {
  if (spec.is_null()) return;
  std::string type = spec.is_object() ? spec.value("type", "") : "";
  if (type == "Sequence" && spec.contains("normalizers") && spec["normalizers"].is_array()) {
    for (const json& inner : spec["normalizers"]) check_normalizer(inner, where);
    return;
  }
  fail("{}: unsupported normalizer type \"{}\"", where, type);
}

void check_decoder(const json& spec, const std::string& where) {
  if (!spec.is_object()) fail("{}: decoder must be ByteLevel", where);
  std::string type = spec.value("type", "");
  if (type == "ByteLevel") return;
  if (type == "Sequence" && spec.contains("decoders") && spec["decoders"].is_array()) {
    for (const json& inner : spec["decoders"]) check_decoder(inner, where);
    return;
  }
  fail("{}: unsupported decoder type \"{}\"", where, type);
}

// Post-processors only add special tokens (which dsv3 adds from tokenizer_config.json instead)
// or adjust offsets; the ids of a plain encode do not depend on them.
void check_post_processor(const json& spec, const std::string& where) {
  if (spec.is_null()) return;
  std::string type = spec.is_object() ? spec.value("type", "") : "";
  if (type == "ByteLevel" || type == "TemplateProcessing") return;
  if (type == "Sequence" && spec.contains("processors") && spec["processors"].is_array()) {
    for (const json& inner : spec["processors"]) check_post_processor(inner, where);
    return;
  }
  fail("{}: unsupported post_processor type \"{}\"", where, type);
}

bool flag(const json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_boolean() && it->get<bool>();
}

std::atomic<uint64_t> next_serial{1};

// A member by reference (json::value() would copy the 7 MB model), or null when absent.
const json& member(const json& object, const char* key) {
  static const json null_value;
  auto it = object.find(key);
  return it == object.end() ? null_value : *it;
}

// The calling thread's cache, emptied when it last served another tokenizer.
PieceCache& piece_cache(uint64_t serial) {
  thread_local PieceCache cache;
  thread_local uint64_t owner = 0;
  if (owner != serial) {
    cache.clear();
    owner = serial;
  }
  return cache;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  std::string text = read_file(path);
  std::optional<TokenizerConfig> config;
  auto config_path = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) config = TokenizerConfig::load(config_path.string());
  return from_json_text(text, path, config);
}

Tokenizer Tokenizer::from_json_text(std::string_view text, const std::string& where,
                                    const std::optional<TokenizerConfig>& config) {
  TokenizerJson parsed = parse_tokenizer_json(text, where);
  const json& spec = parsed.rest;
  if (!spec.is_object()) fail("{}: expected a JSON object", where);

  Tokenizer tok;
  tok.serial_ = next_serial++;
  try {
    check_normalizer(member(spec, "normalizer"), where);
    check_decoder(member(spec, "decoder"), where);
    check_post_processor(member(spec, "post_processor"), where);
    const json& model = member(spec, "model");
    if (model.is_object() && (!parsed.has_vocab || !parsed.has_merges))
      fail("{}: model needs \"vocab\" and \"merges\"", where);
    tok.model_ = BpeModel::from_parts(model, std::move(parsed.vocab), parsed.merges);
    tok.pre_tokenizer_ = PreTokenizer::from_json(member(spec, "pre_tokenizer"));

    uint32_t max_id = 0;
    for (const auto& [token, id] : tok.model_.vocab()) max_id = std::max(max_id, id);
    const json& added = member(spec, "added_tokens");
    if (!added.is_null() && !added.is_array()) fail("{}: added_tokens must be a list", where);
    static const json no_tokens = json::array();
    for (const json& entry : added.is_array() ? added : no_tokens) {
      if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_unsigned() ||
          !entry.contains("content") || !entry["content"].is_string())
        fail("{}: each added token needs an unsigned \"id\" and a string \"content\"", where);
      AddedToken token;
      uint64_t id = entry["id"].get<uint64_t>();
      if (id >= (1ull << 31)) fail("{}: added token id {} is too large", where, id);
      token.id = static_cast<uint32_t>(id);
      token.content = entry["content"].get<std::string>();
      if (token.content.empty()) fail("{}: added token {} has empty content", where, id);
      if (find_invalid_utf8(token.content) != std::string_view::npos)
        fail("{}: added token {} is not valid UTF-8", where, id);
      token.special = flag(entry, "special");
      token.normalized = flag(entry, "normalized");
      token.lstrip = flag(entry, "lstrip");
      token.rstrip = flag(entry, "rstrip");
      token.single_word = flag(entry, "single_word");
      max_id = std::max(max_id, token.id);
      tok.added_.add(std::move(token));
    }
    if (max_id >= (1u << 31)) fail("{}: ids up to {} are too large", where, max_id);

    // Decoding table. Like Hugging Face's ByteLevel decoder, a token whose characters are all in
    // the byte-level alphabet stands for those bytes; any other token for its own UTF-8 text.
    const size_t count = static_cast<size_t>(max_id) + 1;
    std::vector<const std::string*> text_of(count, nullptr);
    for (const auto& [token, id] : tok.model_.vocab()) text_of[id] = &token;
    tok.known_.assign(count, false);
    tok.special_.assign(count, false);
    for (const AddedToken& token : tok.added_.tokens()) {
      text_of[token.id] = &token.content;
      tok.special_[token.id] = token.special;
    }
    const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::get();
    tok.decode_offsets_.resize(count + 1);
    for (size_t id = 0; id < count; ++id) {
      tok.decode_offsets_[id] = static_cast<uint32_t>(tok.decode_bytes_.size());
      if (!text_of[id]) continue;
      tok.known_[id] = true;
      if (auto bytes = alphabet.decode(*text_of[id])) tok.decode_bytes_ += *bytes;
      else tok.decode_bytes_ += *text_of[id];
    }
    tok.decode_offsets_[count] = static_cast<uint32_t>(tok.decode_bytes_.size());
  } catch (const json::exception& e) {
    fail("{}: malformed tokenizer ({})", where, e.what());
  }
  if (config) tok.apply_config(*config);
  return tok;
}

void Tokenizer::apply_config(const TokenizerConfig& config) {
  config_ = config;
  auto resolve = [&](const std::optional<std::string>& content, const char* what) -> std::optional<uint32_t> {
    if (!content) return std::nullopt;
    auto id = token_to_id(*content);
    if (!id) fail("tokenizer_config.json: {} \"{}\" is not a token of tokenizer.json", what, *content);
    return id;
  };
  bos_id_ = resolve(config.bos_token, "bos_token");
  eos_id_ = resolve(config.eos_token, "eos_token");
}

std::optional<uint32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const AddedToken& added : added_.tokens())
    if (added.content == token) return added.id;
  auto it = model_.vocab().find(std::string(token));
  if (it != model_.vocab().end()) return it->second;
  return std::nullopt;
}

void Tokenizer::encode_piece(std::string_view piece, std::vector<uint32_t>& out) const {
  if (piece.size() > PieceCache::kMaxPieceBytes) {
    model_.encode_word(piece, out);
    return;
  }
  PieceCache& cache = piece_cache(serial_);
  const uint64_t hash = PieceCache::hash(piece);
  const uint32_t* cached;
  size_t count;
  if (cache.find(piece, hash, &cached, &count)) {
    out.insert(out.end(), cached, cached + count);
    return;
  }
  size_t before = out.size();
  model_.encode_word(piece, out);
  cache.insert(piece, hash, out.data() + before, out.size() - before);
}

void Tokenizer::encode_text(std::string_view text, std::vector<uint32_t>& out) const {
  thread_local std::vector<Segment> segments;
  thread_local std::vector<Span> pieces, scratch;
  added_.segment(text, segments);
  for (const Segment& segment : segments) {
    if (segment.is_token) {
      out.push_back(segment.id);
      continue;
    }
    std::string_view part = text.substr(segment.span.begin, segment.span.end - segment.span.begin);
    pre_tokenizer_.split(part, pieces, scratch);
    for (Span piece : pieces) encode_piece(part.substr(piece.begin, piece.end - piece.begin), out);
  }
}

std::vector<uint32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<uint32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (options.add_bos) {
    if (!bos_id_) fail("encode: BOS requested but the tokenizer has no bos_token (tokenizer_config.json)");
    ids.push_back(*bos_id_);
  }
  size_t bad = find_invalid_utf8(text);
  if (bad == std::string_view::npos) {
    encode_text(text, ids);
  } else if (options.invalid_utf8 == InvalidUtf8::Replace) {
    encode_text(make_valid_utf8(text), ids);
  } else {
    fail("encode: input is not valid UTF-8 at byte offset {}", bad);
  }
  return ids;
}

std::vector<std::vector<uint32_t>> Tokenizer::encode_batch(std::span<const std::string_view> texts,
                                                           const EncodeOptions& options) const {
  std::vector<std::vector<uint32_t>> results(texts.size());
  std::vector<std::exception_ptr> errors(texts.size());
  const long count = static_cast<long>(texts.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (long i = 0; i < count; ++i) {
    try {
      results[i] = encode(texts[i], options);
    } catch (...) {
      errors[i] = std::current_exception();  // exceptions must not leave an OpenMP region
    }
  }
  for (size_t i = 0; i < errors.size(); ++i) {
    if (!errors[i]) continue;
    try {
      std::rethrow_exception(errors[i]);
    } catch (const Error& e) {
      fail("batch item {}: {}", i, e.what());
    }
  }
  return results;
}

std::string_view Tokenizer::token_bytes(uint32_t id) const {
  if (!has_id(id)) fail("decode: id {} is not in the vocabulary (size {})", id, vocab_size());
  return std::string_view(decode_bytes_).substr(decode_offsets_[id], decode_offsets_[id + 1] - decode_offsets_[id]);
}

std::string Tokenizer::decode(std::span<const uint32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (uint32_t id : ids) {
    std::string_view b = token_bytes(id);
    if (skip_special_tokens && is_special(id)) continue;
    bytes.append(b);
  }
  if (find_invalid_utf8(bytes) == std::string_view::npos) return bytes;
  return make_valid_utf8(bytes);
}

}  // namespace dsv3::tok
