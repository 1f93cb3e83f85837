// The dsv3 command line. Subcommands live in apps/cmd_*.cpp and register themselves.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <map>
#include <optional>
#include <vector>

#include "command.h"
#include "core/error.h"
#include "core/threads.h"

namespace dsv3::app {
namespace {
struct Entry {
  std::string name, description;
  Setup setup;
};
std::vector<Entry>& registry() {
  static std::vector<Entry> entries;
  return entries;
}
}  // namespace

Registrar::Registrar(std::string name, std::string description, Setup setup) {
  registry().push_back({std::move(name), std::move(description), std::move(setup)});
}

void add_precision_option(CLI::App& sub, std::string& precision) {
  sub.add_option("--precision", precision,
                 "GEMM precision: auto (bf16 on cuda, f32 on cpu), f32, or bf16 (cuda: BF16 "
                 "operands, float32 accumulation and master weights)")
      ->check(CLI::IsMember({"auto", "f32", "bf16"}));
}

DType resolve_precision(const std::string& precision, Device device) {
  if (precision == "f32") return DType::F32;
  if (precision == "bf16") return DType::BF16;
  return device == Device::CUDA ? DType::BF16 : DType::F32;
}

namespace {
// The whole number `text` is, or nothing (a sign, digits, and nothing after them).
std::optional<int64_t> whole_number(const std::string& text) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || ptr != end) return std::nullopt;  // also "" (no digits)
  return v;
}
}  // namespace

CLI::Validator at_least(int64_t least) {
  return CLI::Validator(
      [least](std::string& text) -> std::string {
        const std::optional<int64_t> v = whole_number(text);
        if (!v) return "expected a whole number, not '" + text + "'";
        if (*v < least) return "must be at least " + std::to_string(least) + ", not " + text;
        return "";
      },
      ">=" + std::to_string(least));
}

std::vector<int64_t> parse_int_list(const std::string& option, const std::string& text,
                                    int64_t least, int64_t most) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    const std::optional<int64_t> v = whole_number(item);
    DSV3_CHECK(v && *v >= least, "{}: '{}' in '{}' is not a whole number of at least {}", option,
               item, text, least);
    DSV3_CHECK(*v <= most, "{}: '{}' in '{}' is more than {}", option, item, text, most);
    out.push_back(*v);
    start = comma + 1;
  }
  return out;
}

void add_threads_option(CLI::App& sub, int& threads) {
  sub.add_option("--threads", threads, "CPU threads (default 0: all)")->check(at_least(0));
}

void add_device_option(CLI::App& sub, Device& device) {
  // Parsed by hand: Device is a uint8_t enum, which CLI11's own mapping prints as a raw byte in
  // the help and in its error message.
  sub.add_option_function<std::string>(
         "--device",
         [&device](const std::string& value) {
           const std::string name = CLI::detail::to_lower(value);
           if (name == "cpu") device = Device::CPU;
           else if (name == "cuda") device = Device::CUDA;
           else throw CLI::ValidationError("--device", "is cpu or cuda, not '" + value + "'");
         },
         "Where the model runs: cpu or cuda (default cpu)")
      ->type_name("TEXT:{cpu,cuda}");
}
}  // namespace dsv3::app

int main(int argc, char** argv) {
  using namespace dsv3::app;
  dsv3::configure_runtime();
  CLI::App app{"dsv3: DeepSeek-V3 training and inference in C++"};
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, Runner>> runners;
  // "parent child" names nest: `dsv3 bench train-step`, `dsv3 tokenizer train`.
  std::map<std::string, CLI::App*> parents;
  for (auto& entry : registry()) {
    CLI::App* owner = &app;
    std::string name = entry.name;
    if (auto space = name.find(' '); space != std::string::npos) {
      std::string parent = name.substr(0, space);
      name = name.substr(space + 1);
      auto it = parents.find(parent);
      if (it == parents.end()) {
        CLI::App* p = app.add_subcommand(parent, parent + " commands");
        p->require_subcommand(1);
        it = parents.emplace(parent, p).first;
      }
      owner = it->second;
    }
    CLI::App* sub = owner->add_subcommand(name, entry.description);
    runners.emplace_back(sub, entry.setup(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
  } catch (const dsv3::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
