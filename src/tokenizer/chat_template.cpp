#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "tokenizer/jinja/interpreter.h"
#include "tokenizer/jinja/parser.h"

namespace dsv3::tok {

using namespace jinja;

ChatTemplate::ChatTemplate(const std::string& source)
    : program_(std::make_unique<StmtList>(parse_template(source))) {}
ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  if (!context.is_object()) fail("chat template: the context must be a JSON object");
  Globals globals;
  for (const auto& [key, value] : context.items()) globals[key] = Value::from_json(value);
  globals["raise_exception"] = Value::function([](CallArgs& args) -> Value {
    fail("chat template: {}", args.positional.empty() ? std::string("raise_exception") : args.positional[0].str());
  });
  globals["namespace"] = Value::function([](CallArgs& args) {
    Dict attrs;
    if (!args.positional.empty() && args.positional[0].kind() == Value::Kind::Dict) attrs = args.positional[0].as_dict();
    for (auto& [k, v] : args.keyword) attrs.emplace_back(k, v);
    return Value::make_namespace(std::move(attrs));
  });
  globals["range"] = Value::function([](CallArgs& args) {
    int64_t start = 0, stop = 0, step = 1;
    if (args.positional.size() == 1) stop = args.positional[0].as_int();
    if (args.positional.size() >= 2) start = args.positional[0].as_int(), stop = args.positional[1].as_int();
    if (args.positional.size() >= 3) step = args.positional[2].as_int();
    if (step == 0) fail("chat template: range() step must not be zero");
    __int128 count = (static_cast<__int128>(stop) - start) / step;
    if (count > 100000) fail("chat template: range() too large");
    List out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
      out.emplace_back(i);
      if (__builtin_add_overflow(i, step, &i)) break;
    }
    return Value(std::move(out));
  });
  globals["dict"] = Value::function([](CallArgs& args) {
    Dict d;
    for (auto& [k, v] : args.keyword) d.emplace_back(k, v);
    return Value(std::move(d));
  });
  return jinja::render(*program_, globals);
}

}  // namespace dsv3::tok
