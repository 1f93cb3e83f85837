#pragma once
// Jinja's built-in filters and tests, and the methods of str and dict that templates call, with
// Python's results.
#include <string>

#include "tokenizer/jinja/value.h"

namespace dsv3::tok::jinja {

// Applies filter `name` to value; args.positional excludes the value itself.
Value apply_filter(const std::string& name, const Value& value, CallArgs& args, int line);
// Evaluates test `name` (as in `value is name(args)`).
bool apply_test(const std::string& name, const Value& value, CallArgs& args, int line);
// obj.name for str and dict methods (bound to obj), or undefined when there is no such method.
Value bound_method(const Value& obj, const std::string& name, int line);

// Python-style helpers shared with the interpreter.
std::vector<std::string> code_points(const std::string& s);  // one string per character
Value python_slice(const Value& seq, const Value& start, const Value& stop, const Value& step, int line);
Value python_index(const Value& seq, const Value& index);    // undefined when out of range
std::vector<Value> iterate(const Value& v, int line);         // for-loop items

}  // namespace dsv3::tok::jinja
