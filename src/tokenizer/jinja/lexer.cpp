#include "tokenizer/jinja/lexer.h"

#include <cstring>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok::jinja {
namespace {

// Python's str.splitlines() boundaries, joined back with "\n", as jinja2's lexer does; a final
// line break is dropped (keep_trailing_newline=False).
std::string normalize_newlines(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  bool ended_with_break = false;
  while (i < s.size()) {
    unsigned char c = s[i];
    size_t width = 0;
    if (c == '\r') width = (i + 1 < s.size() && s[i + 1] == '\n') ? 2 : 1;
    else if (c == '\n' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E)) width = 1;
    else if (s.compare(i, 2, "\xC2\x85") == 0) width = 2;
    else if (s.compare(i, 3, "\xE2\x80\xA8") == 0 || s.compare(i, 3, "\xE2\x80\xA9") == 0) width = 3;
    if (width) {
      out += '\n';
      i += width;
      ended_with_break = true;
    } else {
      out += static_cast<char>(c);
      ++i;
      ended_with_break = false;
    }
  }
  if (ended_with_break) out.pop_back();
  return out;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Python string-literal escapes (jinja2 decodes literals with "unicode-escape").
std::string unescape(const std::string& body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 >= body.size()) {
      out += body[i];
      continue;
    }
    char c = body[++i];
    auto hex = [&](size_t digits) {
      if (i + digits >= body.size()) fail("chat template line {}: truncated \\x/\\u escape", line);
      uint32_t cp = 0;
      for (size_t k = 1; k <= digits; ++k) {
        char h = body[i + k];
        if (!std::isxdigit(static_cast<unsigned char>(h))) fail("chat template line {}: bad hex escape", line);
        cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
      }
      i += digits;
      if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
      append_utf8(out, cp);
    };
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case 'a': out += '\a'; break;
      case '0': out += '\0'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case '\n': break;
      case 'x': hex(2); break;
      case 'u': hex(4); break;
      case 'U': hex(8); break;
      default: out += '\\'; out += c;
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(normalize_newlines(source)) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;  // did the previous tag's match end with a newline?
    char pending_right_strip = 0;  // '-' when the previous tag ended with "-%}" etc.
    while (pos < src_.size()) {
      size_t tag = find_tag(pos);
      std::string text = src_.substr(pos, tag - pos);
      if (pending_right_strip == '-') {
        size_t k = 0;
        while (k < text.size() && is_space(text[k])) ++k;
        text.erase(0, k);
      }
      pending_right_strip = 0;
      if (tag == src_.size()) {
        emit_text(text);
        break;
      }
      char opener = src_[tag + 1];  // '{', '%' or '#'
      char left = (tag + 2 < src_.size() && (src_[tag + 2] == '-' || src_[tag + 2] == '+')) ? src_[tag + 2] : 0;
      if (left == '-') {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if (left != '+' && opener != '{') {
        // lstrip_blocks: indentation before a block or comment tag alone on its line.
        size_t line_start = text.rfind('\n');
        line_start = line_start == std::string::npos ? 0 : line_start + 1;
        if (line_start > 0 || line_starting) {
          bool blank = true;
          for (size_t k = line_start; k < text.size(); ++k) blank = blank && is_space(text[k]);
          if (blank) text.erase(line_start);
        }
      }
      emit_text(text);
      pos = tag + 2 + (left ? 1 : 0);
      char right = 0;
      if (opener == '#') {
        size_t end = src_.find("#}", pos);
        if (end == std::string::npos) fail("chat template line {}: unclosed comment", line_at(tag));
        right = (end > pos && (src_[end - 1] == '-' || src_[end - 1] == '+')) ? src_[end - 1] : 0;
        pos = end + 2;
      } else {
        pos = lex_tag(pos, opener == '{', &right);
      }
      // What follows the tag: "-" strips all whitespace; trim_blocks drops one newline after a
      // block or comment tag.
      line_starting = false;
      if (right == '-') {
        size_t k = pos;
        while (k < src_.size() && is_space(src_[k])) ++k;
        line_starting = k > pos && src_[k - 1] == '\n';
        pos = k;
      } else if (right != '+' && opener != '{' && pos < src_.size() && src_[pos] == '\n') {
        ++pos;
        line_starting = true;
      }
      if (opener == '%' && is_raw_block()) pos = lex_raw(pos, &line_starting);
    }
    tokens_.push_back({Token::Kind::Eof, "", 0, 0, line_at(src_.size())});
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t pos) const {
    while (true) {
      size_t at = src_.find('{', pos);
      if (at == std::string::npos || at + 1 >= src_.size()) return src_.size();
      char c = src_[at + 1];
      if (c == '{' || c == '%' || c == '#') return at;
      pos = at + 1;
    }
  }

  int line_at(size_t pos) const {
    int line = 1;
    for (size_t i = 0; i < pos && i < src_.size(); ++i) line += src_[i] == '\n';
    return line;
  }

  void emit_text(const std::string& text) {
    if (!text.empty()) tokens_.push_back({Token::Kind::Text, text, 0, 0, 0});
  }

  // Lexes the inside of {{ }} or {% %} from pos; returns the position after the closing tag.
  size_t lex_tag(size_t pos, bool is_var, char* right) {
    int line = line_at(pos);
    tokens_.push_back({is_var ? Token::Kind::VarBegin : Token::Kind::BlockBegin, "", 0, 0, line});
    const char* close = is_var ? "}}" : "%}";
    int depth = 0;  // brackets opened inside the tag: "}}" closes it only at depth 0
    while (true) {
      while (pos < src_.size() && is_space(src_[pos])) ++pos;
      if (pos >= src_.size()) fail("chat template line {}: unclosed tag", line);
      if (depth == 0) {
        for (char modifier : {'-', '+'}) {
          if (src_[pos] == modifier && src_.compare(pos + 1, 2, close) == 0) {
            *right = modifier;
            tokens_.push_back({is_var ? Token::Kind::VarEnd : Token::Kind::BlockEnd, "", 0, 0, line});
            return pos + 3;
          }
        }
        if (src_.compare(pos, 2, close) == 0) {
          tokens_.push_back({is_var ? Token::Kind::VarEnd : Token::Kind::BlockEnd, "", 0, 0, line});
          return pos + 2;
        }
      }
      char c = src_[pos];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t start = pos;
        while (pos < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[pos])) || src_[pos] == '_')) ++pos;
        tokens_.push_back({Token::Kind::Name, src_.substr(start, pos - start), 0, 0, line});
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t start = pos;
        bool is_float = false;
        while (pos < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[pos])) || src_[pos] == '_')) ++pos;
        if (pos + 1 < src_.size() && src_[pos] == '.' && std::isdigit(static_cast<unsigned char>(src_[pos + 1]))) {
          is_float = true;
          ++pos;
          while (pos < src_.size() && std::isdigit(static_cast<unsigned char>(src_[pos]))) ++pos;
        }
        if (pos < src_.size() && (src_[pos] == 'e' || src_[pos] == 'E')) {
          size_t e = pos + 1;
          if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
          if (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) {
            is_float = true;
            pos = e;
            while (pos < src_.size() && std::isdigit(static_cast<unsigned char>(src_[pos]))) ++pos;
          }
        }
        std::string literal;
        for (size_t k = start; k < pos; ++k)
          if (src_[k] != '_') literal += src_[k];
        Token t{is_float ? Token::Kind::Float : Token::Kind::Int, literal, 0, 0, line};
        try {
          if (is_float) t.float_value = std::stod(literal);
          else t.int_value = std::stoll(literal);
        } catch (const std::exception&) {
          fail("chat template line {}: number {} is out of range", line, literal);
        }
        tokens_.push_back(t);
      } else if (c == '\'' || c == '"') {
        size_t start = ++pos;
        while (pos < src_.size() && src_[pos] != c) pos += src_[pos] == '\\' ? 2 : 1;
        if (pos >= src_.size()) fail("chat template line {}: unterminated string", line);
        tokens_.push_back({Token::Kind::String, unescape(src_.substr(start, pos - start), line), 0, 0, line});
        ++pos;
      } else {
        static const char* const kTwoCharOps[] = {"**", "//", "==", "!=", "<=", ">="};
        std::string op(1, c);
        for (const char* two : kTwoCharOps)
          if (src_.compare(pos, 2, two) == 0) op = two;
        if (op.size() == 1 && !std::strchr("+-*/%~<>=()[]{}.,:|", c))
          fail("chat template line {}: unexpected character '{}'", line, c);
        if (op == "(" || op == "[" || op == "{") ++depth;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
        pos += op.size();
        tokens_.push_back({Token::Kind::Op, op, 0, 0, line});
      }
    }
  }

  // {% raw %}: everything up to {% endraw %} is text.
  bool is_raw_block() const {
    size_t n = tokens_.size();
    return n >= 3 && tokens_[n - 1].kind == Token::Kind::BlockEnd && tokens_[n - 2].kind == Token::Kind::Name &&
           tokens_[n - 2].text == "raw" && tokens_[n - 3].kind == Token::Kind::BlockBegin;
  }
  size_t lex_raw(size_t pos, bool* line_starting) {
    tokens_.resize(tokens_.size() - 3);
    size_t search = pos;
    while (true) {
      size_t at = src_.find("{%", search);
      if (at == std::string::npos) fail("chat template: {{% raw %}} without {{% endraw %}}");
      size_t k = at + 2;
      bool strip_left = k < src_.size() && src_[k] == '-';
      if (k < src_.size() && (src_[k] == '-' || src_[k] == '+')) ++k;
      while (k < src_.size() && is_space(src_[k])) ++k;
      if (src_.compare(k, 6, "endraw") != 0) {
        search = at + 2;
        continue;
      }
      k += 6;
      while (k < src_.size() && is_space(src_[k])) ++k;
      char right = 0;
      if (k < src_.size() && (src_[k] == '-' || src_[k] == '+')) right = src_[k++];
      if (src_.compare(k, 2, "%}") != 0) fail("chat template: malformed {{% endraw %}}");
      std::string text = src_.substr(pos, at - pos);
      if (strip_left)
        while (!text.empty() && is_space(text.back())) text.pop_back();
      emit_text(text);
      pos = k + 2;
      *line_starting = false;
      if (right == '-') {
        while (pos < src_.size() && is_space(src_[pos])) ++pos;
      } else if (right != '+' && pos < src_.size() && src_[pos] == '\n') {
        ++pos;
        *line_starting = true;
      }
      return pos;
    }
  }

  std::string src_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> lex(const std::string& source) { return Lexer(source).run(); }

}  // namespace dsv3::tok::jinja
