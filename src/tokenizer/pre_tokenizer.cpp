#include "tokenizer/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok {
namespace {

using json = nlohmann::json;

// GPT-2's pattern, used by the ByteLevel pre-tokenizer when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const std::string& name) {
  if (name == "Removed") return Behavior::Removed;
  if (name == "Isolated") return Behavior::Isolated;
  if (name == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::MergedWithNext;
  if (name == "Contiguous") return Behavior::Contiguous;
  fail("tokenizer.json pre_tokenizer: unknown Split behavior \"{}\"", name);
}

// A delimiter search: a regex, or a literal string.
struct Delimiter {
  std::unique_ptr<Regex> regex;
  std::string literal;

  bool find(std::string_view subject, size_t start, size_t* b, size_t* e) const {
    if (regex) return regex->find(subject, start, b, e);
    size_t at = subject.find(literal, start);
    if (at == std::string_view::npos) return false;
    *b = at;
    *e = at + literal.size();
    return true;
  }
};

// Split with a delimiter: marks matches and gaps, then applies the delimiter behaviour the way
// Hugging Face's NormalizedString::split does. Empty pieces are dropped.
class SplitStep : public PreTokenizerStep {
 public:
  SplitStep(Delimiter delimiter, Behavior behavior, bool invert)
      : delimiter_(std::move(delimiter)), behavior_(behavior), invert_(invert) {}

  void split(std::string_view text, Span piece, std::vector<Span>& out) const override {
    std::string_view subject = text.substr(piece.begin, piece.end - piece.begin);
    if (behavior_ == Behavior::Isolated && !invert_) {
      split_isolated(subject, piece.begin, out);
      return;
    }
    // General path: collect (span, is_match), then fold by behaviour.
    struct Marked {
      Span span;
      bool is_match;
    };
    std::vector<Marked> marks;
    size_t previous = 0, pos = 0, b = 0, e = 0;
    while (pos <= subject.size() && delimiter_.find(subject, pos, &b, &e)) {
      if (e == b) {  // an empty match splits nothing; step over one character
        if (b >= subject.size()) break;
        pos = b + std::max<size_t>(1, utf8_sequence_length(subject, b));
        continue;
      }
      if (previous != b) marks.push_back({{previous, b}, invert_});
      marks.push_back({{b, e}, !invert_});
      previous = pos = e;
    }
    if (previous != subject.size()) marks.push_back({{previous, subject.size()}, invert_});

    std::vector<Span> result;
    bool previous_match = false;
    switch (behavior_) {
      case Behavior::Removed:
        for (auto& m : marks)
          if (!m.is_match) result.push_back(m.span);
        break;
      case Behavior::Isolated:
        for (auto& m : marks) result.push_back(m.span);
        break;
      case Behavior::MergedWithPrevious:
        for (auto& m : marks) {
          if (m.is_match && !previous_match && !result.empty()) result.back().end = m.span.end;
          else result.push_back(m.span);
          previous_match = m.is_match;
        }
        break;
      case Behavior::MergedWithNext: {
        for (auto it = marks.rbegin(); it != marks.rend(); ++it) {
          if (it->is_match && !previous_match && !result.empty()) result.back().begin = it->span.begin;
          else result.push_back(it->span);
          previous_match = it->is_match;
        }
        std::reverse(result.begin(), result.end());
        break;
      }
      case Behavior::Contiguous:
        for (auto& m : marks) {
          if (m.is_match == previous_match && !result.empty()) result.back().end = m.span.end;
          else result.push_back(m.span);
          previous_match = m.is_match;
        }
        break;
    }
    for (Span s : result)
      if (s.end > s.begin) out.push_back({piece.begin + s.begin, piece.begin + s.end});
  }

 private:
  // The common case (every tokenizer we target): matches and gaps all become pieces.
  void split_isolated(std::string_view subject, size_t base, std::vector<Span>& out) const {
    size_t previous = 0, pos = 0, b = 0, e = 0;
    while (pos <= subject.size() && delimiter_.find(subject, pos, &b, &e)) {
      if (e == b) {
        if (b >= subject.size()) break;
        pos = b + std::max<size_t>(1, utf8_sequence_length(subject, b));
        continue;
      }
      if (previous != b) out.push_back({base + previous, base + b});
      out.push_back({base + b, base + e});
      previous = pos = e;
    }
    if (previous != subject.size()) out.push_back({base + previous, base + subject.size()});
  }

  Delimiter delimiter_;
  Behavior behavior_;
  bool invert_;
};

const json& require(const json& object, const char* key, const char* where) {
  auto it = object.find(key);
  if (it == object.end()) fail("tokenizer.json {}: missing \"{}\"", where, key);
  return *it;
}

void add_steps(const json& spec, std::vector<std::unique_ptr<PreTokenizerStep>>& steps) {
  if (spec.is_null()) return;
  if (!spec.is_object()) fail("tokenizer.json pre_tokenizer: expected an object");
  std::string type = require(spec, "type", "pre_tokenizer").get<std::string>();
  if (type == "Sequence") {
    const json& list = require(spec, "pretokenizers", "pre_tokenizer Sequence");
    if (!list.is_array()) fail("tokenizer.json pre_tokenizer Sequence: pretokenizers is not a list");
    for (const json& item : list) add_steps(item, steps);
  } else if (type == "Split") {
    const json& pattern = require(spec, "pattern", "pre_tokenizer Split");
    Delimiter delimiter;
    if (pattern.contains("Regex")) {
      delimiter.regex = std::make_unique<Regex>(pattern["Regex"].get<std::string>());
    } else if (pattern.contains("String")) {
      delimiter.literal = pattern["String"].get<std::string>();
      if (delimiter.literal.empty()) fail("tokenizer.json pre_tokenizer Split: empty String pattern");
    } else {
      fail("tokenizer.json pre_tokenizer Split: pattern must hold \"Regex\" or \"String\"");
    }
    Behavior behavior = parse_behavior(require(spec, "behavior", "pre_tokenizer Split").get<std::string>());
    bool invert = spec.value("invert", false);
    steps.push_back(std::make_unique<SplitStep>(std::move(delimiter), behavior, invert));
  } else if (type == "ByteLevel") {
    if (spec.value("add_prefix_space", false))
      fail("tokenizer.json pre_tokenizer ByteLevel: add_prefix_space=true is not supported");
    if (spec.value("use_regex", true)) {
      Delimiter delimiter;
      delimiter.regex = std::make_unique<Regex>(kGpt2Pattern);
      steps.push_back(std::make_unique<SplitStep>(std::move(delimiter), Behavior::Isolated, false));
    }
  } else {
    fail("tokenizer.json pre_tokenizer: unsupported type \"{}\"", type);
  }
}

}  // namespace

PreTokenizer PreTokenizer::from_json(const json& spec) {
  PreTokenizer result;
  add_steps(spec, result.steps_);
  return result;
}

void PreTokenizer::split(std::string_view text, std::vector<Span>& pieces,
                         std::vector<Span>& scratch) const {
  pieces.clear();
  if (!text.empty()) pieces.push_back({0, text.size()});
  for (const auto& step : steps_) {
    scratch.clear();
    for (Span piece : pieces) step->split(text, piece, scratch);
    pieces.swap(scratch);
  }
}

}  // namespace dsv3::tok
