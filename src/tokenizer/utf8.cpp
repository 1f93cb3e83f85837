#include "tokenizer/utf8.h"

namespace dsv3::tok {
namespace {

// The valid ranges of the second byte depend on the first (Unicode Table 3-7): this rules out
// overlong forms, surrogates and code points past U+10FFFF.
struct LeadInfo {
  int length;             // total sequence length, 0 when the byte cannot lead
  uint8_t second_lo, second_hi;
};

LeadInfo lead_info(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Number of bytes from s[i] that are a valid (possibly incomplete) prefix of one sequence.
size_t valid_prefix(std::string_view s, size_t i, int* full_length) {
  LeadInfo info = lead_info(static_cast<uint8_t>(s[i]));
  *full_length = info.length;
  if (info.length == 0) return 0;
  if (info.length == 1) return 1;
  size_t n = 1;
  if (i + 1 >= s.size()) return n;
  uint8_t second = static_cast<uint8_t>(s[i + 1]);
  if (second < info.second_lo || second > info.second_hi) return n;
  n = 2;
  while (n < static_cast<size_t>(info.length) && i + n < s.size()) {
    uint8_t c = static_cast<uint8_t>(s[i + n]);
    if ((c & 0xC0) != 0x80) break;
    ++n;
  }
  return n;
}

}  // namespace

size_t utf8_sequence_length(std::string_view s, size_t i) {
  int full = 0;
  size_t n = valid_prefix(s, i, &full);
  return (full > 0 && n == static_cast<size_t>(full)) ? n : 0;
}

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t size = s.size();
  while (i < size) {
    // Fast path over ASCII, eight bytes at a time.
    while (i + 8 <= size) {
      uint64_t word;
      __builtin_memcpy(&word, s.data() + i, 8);
      if (word & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= size) break;
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t n = utf8_sequence_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string make_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    int full = 0;
    size_t n = valid_prefix(s, i, &full);
    if (full > 0 && n == static_cast<size_t>(full)) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += n == 0 ? 1 : n;
    }
  }
  return out;
}

size_t utf8_incomplete_prefix_length(std::string_view s, size_t i) {
  int full = 0;
  size_t n = valid_prefix(s, i, &full);
  if (full > 1 && n < static_cast<size_t>(full) && i + n == s.size()) return n;
  return 0;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

uint32_t next_code_point(std::string_view s, size_t& i) {
  uint8_t b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) {
    ++i;
    return b;
  }
  int length = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
  uint32_t cp = b & (0x7F >> length);
  for (int k = 1; k < length; ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
  i += length;
  return cp;
}

}  // namespace dsv3::tok
