#pragma once
// Syntax tree of a parsed template: expressions and statements.
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace dsv3::tok::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,    // literal
    Name,       // name
    Attr,       // children[0].name
    Item,       // children[0][children[1]]
    Slice,      // children[0][children[1]:children[2]:children[3]] (null parts allowed)
    Call,       // children[0](children[1..], kwargs)
    Filter,     // children[0] | name(children[1..], kwargs)
    Test,       // children[0] is [not] name(children[1..])
    Not,        // not children[0]
    Negate,     // -children[0]
    Binary,     // children[0] name children[1]: + - * / // % ** ~ == != < <= > >= in "not in"
    And,
    Or,
    Conditional,  // children[0] if children[1] else children[2] (children[2] may be null)
    ListLiteral,  // [children...]
    DictLiteral,  // {children[2k]: children[2k+1]}
  };
  Kind kind;
  int line = 0;
  std::string name;
  Value literal;
  bool negated = false;
  std::vector<ExprPtr> children;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Stmt;
using StmtList = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind { Text, Output, If, For, Set, SetBlock, Macro };
  Kind kind;
  int line = 0;
  std::string text;                    // Text
  ExprPtr expr;                        // Output; Set value; For iterable
  std::vector<ExprPtr> conditions;     // If: one per branch; For: optional filter in [0]
  std::vector<StmtList> bodies;        // If: one per branch (+1 for else); For: body, else; Macro/SetBlock: body
  std::vector<std::string> targets;    // For: loop variables; Set: name or {namespace, attribute}
  std::vector<std::pair<std::string, ExprPtr>> params;  // Macro: parameters with defaults (may be null)
};

}  // namespace dsv3::tok::jinja
