#pragma once
// UTF-8 checks used at the tokenizer's boundary: text must be valid UTF-8 before it is split by
// Unicode-aware regexes, and decoded bytes must be made valid before they are handed out.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv3::tok {

// Length of the valid UTF-8 sequence starting at s[i], or 0 when the bytes there do not start one
// (a stray continuation byte, an overlong form, a surrogate, a truncated sequence, > U+10FFFF).
size_t utf8_sequence_length(std::string_view s, size_t i);

// Byte offset of the first invalid sequence, or npos when `s` is valid UTF-8.
size_t find_invalid_utf8(std::string_view s);

// Replaces every invalid sequence with U+FFFD the way Rust's String::from_utf8_lossy does (and so
// Hugging Face's decoders): each maximal prefix of a would-be sequence becomes one replacement.
std::string make_valid_utf8(std::string_view s);

// Length of the longest prefix of s[i..] that a valid sequence could still grow from (1..3 bytes
// of a multi-byte character cut short at the end of s), or 0 when s[i] cannot start such a prefix.
size_t utf8_incomplete_prefix_length(std::string_view s, size_t i);

// Appends the UTF-8 encoding of a code point (which must be <= U+10FFFF and not a surrogate).
void append_utf8(std::string& out, uint32_t code_point);

// Decodes the code point at s[i] (which must start a valid sequence) and advances i past it.
uint32_t next_code_point(std::string_view s, size_t& i);

}  // namespace dsv3::tok
