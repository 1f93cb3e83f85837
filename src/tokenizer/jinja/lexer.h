#pragma once
// Lexer for the Jinja subset: splits a template into text and tag tokens and applies Jinja's
// whitespace rules exactly as jinja2 does with trim_blocks=True and lstrip_blocks=True:
// line breaks normalized to "\n" and one trailing newline dropped (keep_trailing_newline=False),
// "{%-"/"-%}" strip all whitespace on that side, "{%+"/"+%}" opt out of lstrip/trim, a block or
// comment tag alone on its line loses its indentation, and the newline after "%}" is dropped.
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3::tok::jinja {

struct Token {
  enum class Kind { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };
  Kind kind;
  std::string text;  // Text, Name, String (unescaped), Op; the literal for numbers
  int64_t int_value = 0;
  double float_value = 0;
  int line = 1;
};

std::vector<Token> lex(const std::string& source);

}  // namespace dsv3::tok::jinja
