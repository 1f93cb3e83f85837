#include "tokenizer/tokenizer_json.h"

#include "core/error.h"

namespace dsv3::tok {
namespace {

using json = nlohmann::json;

// SAX handler: forwards events to nlohmann's tree builder except inside model.vocab and
// model.merges, which it collects itself.
class Handler {
 public:
  Handler(TokenizerJson& out, const std::string& where) : out_(out), where_(where), dom_(out.rest, true) {}

  bool null() { return value("null", [&] { return dom_.null(); }); }
  bool boolean(bool v) { return value("a boolean", [&] { return dom_.boolean(v); }); }
  bool number_integer(json::number_integer_t v) {
    if (capture_ == Capture::Vocab) {
      if (v < 0) fail("{}: model.vocab[\"{}\"]: id {} is negative", where_, vocab_key_, v);
      return vocab_entry(static_cast<uint64_t>(v));
    }
    return value("a number", [&] { return dom_.number_integer(v); });
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (capture_ == Capture::Vocab) return vocab_entry(v);
    return value("a number", [&] { return dom_.number_unsigned(v); });
  }
  bool number_float(json::number_float_t v, const std::string& s) {
    return value("a number", [&] { return dom_.number_float(v, s); });
  }
  bool string(std::string& s) {
    if (capture_ == Capture::Merges) {
      if (pair_depth_ == 1) {
        pair_.push_back(std::move(s));
        return true;
      }
      size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        fail("{}: model.merges[{}]: \"{}\" is not two tokens separated by a space", where_, out_.merges.size(), s);
      out_.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      return true;
    }
    return value("a string", [&] { return dom_.string(s); });
  }
  bool binary(json::binary_t& b) { return dom_.binary(b); }

  bool start_object(std::size_t n) {
    if (capture_ == Capture::VocabPending) {
      capture_ = Capture::Vocab;
      out_.has_vocab = true;
      if (n != static_cast<std::size_t>(-1)) out_.vocab.reserve(n);
      return true;
    }
    check_not_captured("an object");
    enter();
    return dom_.start_object(n);
  }
  bool key(std::string& k) {
    if (capture_ == Capture::Vocab) {
      vocab_key_ = std::move(k);
      return true;
    }
    if (depth_ == 1) root_key_ = k;
    if (depth_ == 2 && root_key_ == "model" && (k == "vocab" || k == "merges")) {
      capture_ = k == "vocab" ? Capture::VocabPending : Capture::MergesPending;
      return true;  // the key is not forwarded: the value will not be either
    }
    return dom_.key(k);
  }
  bool end_object() {
    if (capture_ == Capture::Vocab) {
      capture_ = Capture::None;
      return true;
    }
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    if (capture_ == Capture::MergesPending) {
      capture_ = Capture::Merges;
      out_.has_merges = true;
      if (n != static_cast<std::size_t>(-1)) out_.merges.reserve(n);
      return true;
    }
    if (capture_ == Capture::Merges && pair_depth_ == 0) {
      pair_depth_ = 1;
      pair_.clear();
      return true;
    }
    check_not_captured("a list");
    enter();
    return dom_.start_array(n);
  }
  bool end_array() {
    if (capture_ == Capture::Merges) {
      if (pair_depth_ == 1) {
        if (pair_.size() != 2)
          fail("{}: model.merges[{}]: expected \"a b\" or [\"a\", \"b\"]", where_, out_.merges.size());
        out_.merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
        pair_depth_ = 0;
      } else {
        capture_ = Capture::None;
      }
      return true;
    }
    --depth_;
    return dom_.end_array();
  }
  bool parse_error(std::size_t position, const std::string& last_token, const nlohmann::detail::exception& e) {
    fail("{}: not valid JSON at byte {} ({})", where_, position, e.what());
  }

 private:
  enum class Capture { None, VocabPending, Vocab, MergesPending, Merges };
  // Real files nest a few levels; the components are built recursively, so a hostile file must
  // not nest deep enough to exhaust the stack.
  static constexpr int kMaxDepth = 128;

  void enter() {
    if (++depth_ > kMaxDepth) fail("{}: nested more than {} levels", where_, kMaxDepth);
  }

  template <typename Forward>
  bool value(const char* what, Forward forward) {
    check_not_captured(what);
    return forward();
  }
  void check_not_captured(const char* what) {
    switch (capture_) {
      case Capture::None: return;
      case Capture::VocabPending:
      case Capture::Vocab: fail("{}: model.vocab: unexpected {} (expected token: id pairs)", where_, what);
      case Capture::MergesPending:
      case Capture::Merges: fail("{}: model.merges[{}]: expected \"a b\" or [\"a\", \"b\"]", where_, out_.merges.size());
    }
  }
  bool vocab_entry(uint64_t id) {
    if (id >= 0xFFFFFFFFull) fail("{}: model.vocab[\"{}\"]: id {} is too large", where_, vocab_key_, id);
    out_.vocab.emplace_back(std::move(vocab_key_), static_cast<uint32_t>(id));
    return true;
  }

  TokenizerJson& out_;
  const std::string& where_;
  nlohmann::detail::json_sax_dom_parser<json> dom_;
  Capture capture_ = Capture::None;
  int depth_ = 0;
  int pair_depth_ = 0;
  std::string root_key_, vocab_key_;
  std::vector<std::string> pair_;
};

}  // namespace

TokenizerJson parse_tokenizer_json(std::string_view text, const std::string& where) {
  TokenizerJson out;
  Handler handler(out, where);
  try {
    json::sax_parse(text.begin(), text.end(), &handler);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", where, e.what());
  }
  return out;
}

}  // namespace dsv3::tok
