#pragma once
// Parser for the Jinja subset: tokens -> statement tree. Grammar and precedence follow jinja2's
// parser (or < and < not < comparisons < + - < ~ < * / // % < ** < unary < postfix, filters, tests).
#include <string>

#include "tokenizer/jinja/ast.h"

namespace dsv3::tok::jinja {

// Parses a template; throws dsv3::Error naming the line for syntax errors and unknown tags.
StmtList parse_template(const std::string& source);

}  // namespace dsv3::tok::jinja
