#include "tokenizer/jinja/parser.h"

#include "core/error.h"
#include "tokenizer/jinja/lexer.h"

namespace dsv3::tok::jinja {
namespace {

using K = Token::Kind;

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  StmtList parse_all() {
    std::string stopped_at;
    StmtList body = parse_body({}, &stopped_at);
    return body;
  }

 private:
  const Token& peek(size_t ahead = 0) const { return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)]; }
  const Token& next() { return tokens_[std::min(pos_++, tokens_.size() - 1)]; }
  bool is_op(const char* op, size_t ahead = 0) const { return peek(ahead).kind == K::Op && peek(ahead).text == op; }
  bool is_name(const char* name, size_t ahead = 0) const { return peek(ahead).kind == K::Name && peek(ahead).text == name; }
  [[noreturn]] void error(const std::string& what) const { fail("chat template line {}: {}", peek().line, what); }
  void expect_op(const char* op) {
    if (!is_op(op)) error(fmt::format("expected '{}'", op));
    ++pos_;
  }
  std::string expect_name() {
    if (peek().kind != K::Name) error("expected a name");
    return next().text;
  }
  void expect_block_end() {
    if (peek().kind != K::BlockEnd) error("expected end of tag '%}'");
    ++pos_;
  }

  // Parses statements until a block tag whose keyword is in `stops` (left unconsumed except for
  // its keyword, which is stored in *stopped_at) or the end of the template.
  StmtList parse_body(const std::vector<std::string>& stops, std::string* stopped_at) {
    StmtList body;
    while (true) {
      const Token& t = peek();
      if (t.kind == K::Eof) {
        if (!stops.empty()) error(fmt::format("missing {{% {} %}}", stops.back()));
        return body;
      }
      if (t.kind == K::Text) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Text;
        s->text = next().text;
        body.push_back(std::move(s));
      } else if (t.kind == K::VarBegin) {
        ++pos_;
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Output;
        s->line = t.line;
        s->expr = parse_expression();
        if (peek().kind != K::VarEnd) error("expected end of expression '}}'");
        ++pos_;
        body.push_back(std::move(s));
      } else if (t.kind == K::BlockBegin) {
        const Token& keyword = peek(1);
        if (keyword.kind != K::Name) error("expected a tag name after '{%'");
        for (const auto& stop : stops) {
          if (keyword.text == stop) {
            pos_ += 2;
            *stopped_at = stop;
            return body;
          }
        }
        pos_ += 2;
        body.push_back(parse_statement(keyword.text, t.line));
      } else {
        error("unexpected token");
      }
    }
  }

  std::unique_ptr<Stmt> parse_statement(const std::string& keyword, int line) {
    if (++block_depth_ > kMaxDepth) error("blocks nested too deeply");
    struct Leave {
      int& depth;
      ~Leave() { --depth; }
    } leave{block_depth_};
    auto s = std::make_unique<Stmt>();
    s->line = line;
    std::string stop;
    if (keyword == "if") {
      s->kind = Stmt::Kind::If;
      s->conditions.push_back(parse_expression());
      expect_block_end();
      while (true) {
        s->bodies.push_back(parse_body({"elif", "else", "endif"}, &stop));
        if (stop == "elif") {
          s->conditions.push_back(parse_expression());
          expect_block_end();
        } else if (stop == "else") {
          expect_block_end();
          s->bodies.push_back(parse_body({"endif"}, &stop));
          expect_block_end();
          break;
        } else {
          expect_block_end();
          break;
        }
      }
    } else if (keyword == "for") {
      s->kind = Stmt::Kind::For;
      s->targets.push_back(expect_name());
      while (is_op(",")) {
        ++pos_;
        s->targets.push_back(expect_name());
      }
      if (!is_name("in")) error("expected 'in' in for loop");
      ++pos_;
      s->expr = parse_or_expr(/*allow_conditional=*/false);
      if (is_name("if")) {
        ++pos_;
        s->conditions.push_back(parse_expression());
      }
      if (is_name("recursive")) error("recursive loops are not supported");
      expect_block_end();
      s->bodies.push_back(parse_body({"else", "endfor"}, &stop));
      if (stop == "else") {
        expect_block_end();
        s->bodies.push_back(parse_body({"endfor"}, &stop));
      }
      expect_block_end();
    } else if (keyword == "set") {
      std::string name = expect_name();
      s->targets.push_back(name);
      if (is_op(".")) {
        ++pos_;
        s->targets.push_back(expect_name());
      }
      if (is_op("=")) {
        ++pos_;
        s->kind = Stmt::Kind::Set;
        s->expr = parse_tuple_or_expression();
        expect_block_end();
      } else {
        if (s->targets.size() != 1) error("block set needs a plain name");
        s->kind = Stmt::Kind::SetBlock;
        expect_block_end();
        s->bodies.push_back(parse_body({"endset"}, &stop));
        expect_block_end();
      }
    } else if (keyword == "macro") {
      s->kind = Stmt::Kind::Macro;
      s->targets.push_back(expect_name());
      expect_op("(");
      while (!is_op(")")) {
        std::string param = expect_name();
        ExprPtr fallback;
        if (is_op("=")) {
          ++pos_;
          fallback = parse_expression();
        }
        s->params.emplace_back(param, std::move(fallback));
        if (!is_op(")")) expect_op(",");
      }
      ++pos_;
      expect_block_end();
      s->bodies.push_back(parse_body({"endmacro"}, &stop));
      if (peek().kind == K::Name) ++pos_;  // {% endmacro name %}
      expect_block_end();
    } else {
      error(fmt::format("unknown or unsupported tag '{}'", keyword));
    }
    return s;
  }

  ExprPtr make(Expr::Kind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  // "a, b" without brackets (as in {% set x = 1, 2 %}) is a tuple; we model tuples as lists.
  ExprPtr parse_tuple_or_expression() {
    ExprPtr first = parse_expression();
    if (!is_op(",")) return first;
    auto list = make(Expr::Kind::ListLiteral, first->line);
    list->children.push_back(std::move(first));
    while (is_op(",")) {
      ++pos_;
      if (peek().kind == K::BlockEnd || peek().kind == K::VarEnd) break;
      list->children.push_back(parse_expression());
    }
    return list;
  }

  ExprPtr parse_expression() { return parse_or_expr(true); }

  ExprPtr parse_or_expr(bool allow_conditional) {
    ExprPtr left = parse_or();
    if (allow_conditional && is_name("if")) {
      int line = next().line;
      auto cond = make(Expr::Kind::Conditional, line);
      cond->children.push_back(std::move(left));
      cond->children.push_back(parse_or());
      if (is_name("else")) {
        ++pos_;
        cond->children.push_back(parse_or_expr(true));
      } else {
        cond->children.push_back(nullptr);
      }
      return cond;
    }
    return left;
  }

  ExprPtr binary(Expr::Kind kind, const std::string& op, ExprPtr l, ExprPtr r) {
    auto e = make(kind, l->line);
    e->name = op;
    e->children.push_back(std::move(l));
    e->children.push_back(std::move(r));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      ++pos_;
      left = binary(Expr::Kind::Or, "or", std::move(left), parse_and());
    }
    return left;
  }
  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      ++pos_;
      left = binary(Expr::Kind::And, "and", std::move(left), parse_not());
    }
    return left;
  }
  ExprPtr parse_not() {
    if (is_name("not")) {
      int line = next().line;
      auto e = make(Expr::Kind::Not, line);
      e->children.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    ExprPtr left = parse_math1();
    while (true) {
      std::string op;
      if (peek().kind == K::Op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                   peek().text == "<=" || peek().text == ">" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        ++pos_;
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        pos_ += 2;
        op = "not in";
      } else {
        return left;
      }
      left = binary(Expr::Kind::Binary, op, std::move(left), parse_math1());
    }
  }
  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      std::string op = next().text;
      left = binary(Expr::Kind::Binary, op, std::move(left), parse_concat());
    }
    return left;
  }
  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      ++pos_;
      left = binary(Expr::Kind::Binary, "~", std::move(left), parse_math2());
    }
    return left;
  }
  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = next().text;
      left = binary(Expr::Kind::Binary, op, std::move(left), parse_pow());
    }
    return left;
  }
  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      ++pos_;
      left = binary(Expr::Kind::Binary, "**", std::move(left), parse_unary(true));
    }
    return left;
  }
  ExprPtr parse_unary(bool with_filter) {
    // Every nesting level (parentheses, brackets, unary minus) passes through here.
    struct DepthGuard {
      int& depth;
      explicit DepthGuard(int& d) : depth(d) { ++depth; }
      ~DepthGuard() { --depth; }
    } guard(depth_);
    if (depth_ > kMaxDepth) error("expression nested too deeply");
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      bool negate = next().text == "-";
      ExprPtr operand = parse_unary(false);
      if (negate) {
        node = make(Expr::Kind::Negate, operand->line);
        node->children.push_back(std::move(operand));
      } else {
        node = std::move(operand);
      }
    } else {
      node = parse_postfix(parse_primary());
    }
    if (with_filter) node = parse_filters_and_tests(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& t = next();
    switch (t.kind) {
      case K::Name: {
        if (t.text == "true" || t.text == "True") return literal(Value(true), t.line);
        if (t.text == "false" || t.text == "False") return literal(Value(false), t.line);
        if (t.text == "none" || t.text == "None") return literal(Value::none(), t.line);
        auto e = make(Expr::Kind::Name, t.line);
        e->name = t.text;
        return e;
      }
      case K::String: {
        std::string text = t.text;
        while (peek().kind == K::String) text += next().text;  // adjacent literals concatenate
        return literal(Value(text), t.line);
      }
      case K::Int: return literal(Value(t.int_value), t.line);
      case K::Float: return literal(Value(t.float_value), t.line);
      case K::Op:
        if (t.text == "(") {
          if (is_op(")")) {
            ++pos_;
            return make(Expr::Kind::ListLiteral, t.line);
          }
          ExprPtr inner = parse_tuple_or_expression();
          expect_op(")");
          return inner;
        }
        if (t.text == "[") {
          auto list = make(Expr::Kind::ListLiteral, t.line);
          while (!is_op("]")) {
            list->children.push_back(parse_expression());
            if (!is_op("]")) expect_op(",");
          }
          ++pos_;
          return list;
        }
        if (t.text == "{") {
          auto dict = make(Expr::Kind::DictLiteral, t.line);
          while (!is_op("}")) {
            dict->children.push_back(parse_expression());
            expect_op(":");
            dict->children.push_back(parse_expression());
            if (!is_op("}")) expect_op(",");
          }
          ++pos_;
          return dict;
        }
        break;
      default: break;
    }
    --pos_;
    error(fmt::format("unexpected '{}'", t.text.empty() ? std::string("end of tag") : t.text));
  }

  ExprPtr literal(Value v, int line) {
    auto e = make(Expr::Kind::Literal, line);
    e->literal = std::move(v);
    return e;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().kind == K::Name && is_op("=", 1)) {
        std::string key = next().text;
        ++pos_;
        e.kwargs.emplace_back(key, parse_expression());
      } else {
        e.children.push_back(parse_expression());
      }
      if (!is_op(")")) expect_op(",");
    }
    ++pos_;
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".")) {
        ++pos_;
        auto e = make(Expr::Kind::Attr, node->line);
        if (peek().kind == K::Int) e->name = std::to_string(next().int_value);
        else e->name = expect_name();
        e->children.push_back(std::move(node));
        node = std::move(e);
      } else if (is_op("[")) {
        ++pos_;
        ExprPtr parts[3];
        bool is_slice = false;
        for (int part = 0; part < 3; ++part) {
          if (!is_op(":") && !is_op("]")) parts[part] = parse_expression();
          if (is_op(":") && part < 2) {
            ++pos_;
            is_slice = true;
          } else {
            break;
          }
        }
        expect_op("]");
        auto e = make(is_slice ? Expr::Kind::Slice : Expr::Kind::Item, node->line);
        e->children.push_back(std::move(node));
        if (is_slice) {
          for (auto& p : parts) e->children.push_back(std::move(p));
        } else {
          if (!parts[0]) error("empty subscript");
          e->children.push_back(std::move(parts[0]));
        }
        node = std::move(e);
      } else if (is_op("(")) {
        auto e = make(Expr::Kind::Call, node->line);
        e->children.push_back(std::move(node));
        parse_call_args(*e);
        node = std::move(e);
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_filters_and_tests(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        ++pos_;
        auto e = make(Expr::Kind::Filter, node->line);
        e->name = expect_name();
        e->children.push_back(std::move(node));
        if (is_op("(")) parse_call_args(*e);
        node = std::move(e);
      } else if (is_name("is")) {
        ++pos_;
        auto e = make(Expr::Kind::Test, node->line);
        if (is_name("not")) {
          ++pos_;
          e->negated = true;
        }
        e->name = expect_name();
        e->children.push_back(std::move(node));
        if (is_op("(")) {
          parse_call_args(*e);
        } else if (peek().kind == K::String || peek().kind == K::Int || peek().kind == K::Float ||
                   (peek().kind == K::Name && !is_name("and") && !is_name("or") && !is_name("else") &&
                    !is_name("if") && !is_name("in") && !is_name("is") && !is_name("not"))) {
          e->children.push_back(parse_primary());  // "is sameas false", "is divisibleby 3"
        }
        node = std::move(e);
      } else {
        return node;
      }
    }
  }

  static constexpr int kMaxDepth = 200;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
  int block_depth_ = 0;
};

}  // namespace

StmtList parse_template(const std::string& source) { return Parser(lex(source)).parse_all(); }

}  // namespace dsv3::tok::jinja
