#pragma once
// Values of the Jinja-subset interpreter, with Python's semantics where a template can see them
// (str() of None/True/lists, truthiness, ==, ordering, tojson). Lists and dicts are shared and
// never mutated after construction (ImmutableSandboxedEnvironment forbids mutation); namespace()
// objects are the one mutable kind, as in Jinja.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::tok::jinja {

class Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion-ordered, like a Python dict

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};
using Function = std::function<Value(CallArgs&)>;

class Value {
 public:
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Function };

  Value() = default;  // undefined
  static Value none() { Value v; v.kind_ = Kind::None; return v; }
  Value(bool b) : kind_(Kind::Bool), int_(b) {}
  Value(int64_t i) : kind_(Kind::Int), int_(i) {}
  Value(int i) : kind_(Kind::Int), int_(i) {}
  Value(double d) : kind_(Kind::Float), float_(d) {}
  Value(std::string s) : kind_(Kind::String), string_(std::make_shared<std::string>(std::move(s))) {}
  Value(const char* s) : Value(std::string(s)) {}
  // Containers record their nesting depth and refuse to pass kMaxNesting: converting, printing,
  // comparing and freeing values recurse, so a template that nests lists in a loop must get an
  // error instead of exhausting the stack.
  static constexpr int kMaxNesting = 512;
  // Largest string a template may build (join, replace, repr, tojson, repetition): past it,
  // rendering is an error rather than an allocation failure.
  static constexpr size_t kMaxStringBytes = 64u << 20;
  static void check_size(const std::string& s) {
    if (s.size() > kMaxStringBytes) too_large();
  }
  [[noreturn]] static void too_large();
  Value(List l);
  Value(Dict d);
  static Value make_namespace(Dict d) {
    Value v(std::move(d));
    v.kind_ = Kind::Namespace;
    return v;
  }
  static Value function(Function f) {
    Value v;
    v.kind_ = Kind::Function;
    v.function_ = std::make_shared<Function>(std::move(f));
    return v;
  }
  // JSON (ordered, as Python's json.loads keeps key order) -> value.
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_mapping() const { return kind_ == Kind::Dict || kind_ == Kind::Namespace; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }
  double as_float() const { return kind_ == Kind::Float ? float_ : static_cast<double>(int_); }
  const std::string& as_string() const { return *string_; }
  const List& as_list() const { return *list_; }
  const Dict& as_dict() const { return *dict_; }
  Dict& namespace_attrs() const { return *dict_; }  // the one mutable kind
  const Function& as_function() const { return *function_; }

  // Python truthiness: empty strings, lists and dicts, 0, None and undefined are false.
  bool truthy() const;
  // Python str() as Jinja prints it ({{ x }}); undefined prints as "".
  std::string str() const;
  // Python repr() (strings quoted), used inside str() of lists and dicts.
  std::string repr() const;
  // json.dumps(x, sort_keys=True[, indent]) followed by Jinja's HTML-safe escapes: the tojson filter.
  std::string to_json(int indent = -1) const;
  std::string type_name() const;

  // Member lookup for d['k'] and d.k; undefined when absent.
  Value get(const std::string& key) const;

  friend bool operator==(const Value& a, const Value& b);

 private:
  std::string repr_at(int depth) const;

  Kind kind_ = Kind::Undefined;
  int depth_ = 0;
  int64_t int_ = 0;
  double float_ = 0;
  std::shared_ptr<std::string> string_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> function_;
};

// Python's float repr (shortest round-trip, exponent outside 1e-4 <= |x| < 1e16).
std::string python_float_repr(double d);

}  // namespace dsv3::tok::jinja
