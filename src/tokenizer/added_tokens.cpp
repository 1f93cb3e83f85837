#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok {

void TokenTrie::add(std::string_view content, uint32_t token_index) {
  if (content.empty()) return;
  uint32_t node = 0;
  for (char c : content) {
    uint8_t byte = static_cast<uint8_t>(c);
    auto& children = nodes_[node].children;
    auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(byte, 0u),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    if (it != children.end() && it->first == byte) {
      node = it->second;
    } else {
      uint32_t child = static_cast<uint32_t>(nodes_.size());
      children.insert(it, {byte, child});
      nodes_.emplace_back();
      node = child;
    }
  }
  nodes_[node].token = static_cast<int32_t>(token_index);
  first_bytes_[static_cast<uint8_t>(content[0])] = true;
}

size_t TokenTrie::longest_at(std::string_view text, size_t pos, uint32_t* token_index) const {
  uint32_t node = 0;
  size_t best = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& children = nodes_[node].children;
    uint8_t byte = static_cast<uint8_t>(text[i]);
    auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(byte, 0u),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    if (it == children.end() || it->first != byte) break;
    node = it->second;
    if (nodes_[node].token >= 0) {
      best = i + 1 - pos;
      *token_index = static_cast<uint32_t>(nodes_[node].token);
    }
  }
  return best;
}

void AddedTokens::add(AddedToken token) {
  uint32_t index = static_cast<uint32_t>(tokens_.size());
  (token.normalized ? normalized_trie_ : raw_trie_).add(token.content, index);
  tokens_.push_back(std::move(token));
}

namespace {

// Rust's char::is_alphanumeric (Alphabetic or Numeric) and char::is_whitespace (White_Space),
// which Hugging Face uses for single_word, lstrip and rstrip.
bool is_word_char(uint32_t cp) {
  static const Regex word("^[\\p{Alphabetic}\\p{Nd}\\p{Nl}\\p{No}]$");
  std::string s;
  append_utf8(s, cp);
  size_t b, e;
  return word.find(s, 0, &b, &e);
}
bool is_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}
// The code point that ends at byte `end` (text is valid UTF-8).
uint32_t code_point_before(std::string_view text, size_t end, size_t* start) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<uint8_t>(text[i]) & 0xC0) == 0x80) --i;
  *start = i;
  size_t j = i;
  return next_code_point(text, j);
}

}  // namespace

void AddedTokens::find_in(std::string_view text, Span span, const TokenTrie& trie,
                          std::vector<Segment>& out) const {
  std::string_view sentence = text.substr(0, span.end);  // flags look only inside the span
  size_t start_offset = span.begin;
  size_t pos = span.begin;
  while (pos < span.end) {
    if (!trie.may_start(static_cast<uint8_t>(sentence[pos]))) {
      ++pos;
      continue;
    }
    uint32_t index = 0;
    size_t length = trie.longest_at(sentence, pos, &index);
    if (length == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + length;
    pos = stop;  // matches never overlap, even when one is discarded below
    const AddedToken& token = tokens_[index];
    if (token.single_word) {
      size_t ignored;
      bool space_before = start == span.begin || !is_word_char(code_point_before(sentence, start, &ignored));
      size_t after = stop;
      bool space_after = stop == span.end || !is_word_char(next_code_point(sentence, after));
      if (!space_before || !space_after) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > span.begin) {
        size_t cp_start;
        if (!is_whitespace(code_point_before(sentence, new_start, &cp_start))) break;
        new_start = cp_start;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < span.end) {
        size_t next = stop;
        if (!is_whitespace(next_code_point(sentence, next))) break;
        stop = next;
      }
    }
    if (start_offset < start) out.push_back({{start_offset, start}, false, 0});
    out.push_back({{start, stop}, true, token.id});
    start_offset = stop;
  }
  if (start_offset < span.end) out.push_back({{start_offset, span.end}, false, 0});
}

void AddedTokens::segment(std::string_view text, std::vector<Segment>& out) const {
  out.clear();
  if (raw_trie_.empty()) {
    out.push_back({{0, text.size()}, false, 0});
  } else {
    find_in(text, {0, text.size()}, raw_trie_, out);
  }
  if (normalized_trie_.empty()) return;
  std::vector<Segment> first_pass;
  first_pass.swap(out);
  for (const Segment& s : first_pass) {
    if (s.is_token) out.push_back(s);
    else find_in(text, s.span, normalized_trie_, out);
  }
}

}  // namespace dsv3::tok
