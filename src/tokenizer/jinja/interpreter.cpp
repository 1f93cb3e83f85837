#include "tokenizer/jinja/interpreter.h"

#include <cmath>
#include <memory>

#include "core/error.h"
#include "tokenizer/jinja/builtins.h"

namespace dsv3::tok::jinja {
namespace {

using Scope = std::unordered_map<std::string, Value>;

class Interpreter {
 public:
  explicit Interpreter(const Globals& globals) { scopes_.push_back(std::make_shared<Scope>(globals)); }

  void exec(const StmtList& body, std::string& out) {
    for (const auto& s : body) exec(*s, out);
  }

 private:
  [[noreturn]] static void error(int line, const std::string& what) { fail("chat template line {}: {}", line, what); }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto found = (*it)->find(name);
      if (found != (*it)->end()) return found->second;
    }
    return Value();
  }

  void exec(const Stmt& s, std::string& out) {
    // A budget on work and output: templates are data from checkpoints, and a loop nest or a
    // doubling string must end in an error rather than run for hours or exhaust memory.
    if (++steps_ > kMaxSteps) error(s.line, "template ran past its step budget");
    if (out.size() > kMaxOutputBytes) error(s.line, "template output too large");
    switch (s.kind) {
      case Stmt::Kind::Text: out += s.text; return;
      case Stmt::Kind::Output: out += eval(*s.expr).str(); return;
      case Stmt::Kind::If:
        for (size_t i = 0; i < s.conditions.size(); ++i) {
          if (eval(*s.conditions[i]).truthy()) {
            exec(s.bodies[i], out);
            return;
          }
        }
        if (s.bodies.size() > s.conditions.size()) exec(s.bodies.back(), out);
        return;
      case Stmt::Kind::For: exec_for(s, out); return;
      case Stmt::Kind::Set: assign(s, eval(*s.expr)); return;
      case Stmt::Kind::SetBlock: {
        std::string captured;
        exec(s.bodies[0], captured);
        assign(s, Value(captured));
        return;
      }
      case Stmt::Kind::Macro: define_macro(s); return;
    }
  }

  void assign(const Stmt& s, Value v) {
    if (s.targets.size() == 1) {
      (*scopes_.back())[s.targets[0]] = std::move(v);
      return;
    }
    Value target = lookup(s.targets[0]);
    if (target.kind() != Value::Kind::Namespace)
      error(s.line, "cannot assign attribute '" + s.targets[1] + "' on a non-namespace object");
    Dict& attrs = target.namespace_attrs();
    for (auto& [k, existing] : attrs) {
      if (k == s.targets[1]) {
        existing = std::move(v);
        return;
      }
    }
    attrs.emplace_back(s.targets[1], std::move(v));
  }

  // Each iteration runs in a fresh scope: a {% set %} inside the body is gone by the next
  // iteration (jinja2 behaves so; templates use namespace() to carry state).
  void exec_for(const Stmt& s, std::string& out) {
    std::vector<Value> items = iterate(eval(*s.expr), s.line);
    if (!s.conditions.empty()) {  // {% for x in xs if cond %}: filter before numbering
      std::vector<Value> kept;
      for (const Value& item : items) {
        if (++steps_ > kMaxSteps) error(s.line, "template ran past its step budget");
        scopes_.push_back(std::make_shared<Scope>());
        bind_targets(s, item);
        bool keep = eval(*s.conditions[0]).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      if (++steps_ > kMaxSteps) error(s.line, "template ran past its step budget");
      scopes_.push_back(std::make_shared<Scope>());
      bind_targets(s, items[static_cast<size_t>(i)]);
      Dict loop = {{"index", Value(i + 1)},
                   {"index0", Value(i)},
                   {"revindex", Value(n - i)},
                   {"revindex0", Value(n - i - 1)},
                   {"first", Value(i == 0)},
                   {"last", Value(i == n - 1)},
                   {"length", Value(n)},
                   {"previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value()},
                   {"nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value()}};
      loop.emplace_back("cycle", Value::function([i](CallArgs& a) {
                          if (a.positional.empty()) return Value();
                          return a.positional[static_cast<size_t>(i) % a.positional.size()];
                        }));
      (*scopes_.back())["loop"] = Value(std::move(loop));
      try {
        exec(s.bodies[0], out);
      } catch (...) {
        scopes_.pop_back();
        throw;
      }
      scopes_.pop_back();
    }
    if (n == 0 && s.bodies.size() > 1) exec(s.bodies[1], out);
  }

  void bind_targets(const Stmt& s, const Value& item) {
    Scope& scope = *scopes_.back();
    if (s.targets.size() == 1) {
      scope[s.targets[0]] = item;
      return;
    }
    std::vector<Value> parts = iterate(item, s.line);
    if (parts.size() != s.targets.size())
      error(s.line, fmt::format("cannot unpack {} values into {} loop variables", parts.size(), s.targets.size()));
    for (size_t k = 0; k < parts.size(); ++k) scope[s.targets[k]] = parts[k];
  }

  // A macro is a function value: it renders its body in a fresh scope over the globals.
  void define_macro(const Stmt& s) {
    const Stmt* macro = &s;
    auto globals = scopes_.front();
    Value fn = Value::function([this, macro, globals](CallArgs& args) {
      if (call_depth_ >= kMaxCallDepth) error(macro->line, "macro recursion too deep");
      struct DepthGuard {
        int& depth;
        explicit DepthGuard(int& d) : depth(d) { ++depth; }
        ~DepthGuard() { --depth; }
      } guard(call_depth_);
      auto frame = std::make_shared<Scope>();
      for (size_t k = 0; k < macro->params.size(); ++k) {
        const auto& [param, fallback] = macro->params[k];
        Value v;
        if (k < args.positional.size()) v = args.positional[k];
        for (auto& [key, kv] : args.keyword)
          if (key == param) v = kv;
        if (v.is_undefined() && fallback) v = eval(*fallback);
        (*frame)[param] = v;
      }
      std::vector<std::shared_ptr<Scope>> saved = std::move(scopes_);
      scopes_ = {globals, frame};
      std::string rendered;
      try {
        exec(macro->bodies[0], rendered);
      } catch (...) {
        scopes_ = std::move(saved);
        throw;
      }
      scopes_ = std::move(saved);
      return Value(rendered);
    });
    (*scopes_.back())[s.targets[0]] = fn;
  }

  CallArgs eval_args(const Expr& e, size_t first_positional) {
    CallArgs args;
    for (size_t k = first_positional; k < e.children.size(); ++k) args.positional.push_back(eval(*e.children[k]));
    for (const auto& [key, value] : e.kwargs) args.keyword.emplace_back(key, eval(*value));
    return args;
  }

  Value member(const Value& obj, const std::string& name, bool attribute_first, int line) {
    if (obj.is_undefined()) error(line, "'" + name + "' of an undefined value");
    if (attribute_first) {
      Value method = bound_method(obj, name, line);
      if (!method.is_undefined()) return method;
      return obj.get(name);
    }
    Value item = obj.get(name);
    if (!item.is_undefined() || obj.kind() == Value::Kind::Namespace) return item;
    return bound_method(obj, name, line);
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.literal;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::Attr: return member(eval(*e.children[0]), e.name, true, e.line);
      case Expr::Kind::Item: {
        Value obj = eval(*e.children[0]);
        Value key = eval(*e.children[1]);
        if (obj.is_undefined()) error(e.line, "subscript of an undefined value");
        if (key.is_string()) return member(obj, key.as_string(), false, e.line);
        return python_index(obj, key);
      }
      case Expr::Kind::Slice: {
        Value obj = eval(*e.children[0]);
        auto part = [&](size_t k) { return e.children[k] ? eval(*e.children[k]) : Value(); };
        return python_slice(obj, part(1), part(2), part(3), e.line);
      }
      case Expr::Kind::Call: {
        Value callee = eval(*e.children[0]);
        if (callee.kind() != Value::Kind::Function) error(e.line, "'" + callee.type_name() + "' object is not callable");
        CallArgs args = eval_args(e, 1);
        return callee.as_function()(args);
      }
      case Expr::Kind::Filter: {
        Value value = eval(*e.children[0]);
        CallArgs args = eval_args(e, 1);
        return apply_filter(e.name, value, args, e.line);
      }
      case Expr::Kind::Test: {
        Value value = eval(*e.children[0]);
        CallArgs args = eval_args(e, 1);
        return Value(apply_test(e.name, value, args, e.line) != e.negated);
      }
      case Expr::Kind::Not: return Value(!eval(*e.children[0]).truthy());
      case Expr::Kind::Negate: {
        Value v = eval(*e.children[0]);
        if (v.kind() == Value::Kind::Float) return Value(-v.as_float());
        if (v.is_number()) {
          if (v.as_int() == INT64_MIN) error(e.line, "integer overflow");
          return Value(-v.as_int());
        }
        error(e.line, "bad operand type for unary -: '" + v.type_name() + "'");
      }
      case Expr::Kind::And: {
        Value left = eval(*e.children[0]);
        return left.truthy() ? eval(*e.children[1]) : left;
      }
      case Expr::Kind::Or: {
        Value left = eval(*e.children[0]);
        return left.truthy() ? left : eval(*e.children[1]);
      }
      case Expr::Kind::Conditional:
        if (eval(*e.children[1]).truthy()) return eval(*e.children[0]);
        return e.children[2] ? eval(*e.children[2]) : Value();
      case Expr::Kind::ListLiteral: {
        List items;
        for (const auto& c : e.children) items.push_back(eval(*c));
        return Value(std::move(items));
      }
      case Expr::Kind::DictLiteral: {
        Dict dict;
        for (size_t k = 0; k + 1 < e.children.size(); k += 2) {
          Value key = eval(*e.children[k]);
          if (!key.is_string()) error(e.line, "only string dictionary keys are supported");
          Value v = eval(*e.children[k + 1]);
          bool replaced = false;
          for (auto& [existing, ev] : dict)
            if (existing == key.as_string()) ev = v, replaced = true;
          if (!replaced) dict.emplace_back(key.as_string(), v);
        }
        return Value(std::move(dict));
      }
      case Expr::Kind::Binary: return binary(e);
    }
    error(e.line, "unknown expression");
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    Value a = eval(*e.children[0]);
    Value b = eval(*e.children[1]);
    auto unsupported = [&]() -> Value {
      if (a.is_undefined() || b.is_undefined()) error(e.line, "an undefined value used with '" + op + "'");
      error(e.line, "unsupported operand types for " + op + ": '" + a.type_name() + "' and '" + b.type_name() + "'");
    };
    if (op == "~") {
      std::string joined = a.str() + b.str();
      Value::check_size(joined);
      return Value(std::move(joined));
    }
    if (op == "==") return Value(a == b);
    if (op == "!=") return Value(!(a == b));
    if (op == "in" || op == "not in") {
      bool found;
      if (b.is_string()) {
        if (!a.is_string()) error(e.line, "'in <string>' requires a string on the left");
        found = b.as_string().find(a.as_string()) != std::string::npos;
      } else if (b.is_list()) {
        found = std::find(b.as_list().begin(), b.as_list().end(), a) != b.as_list().end();
      } else if (b.is_mapping()) {
        found = a.is_string() && !b.get(a.as_string()).is_undefined();
      } else {
        return unsupported();
      }
      return Value(found != (op == "not in"));
    }
    if (op == "<" || op == "<=" || op == ">" || op == ">=") {
      int order;
      if (a.is_number() && b.is_number()) order = a.as_float() < b.as_float() ? -1 : a.as_float() > b.as_float() ? 1 : 0;
      else if (a.is_string() && b.is_string()) order = a.as_string().compare(b.as_string());
      else return unsupported();
      if (op == "<") return Value(order < 0);
      if (op == "<=") return Value(order <= 0);
      if (op == ">") return Value(order > 0);
      return Value(order >= 0);
    }
    if (op == "+") {
      if (a.is_string() && b.is_string()) {
        std::string joined = a.as_string() + b.as_string();
        Value::check_size(joined);
        return Value(std::move(joined));
      }
      if (a.is_list() && b.is_list()) {
        if (a.as_list().size() + b.as_list().size() > (1u << 20)) error(e.line, "list grew past 2^20 items");
        List joined = a.as_list();
        joined.insert(joined.end(), b.as_list().begin(), b.as_list().end());
        return Value(std::move(joined));
      }
    }
    if (op == "*" && (a.is_string() || a.is_list()) && b.kind() == Value::Kind::Int) {
      size_t unit = a.is_string() ? a.as_string().size() : a.as_list().size();
      // Lists count as their elements' bytes would: a list of a big string repeated is as large.
      if (b.as_int() > 0 && unit > 0 && static_cast<uint64_t>(b.as_int()) > (a.is_string() ? Value::kMaxStringBytes : 1u << 20) / unit)
        error(e.line, "repetition result too large");
      if (a.is_string()) {
        std::string out;
        for (int64_t k = 0; k < b.as_int(); ++k) out += a.as_string();
        return Value(out);
      }
      List out;
      for (int64_t k = 0; k < b.as_int(); ++k) out.insert(out.end(), a.as_list().begin(), a.as_list().end());
      return Value(out);
    }
    if (!a.is_number() || !b.is_number()) return unsupported();
    bool floating = a.kind() == Value::Kind::Float || b.kind() == Value::Kind::Float;
    double x = a.as_float(), y = b.as_float();
    int64_t i = a.as_int(), j = b.as_int();
    // Python integers are unbounded; ours are int64, and overflow is an error, not a wrap.
    int64_t r = 0;
    auto checked = [&](bool overflowed) -> Value {
      if (overflowed) error(e.line, "integer overflow in '" + op + "'");
      return Value(r);
    };
    if (op == "+") return floating ? Value(x + y) : checked(__builtin_add_overflow(i, j, &r));
    if (op == "-") return floating ? Value(x - y) : checked(__builtin_sub_overflow(i, j, &r));
    if (op == "*") return floating ? Value(x * y) : checked(__builtin_mul_overflow(i, j, &r));
    if (op == "/") {
      if (y == 0) error(e.line, "division by zero");
      return Value(x / y);
    }
    if (op == "//" || op == "%") {
      if (y == 0) error(e.line, "integer division or modulo by zero");
      if (floating) {
        double q = std::floor(x / y);
        return op == "//" ? Value(q) : Value(x - q * y);
      }
      if (i == INT64_MIN && j == -1) error(e.line, "integer overflow in '" + op + "'");
      int64_t q = i / j;
      if ((i % j != 0) && ((i < 0) != (j < 0))) --q;  // Python floors
      return op == "//" ? Value(q) : Value(i - q * j);
    }
    if (op == "**") {
      if (!floating && j >= 0) {
        if (i == 0) return Value(static_cast<int64_t>(j == 0 ? 1 : 0));
        if (i == 1) return Value(static_cast<int64_t>(1));
        if (i == -1) return Value(static_cast<int64_t>(j % 2 ? -1 : 1));
        int64_t power = 1;  // |i| >= 2: overflows within 63 steps
        for (int64_t k = 0; k < j; ++k)
          if (__builtin_mul_overflow(power, i, &power)) error(e.line, "integer overflow in '**'");
        return Value(power);
      }
      return Value(std::pow(x, y));
    }
    return unsupported();
  }

  static constexpr int kMaxCallDepth = 100;
  static constexpr uint64_t kMaxSteps = 2'000'000;
  static constexpr uint64_t kMaxOutputBytes = 64ull << 20;
  uint64_t steps_ = 0;
  std::vector<std::shared_ptr<Scope>> scopes_;
  int call_depth_ = 0;
};

}  // namespace

std::string render(const StmtList& program, const Globals& globals) {
  Interpreter interpreter(globals);
  std::string out;
  interpreter.exec(program, out);
  return out;
}

}  // namespace dsv3::tok::jinja
