#pragma once
// Added tokens (special or not) found inside text before pre-tokenization, with Hugging Face's
// rules: leftmost-longest matching, then single_word / lstrip / rstrip. Tokens marked
// normalized=false are matched first over the raw text; normalized ones then inside the gaps
// (the normalizer is the identity in every tokenizer dsv3 accepts, so no text changes between).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/pre_tokenizer.h"

namespace dsv3::tok {

struct AddedToken {
  uint32_t id = 0;
  std::string content;
  bool special = false;
  bool normalized = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

// A segment of the input: an added token's id, or plain text to pre-tokenize and BPE-encode.
struct Segment {
  Span span;
  bool is_token;
  uint32_t id;
};

// Byte trie over a set of added tokens, for leftmost-longest search.
class TokenTrie {
 public:
  void add(std::string_view content, uint32_t token_index);
  bool empty() const { return nodes_.size() <= 1; }
  // Longest token starting at text[pos]: returns its length and sets *token_index, or 0.
  size_t longest_at(std::string_view text, size_t pos, uint32_t* token_index) const;
  // Can a token start with this byte? (lets the scan skip most of the text cheaply)
  bool may_start(uint8_t byte) const { return first_bytes_[byte]; }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, uint32_t>> children;  // sorted by byte
    int32_t token = -1;
  };
  std::vector<Node> nodes_{1};
  bool first_bytes_[256] = {};
};

class AddedTokens {
 public:
  void add(AddedToken token);
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  bool empty() const { return tokens_.empty(); }

  // Splits text into segments (in order, covering it). Plain-text segments may be empty-free but
  // adjacent; token segments carry their id.
  void segment(std::string_view text, std::vector<Segment>& out) const;

 private:
  void find_in(std::string_view text, Span span, const TokenTrie& trie, std::vector<Segment>& out) const;
  std::vector<AddedToken> tokens_;
  TokenTrie raw_trie_;         // normalized == false
  TokenTrie normalized_trie_;  // normalized == true
};

}  // namespace dsv3::tok
