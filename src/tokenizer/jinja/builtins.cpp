#include "tokenizer/jinja/builtins.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok::jinja {
namespace {

[[noreturn]] void type_error(int line, const std::string& what) { fail("chat template line {}: {}", line, what); }

const Value& arg(CallArgs& args, size_t i, const char* keyword, const Value& fallback) {
  for (auto& [k, v] : args.keyword)
    if (k == keyword) return v;
  return i < args.positional.size() ? args.positional[i] : fallback;
}

bool is_py_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// str.strip() family: without chars, Python strips Unicode whitespace.
std::string strip(const std::string& s, bool left, bool right, const Value& chars) {
  auto cps = code_points(s);
  auto strippable = [&](const std::string& c) {
    if (chars.is_string()) return chars.as_string().find(c) != std::string::npos;
    size_t i = 0;
    return is_py_space(next_code_point(c, i));
  };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strippable(cps[b])) ++b;
  if (right)
    while (e > b && strippable(cps[e - 1])) --e;
  std::string out;
  for (size_t i = b; i < e; ++i) out += cps[i];
  return out;
}

// ASCII case mapping (non-ASCII characters are left as they are: a known simplification).
std::string map_case(const std::string& s, int (*f)(int)) {
  std::string out = s;
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x80) c = static_cast<char>(f(c));
  return out;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  if (from.empty()) {
    // Python inserts `to` between characters (and at both ends).
    std::string out;
    int64_t done = 0;
    for (const auto& c : code_points(s)) {
      if (count < 0 || done < count) out += to, ++done;
      out += c;
      Value::check_size(out);
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  std::string out;
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t at = s.find(from, pos);
    if (at == std::string::npos) break;
    out.append(s, pos, at - pos);
    out += to;
    Value::check_size(out);
    pos = at + from.size();
    ++done;
  }
  out.append(s, pos);
  return out;
}

Value split(const std::string& s, const Value& sep, int line) {
  List parts;
  if (sep.is_undefined() || sep.is_none()) {
    std::string current;
    for (const auto& c : code_points(s)) {
      size_t i = 0;
      if (is_py_space(next_code_point(c, i))) {
        if (!current.empty()) parts.emplace_back(current), current.clear();
      } else {
        current += c;
      }
    }
    if (!current.empty()) parts.emplace_back(current);
    return Value(std::move(parts));
  }
  if (!sep.is_string() || sep.as_string().empty()) type_error(line, "split: separator must be a non-empty string");
  size_t pos = 0;
  while (true) {
    size_t at = s.find(sep.as_string(), pos);
    if (at == std::string::npos) break;
    parts.emplace_back(s.substr(pos, at - pos));
    pos = at + sep.as_string().size();
  }
  parts.emplace_back(s.substr(pos));
  return Value(std::move(parts));
}

int64_t length_of(const Value& v, int line) {
  switch (v.kind()) {
    case Value::Kind::String: return static_cast<int64_t>(code_points(v.as_string()).size());
    case Value::Kind::List: return static_cast<int64_t>(v.as_list().size());
    case Value::Kind::Dict: return static_cast<int64_t>(v.as_dict().size());
    case Value::Kind::Undefined: return 0;
    default: type_error(line, "object of type '" + v.type_name() + "' has no len()");
  }
}

Value attribute_of(const Value& v, const std::string& path) {
  Value current = v;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    current = current.is_list() && !part.empty() && std::isdigit(static_cast<unsigned char>(part[0]))
                  ? python_index(current, Value(static_cast<int64_t>(std::stoll(part))))
                  : current.get(part);
    if (dot == std::string::npos) return current;
    start = dot + 1;
  }
}

bool less_than(const Value& a, const Value& b, int line) {
  if (a.is_number() && b.is_number()) return a.as_float() < b.as_float();
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();
  type_error(line, "'<' not supported between '" + a.type_name() + "' and '" + b.type_name() + "'");
}

}  // namespace

std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = utf8_sequence_length(s, i);
    if (n == 0) n = 1;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

Value python_index(const Value& seq, const Value& index) {
  if (!index.is_number() || index.kind() == Value::Kind::Float) return Value();
  int64_t i = index.as_int();
  if (seq.is_list()) {
    int64_t n = static_cast<int64_t>(seq.as_list().size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value();
    return seq.as_list()[static_cast<size_t>(i)];
  }
  if (seq.is_string()) {
    auto cps = code_points(seq.as_string());
    int64_t n = static_cast<int64_t>(cps.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value();
    return Value(cps[static_cast<size_t>(i)]);
  }
  return Value();
}

Value python_slice(const Value& seq, const Value& start_v, const Value& stop_v, const Value& step_v, int line) {
  auto as_opt = [&](const Value& v) -> std::optional<int64_t> {
    if (v.is_undefined() || v.is_none()) return std::nullopt;
    if (!v.is_number() || v.kind() == Value::Kind::Float) type_error(line, "slice indices must be integers");
    return v.as_int();
  };
  std::vector<Value> items;
  std::vector<std::string> chars;
  bool is_string = seq.is_string();
  if (is_string) chars = code_points(seq.as_string());
  else if (seq.is_list()) items = seq.as_list();
  else type_error(line, "cannot slice a value of type '" + seq.type_name() + "'");
  int64_t n = static_cast<int64_t>(is_string ? chars.size() : items.size());
  int64_t step = as_opt(step_v).value_or(1);
  if (step == 0) type_error(line, "slice step cannot be zero");
  // Python's PySlice_AdjustIndices.
  auto adjust = [&](std::optional<int64_t> v, int64_t fallback) {
    if (!v) return fallback;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= n) {
      x = step < 0 ? n - 1 : n;
    }
    return x;
  };
  int64_t start = adjust(as_opt(start_v), step < 0 ? n - 1 : 0);
  int64_t stop = adjust(as_opt(stop_v), step < 0 ? -1 : n);
  std::string out_string;
  List out_list;
  for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
    if (is_string) out_string += chars[static_cast<size_t>(i)];
    else out_list.push_back(items[static_cast<size_t>(i)]);
    if (__builtin_add_overflow(i, step, &i)) break;  // a huge step leaves the sequence at once
  }
  return is_string ? Value(out_string) : Value(out_list);
}

std::vector<Value> iterate(const Value& v, int line) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return v.as_list();
    case Value::Kind::Dict: {
      std::vector<Value> keys;
      for (const auto& [k, _] : v.as_dict()) keys.emplace_back(k);
      return keys;
    }
    case Value::Kind::String: {
      std::vector<Value> chars;
      for (auto& c : code_points(v.as_string())) chars.emplace_back(c);
      return chars;
    }
    default: type_error(line, "'" + v.type_name() + "' object is not iterable");
  }
}

Value apply_filter(const std::string& name, const Value& value, CallArgs& args, int line) {
  static const Value none_value = Value::none();
  static const Value undefined;
  if (name == "tojson") {
    const Value& indent = arg(args, 0, "indent", none_value);
    if (indent.is_number() && (indent.as_int() < 0 || indent.as_int() > 64))
      type_error(line, "tojson: indent must be between 0 and 64");
    return Value(value.to_json(indent.is_number() ? static_cast<int>(indent.as_int()) : -1));
  }
  if (name == "safe") return value;
  if (name == "string") return Value(value.str());
  if (name == "trim") {
    if (!value.is_string()) return Value(strip(value.str(), true, true, arg(args, 0, "chars", undefined)));
    return Value(strip(value.as_string(), true, true, arg(args, 0, "chars", undefined)));
  }
  if (name == "length" || name == "count") return Value(length_of(value, line));
  if (name == "upper") return Value(map_case(value.str(), ::toupper));
  if (name == "lower") return Value(map_case(value.str(), ::tolower));
  if (name == "capitalize") {
    std::string s = map_case(value.str(), ::tolower);
    if (!s.empty()) s[0] = static_cast<char>(::toupper(s[0]));
    return Value(s);
  }
  if (name == "first" || name == "last") {
    auto items = iterate(value, line);
    if (items.empty()) return Value();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    const Value& sep = arg(args, 0, "d", Value(""));
    const Value& attribute = arg(args, 1, "attribute", none_value);
    std::string out;
    bool first = true;
    for (const Value& item : iterate(value, line)) {
      if (!first) out += sep.str();
      first = false;
      out += (attribute.is_string() ? attribute_of(item, attribute.as_string()) : item).str();
      Value::check_size(out);
    }
    return Value(out);
  }
  if (name == "default" || name == "d") {
    const Value& fallback = arg(args, 0, "default_value", Value(""));
    bool boolean = arg(args, 1, "boolean", Value(false)).truthy();
    if (value.is_undefined() || (boolean && !value.truthy())) return fallback;
    return value;
  }
  if (name == "replace") {
    const Value& count = arg(args, 2, "count", none_value);
    return Value(replace_all(value.str(), arg(args, 0, "old", Value("")).str(), arg(args, 1, "new", Value("")).str(),
                             count.is_number() ? count.as_int() : -1));
  }
  if (name == "int") {
    if (value.kind() == Value::Kind::Float) {
      double d = value.as_float();
      // Python's int() is unbounded; ours is int64, and anything outside is refused.
      if (!(d > -9.2e18 && d < 9.2e18)) type_error(line, "int: value out of range");
      return Value(static_cast<int64_t>(d));
    }
    if (value.is_number()) return Value(value.as_int());
    try {
      return Value(static_cast<int64_t>(std::stoll(strip(value.str(), true, true, undefined))));
    } catch (const std::exception&) {
      return arg(args, 0, "default", Value(static_cast<int64_t>(0)));
    }
  }
  if (name == "float") {
    if (value.is_number()) return Value(value.as_float());
    try {
      return Value(std::stod(value.str()));
    } catch (const std::exception&) {
      return arg(args, 0, "default", Value(0.0));
    }
  }
  if (name == "abs") {
    if (value.kind() == Value::Kind::Float) return Value(std::fabs(value.as_float()));
    if (value.is_number()) {
      if (value.as_int() == INT64_MIN) type_error(line, "abs: integer overflow");
      return Value(static_cast<int64_t>(std::llabs(value.as_int())));
    }
    type_error(line, "bad operand type for abs()");
  }
  if (name == "list") return Value(iterate(value, line));
  if (name == "reverse") {
    if (value.is_string()) return python_slice(value, Value(), Value(), Value(static_cast<int64_t>(-1)), line);
    auto items = iterate(value, line);
    std::reverse(items.begin(), items.end());
    return Value(items);
  }
  if (name == "items") {
    if (value.is_undefined()) return Value(List{});
    if (value.kind() != Value::Kind::Dict) type_error(line, "items filter needs a mapping");
    List out;
    for (const auto& [k, v] : value.as_dict()) out.emplace_back(List{Value(k), v});
    return Value(out);
  }
  if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
    bool by_attribute = name.find("attr") != std::string::npos;
    bool keep_when = name[0] == 's';
    size_t test_index = by_attribute ? 1 : 0;
    List out;
    for (const Value& item : iterate(value, line)) {
      Value subject = by_attribute ? attribute_of(item, arg(args, 0, "attribute", Value("")).str()) : item;
      bool passed;
      if (args.positional.size() > test_index) {
        CallArgs test_args;
        test_args.positional.assign(args.positional.begin() + static_cast<long>(test_index) + 1, args.positional.end());
        passed = apply_test(args.positional[test_index].str(), subject, test_args, line);
      } else {
        passed = subject.truthy();
      }
      if (passed == keep_when) out.push_back(item);
    }
    return Value(out);
  }
  if (name == "map") {
    List out;
    for (const Value& item : iterate(value, line)) {
      const Value& attribute = arg(args, 99, "attribute", none_value);
      if (attribute.is_string()) {
        Value v = attribute_of(item, attribute.as_string());
        out.push_back(v.is_undefined() ? arg(args, 99, "default", undefined) : v);
      } else if (!args.positional.empty()) {
        CallArgs rest;
        rest.positional.assign(args.positional.begin() + 1, args.positional.end());
        out.push_back(apply_filter(args.positional[0].str(), item, rest, line));
      } else {
        type_error(line, "map needs a filter name or attribute=");
      }
    }
    return Value(out);
  }
  if (name == "unique") {
    List out;
    for (const Value& item : iterate(value, line))
      if (std::find(out.begin(), out.end(), item) == out.end()) out.push_back(item);
    return Value(out);
  }
  if (name == "sort") {
    auto items = iterate(value, line);
    bool reverse = arg(args, 0, "reverse", Value(false)).truthy();
    const Value& attribute = arg(args, 2, "attribute", none_value);
    auto key = [&](const Value& v) { return attribute.is_string() ? attribute_of(v, attribute.as_string()) : v; };
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      return reverse ? less_than(key(b), key(a), line) : less_than(key(a), key(b), line);
    });
    return Value(items);
  }
  if (name == "indent") {
    int64_t width = arg(args, 0, "width", Value(static_cast<int64_t>(4))).as_int();
    if (width > 1000) type_error(line, "indent: width above 1000");
    bool first = arg(args, 1, "first", Value(false)).truthy();
    bool blank = arg(args, 2, "blank", Value(false)).truthy();
    std::string pad(static_cast<size_t>(std::max<int64_t>(0, width)), ' ');
    std::string s = value.str(), out;
    size_t start = 0;
    bool first_line = true;
    while (true) {
      size_t nl = s.find('\n', start);
      std::string line_text = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
      if ((!first_line || first) && (blank || !line_text.empty())) out += pad;
      out += line_text;
      Value::check_size(out);
      if (nl == std::string::npos) break;
      out += '\n';
      start = nl + 1;
      first_line = false;
    }
    return Value(out);
  }
  type_error(line, "unknown filter '" + name + "'");
}

bool apply_test(const std::string& name, const Value& value, CallArgs& args, int line) {
  static const Value undefined;
  const Value& other = arg(args, 0, "", undefined);
  if (name == "defined") return !value.is_undefined();
  if (name == "undefined") return value.is_undefined();
  if (name == "none") return value.is_none();
  if (name == "string") return value.is_string();
  if (name == "number") return value.is_number();
  if (name == "integer") return value.kind() == Value::Kind::Int;
  if (name == "float") return value.kind() == Value::Kind::Float;
  if (name == "boolean") return value.kind() == Value::Kind::Bool;
  if (name == "true") return value.kind() == Value::Kind::Bool && value.as_bool();
  if (name == "false") return value.kind() == Value::Kind::Bool && !value.as_bool();
  if (name == "mapping") return value.kind() == Value::Kind::Dict;
  if (name == "sequence") return value.is_list() || value.is_string() || value.kind() == Value::Kind::Dict;
  if (name == "iterable") return value.is_list() || value.is_string() || value.kind() == Value::Kind::Dict;
  if (name == "callable") return value.kind() == Value::Kind::Function;
  if (name == "even" || name == "odd") {
    if (!value.is_number()) type_error(line, "even/odd test needs a number");
    return (value.as_int() % 2 == 0) == (name == "even");
  }
  if (name == "divisibleby") {
    if (other.as_int() == 0) return false;
    if (other.as_int() == -1) return true;  // INT64_MIN % -1 would overflow
    return value.as_int() % other.as_int() == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return value == other;
  if (name == "ne" || name == "!=") return !(value == other);
  if (name == "lt" || name == "lessthan" || name == "<") return less_than(value, other, line);
  if (name == "gt" || name == "greaterthan" || name == ">") return less_than(other, value, line);
  if (name == "le" || name == "<=") return !less_than(other, value, line);
  if (name == "ge" || name == ">=") return !less_than(value, other, line);
  if (name == "sameas") {
    if (value.is_none() || value.kind() == Value::Kind::Bool) return value.kind() == other.kind() && value == other;
    return false;
  }
  if (name == "in") {
    if (other.is_string()) return value.is_string() && other.as_string().find(value.as_string()) != std::string::npos;
    if (other.is_list()) return std::find(other.as_list().begin(), other.as_list().end(), value) != other.as_list().end();
    if (other.kind() == Value::Kind::Dict) return value.is_string() && !other.get(value.as_string()).is_undefined();
    type_error(line, "'in' test needs a container");
  }
  if (name == "lower") return value.is_string() && map_case(value.as_string(), ::tolower) == value.as_string();
  if (name == "upper") return value.is_string() && map_case(value.as_string(), ::toupper) == value.as_string();
  type_error(line, "unknown test '" + name + "'");
}

Value bound_method(const Value& obj, const std::string& name, int line) {
  static const Value undefined;
  if (obj.is_string()) {
    const std::string s = obj.as_string();
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      bool left = name != "rstrip", right = name != "lstrip";
      return Value::function([s, left, right](CallArgs& a) { return Value(strip(s, left, right, arg(a, 0, "chars", undefined))); });
    }
    if (name == "split")
      return Value::function([s, line](CallArgs& a) { return split(s, arg(a, 0, "sep", undefined), line); });
    if (name == "startswith" || name == "endswith") {
      bool starts = name == "startswith";
      return Value::function([s, starts](CallArgs& a) {
        const Value& p = arg(a, 0, "prefix", undefined);
        auto check = [&](const std::string& x) {
          return x.size() <= s.size() && (starts ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0);
        };
        if (p.is_list()) {
          for (const Value& x : p.as_list())
            if (x.is_string() && check(x.as_string())) return Value(true);
          return Value(false);
        }
        return Value(check(p.str()));
      });
    }
    if (name == "upper" || name == "lower") {
      bool upper = name == "upper";
      return Value::function([s, upper](CallArgs&) { return Value(map_case(s, upper ? ::toupper : ::tolower)); });
    }
    if (name == "replace")
      return Value::function([s](CallArgs& a) {
        const Value& count = arg(a, 2, "count", Value(static_cast<int64_t>(-1)));
        return Value(replace_all(s, arg(a, 0, "old", Value("")).str(), arg(a, 1, "new", Value("")).str(), count.as_int()));
      });
    if (name == "find")
      return Value::function([s](CallArgs& a) {
        size_t at = s.find(arg(a, 0, "sub", Value("")).str());
        if (at == std::string::npos) return Value(static_cast<int64_t>(-1));
        return Value(static_cast<int64_t>(code_points(s.substr(0, at)).size()));
      });
    if (name == "join")
      return Value::function([s, line](CallArgs& a) {
        std::string out;
        bool first = true;
        for (const Value& item : iterate(arg(a, 0, "iterable", undefined), line)) {
          if (!first) out += s;
          first = false;
          out += item.str();
          Value::check_size(out);
        }
        return Value(out);
      });
    return Value();
  }
  if (obj.kind() == Value::Kind::Dict) {
    if (name == "items")
      return Value::function([obj](CallArgs&) {
        List out;
        for (const auto& [k, v] : obj.as_dict()) out.emplace_back(List{Value(k), v});
        return Value(out);
      });
    if (name == "keys" || name == "values") {
      bool keys = name == "keys";
      return Value::function([obj, keys](CallArgs&) {
        List out;
        for (const auto& [k, v] : obj.as_dict()) out.push_back(keys ? Value(k) : v);
        return Value(out);
      });
    }
    if (name == "get")
      return Value::function([obj](CallArgs& a) {
        const Value& key = arg(a, 0, "key", Value::none());
        Value found = key.is_string() ? obj.get(key.as_string()) : Value();
        return found.is_undefined() ? arg(a, 1, "default", Value::none()) : found;
      });
  }
  return Value();
}

}  // namespace dsv3::tok::jinja
