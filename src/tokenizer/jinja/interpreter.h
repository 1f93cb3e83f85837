#pragma once
// Renders a parsed template. Scoping follows Jinja: a for loop or a macro opens a scope whose
// {% set %} assignments do not leak out (hence namespace() for state carried across a loop);
// if-blocks share their enclosing scope.
#include <string>
#include <unordered_map>

#include "tokenizer/jinja/ast.h"

namespace dsv3::tok::jinja {

using Globals = std::unordered_map<std::string, Value>;

std::string render(const StmtList& program, const Globals& globals);

}  // namespace dsv3::tok::jinja
