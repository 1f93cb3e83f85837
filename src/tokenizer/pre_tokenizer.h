#pragma once
// The pre-tokenizer: splits text into the pieces ("pre-tokens") that BPE encodes one by one.
// Supported from tokenizer.json: Sequence, Split (Regex or String pattern, every delimiter
// behaviour, invert) and ByteLevel (use_regex with GPT-2's pattern; add_prefix_space=false). The
// byte-level character mapping itself is implicit: dsv3 runs BPE on raw bytes.
#include <memory>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dsv3::tok {

// A piece of the input text: [begin, end) byte offsets.
struct Span {
  size_t begin, end;
};

class PreTokenizerStep {
 public:
  virtual ~PreTokenizerStep() = default;
  // Splits text[piece] and appends the resulting non-empty spans (absolute offsets) to out.
  virtual void split(std::string_view text, Span piece, std::vector<Span>& out) const = 0;
};

class PreTokenizer {
 public:
  // Builds from the "pre_tokenizer" value of tokenizer.json (null: the whole text is one piece).
  static PreTokenizer from_json(const nlohmann::json& spec);

  // Splits text (valid UTF-8) into pieces, in order, covering the text exactly (except for what a
  // Removed split drops). `scratch` is reused between calls to avoid allocation.
  void split(std::string_view text, std::vector<Span>& pieces, std::vector<Span>& scratch) const;

 private:
  std::vector<std::unique_ptr<PreTokenizerStep>> steps_;
};

}  // namespace dsv3::tok
