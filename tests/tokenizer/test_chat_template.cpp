// Chat-template parity: dsv3's Jinja interpreter against python3-jinja2 (the reference renderer,
// tests/tokenizer/jinja_reference.py), on DeepSeek-V3's template with many generated
// conversations and on small templates that exercise the rest of the supported Jinja subset.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer_test_util.h"

namespace dsv3::tok::testing {
namespace {

using ojson = nlohmann::ordered_json;

std::optional<std::string> jinja_unavailable() {
  if (std::system("/usr/bin/python3 -c 'import jinja2' >/dev/null 2>&1") != 0)
    return "/usr/bin/python3 with jinja2 is not installed (scripts/setup.sh installs python3-jinja2)";
  return std::nullopt;
}

// Renders each (template, context) with python3-jinja2; each answer holds "text" or "error".
std::vector<ojson> reference_render(const std::vector<std::pair<std::string, ojson>>& requests) {
  auto dir = std::filesystem::temp_directory_path() / ("dsv3_jinja_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream in(dir / "in.jsonl", std::ios::binary);
    for (const auto& [t, c] : requests) in << ojson{{"template", t}, {"context", c}}.dump() << "\n";
  }
  std::string command = "/usr/bin/python3 '" + std::string(DSV3_SOURCE_DIR) + "/tests/tokenizer/jinja_reference.py' < '" +
                        (dir / "in.jsonl").string() + "' > '" + (dir / "out.jsonl").string() + "'";
  if (std::system(command.c_str()) != 0) throw std::runtime_error("reference renderer failed: " + command);
  std::vector<ojson> answers;
  std::ifstream out(dir / "out.jsonl", std::ios::binary);
  std::string line;
  while (std::getline(out, line)) answers.push_back(ojson::parse(line));
  std::filesystem::remove_all(dir);
  if (answers.size() != requests.size()) throw std::runtime_error("reference renderer answered the wrong count");
  return answers;
}

// Renders all requests with dsv3 and compares with the reference, text or error alike.
void expect_parity(const std::vector<std::pair<std::string, ojson>>& requests) {
  auto expected = reference_render(requests);
  size_t mismatches = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    std::string ours, error;
    try {
      ours = ChatTemplate(requests[i].first).render(requests[i].second);
    } catch (const dsv3::Error& e) {
      error = e.what();
    }
    bool reference_failed = expected[i].contains("error");
    bool same = reference_failed ? !error.empty() : (error.empty() && ours == expected[i]["text"].get<std::string>());
    if (!same && ++mismatches <= 5) {
      ADD_FAILURE() << "request " << i << " differs\n  template: " << requests[i].first
                    << "\n  context:  " << requests[i].second.dump() << "\n  dsv3:     "
                    << (error.empty() ? ojson(ours).dump() : "error " + error)
                    << "\n  jinja2:   " << expected[i].dump();
    }
  }
  EXPECT_EQ(mismatches, 0u) << "of " << requests.size();
}

std::string pick(std::mt19937_64& rng, const std::vector<std::string>& pool) { return pool[rng() % pool.size()]; }

const std::vector<std::string> kContents = {
    "Hello!", "What is 2+2?", "  leading and trailing spaces  ", "line one\nline two\n\n", "",
    "quotes ' and \" and \\ backslash", "中文内容：你好，世界", "emoji 😀🚀 and accents café",
    "{{ not a tag }} {% neither %} {# nor #}", "<｜User｜> looks special", "\ttabs\tand\r\nCRLF",
    "The answer is 4.", "```python\nprint('hi')\n```", "a very long message " + std::string(200, 'x')};

ojson random_tool_call(std::mt19937_64& rng) {
  ojson arguments = {{"city", pick(rng, {"Paris", "東京", "New \"York\""})}, {"days", static_cast<int>(rng() % 7)}};
  return {{"type", "function"},
          {"function", {{"name", pick(rng, {"get_weather", "search", "run_code"})}, {"arguments", arguments.dump()}}}};
}

// A conversation in the shapes DeepSeek-V3's template handles: system prompts, user and assistant
// turns, assistant tool calls (content null) followed by tool outputs and a final answer.
ojson random_conversation(std::mt19937_64& rng) {
  ojson messages = ojson::array();
  int systems = static_cast<int>(rng() % 3);
  for (int i = 0; i < systems; ++i) messages.push_back({{"role", "system"}, {"content", pick(rng, kContents)}});
  int turns = 1 + static_cast<int>(rng() % 4);
  for (int t = 0; t < turns; ++t) {
    messages.push_back({{"role", "user"}, {"content", pick(rng, kContents)}});
    if (t == turns - 1 && rng() % 2) break;  // end on a user turn, awaiting the assistant
    if (rng() % 3 == 0) {
      ojson calls = ojson::array();
      int n = 1 + static_cast<int>(rng() % 3);
      for (int k = 0; k < n; ++k) calls.push_back(random_tool_call(rng));
      messages.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", calls}});
      for (int k = 0; k < n; ++k) messages.push_back({{"role", "tool"}, {"content", pick(rng, kContents)}});
      if (rng() % 4 == 0) continue;  // tool outputs left open
    }
    messages.push_back({{"role", "assistant"}, {"content", pick(rng, kContents)}});
  }
  if (rng() % 5 == 0) messages.push_back({{"role", "system"}, {"content", "late system prompt"}});
  ojson context = {{"messages", messages}, {"bos_token", "<｜begin▁of▁sentence｜>"}, {"eos_token", "<｜end▁of▁sentence｜>"}};
  int generation = static_cast<int>(rng() % 3);
  if (generation < 2) context["add_generation_prompt"] = generation == 1;
  return context;
}

TEST(ChatTemplate, DeepSeekV3MatchesJinja2OnGeneratedConversations) {
  if (auto why = jinja_unavailable()) GTEST_SKIP() << *why;
  auto config = TokenizerConfig::load(deepseek_dir() + "/tokenizer_config.json");
  ASSERT_FALSE(config.chat_template.empty());
  uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<std::pair<std::string, ojson>> requests;
  for (int i = 0; i < 300; ++i) requests.emplace_back(config.chat_template, random_conversation(rng));
  expect_parity(requests);
}

TEST(ChatTemplate, DeepSeekV3KnownRendering) {
  // A fixed case whose expected text is written out, so the test does not rely on the reference.
  auto config = TokenizerConfig::load(deepseek_dir() + "/tokenizer_config.json");
  ojson context = {{"messages", {{{"role", "system"}, {"content", "Be brief."}},
                                 {{"role", "user"}, {"content", "Hi"}},
                                 {{"role", "assistant"}, {"content", "Hello"}},
                                 {{"role", "user"}, {"content", "Bye"}}}},
                   {"bos_token", "<｜begin▁of▁sentence｜>"},
                   {"add_generation_prompt", true}};
  EXPECT_EQ(ChatTemplate(config.chat_template).render(context),
            "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜><｜User｜>Bye<｜Assistant｜>");
}

// Small templates over the rest of the Jinja subset, whitespace rules included.
TEST(ChatTemplate, JinjaSubsetMatchesJinja2) {
  if (auto why = jinja_unavailable()) GTEST_SKIP() << *why;
  ojson ctx = {{"messages", {{{"role", "system"}, {"content", " sys "}},
                             {{"role", "user"}, {"content", "hi <b>&'x'</b>"}},
                             {{"role", "assistant"}, {"content", "yo"}, {"tool_calls", {{{"name", "f"}, {"arguments", {{"b", 1}, {"a", {1.5, nullptr, true}}}}}}}}}},
               {"tools", {{{"name", "search"}, {"description", "Searches ünïcode 😀"}, {"parameters", {{"q", "string"}}}}}},
               {"n", 7}, {"x", 2.5}, {"s", "Hello World"}, {"empty", ""}, {"nothing", nullptr}};
  std::vector<std::string> templates = {
      "{% for m in messages %}{{ loop.index }}/{{ loop.length }}:{{ m.role }}{% if not loop.last %}, {% endif %}{% endfor %}",
      "{% for m in messages %}\n  {% if m.role == 'user' %}\n    U: {{ m.content }}\n  {% else %}\n    O: {{ m['content'] | trim }}\n  {% endif %}\n{% endfor %}\n",
      "  {%- for m in messages -%}  [{{ m.role }}]  {%- endfor -%}  \nend",
      "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}|{{ messages[2].tool_calls[0].arguments | tojson }}",
      "{{ messages | length }} {{ s | upper }} {{ s | lower }} {{ s[1:4] }} {{ s[::-1] }} {{ s[-3:] }}",
      "{% set ns = namespace(count=0, names='') %}{% for m in messages %}{% set ns.count = ns.count + 1 %}{% set ns.names = ns.names ~ m.role ~ ';' %}{% endfor %}{{ ns.count }} {{ ns.names }}",
      "{% set x = 1 %}{% for m in messages %}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}",
      "{{ nothing }} {{ undefined_name }} {{ empty is defined }} {{ missing is defined }} {{ nothing is none }} {{ s is string }} {{ n is number }}",
      "{% macro show(m, prefix='>') %}{{ prefix }}{{ m.role }}{% endmacro %}{% for m in messages %}{{ show(m) }}{{ show(m, prefix='#') }}{% endfor %}",
      "{{ 'a' + 'b' }} {{ n // 2 }} {{ n % 4 }} {{ -n }} {{ n / 2 }} {{ x * 2 }} {{ 2 ** 10 }} {{ n > 3 and n < 10 }} {{ 'ell' in s }} {{ 3 not in [1, 2] }}",
      "{{ messages[0].content.strip() }}|{{ s.split(' ') }}|{{ s.startswith('He') }}|{{ s.replace('l', 'L') }}|{{ [1, 'a', none, true, 2.0] }}|{{ {'k': 'v'} }}",
      "{% for k, v in tools[0].parameters.items() %}{{ k }}={{ v }}{% endfor %}{% for k in tools[0] %}{{ k }},{% endfor %}",
      "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(', ') }}|{{ messages | map(attribute='role') | list }}",
      "{% if n is even %}even{% elif n is divisibleby(7) %}seven{% else %}odd{% endif %} {{ 'yes' if empty else 'no' }} {{ nothing | default('dflt') }} {{ missing | default('d2') }}",
      "{# a comment #}\n  {# indented comment #}\nA{#- stripped -#}  B\n{% raw %}{{ raw }}{% endraw %}\n",
      "{% for i in range(3) %}{{ i }}{% else %}none{% endfor %}{% for i in [] %}x{% else %}empty{% endfor %}",
      "{{ raise_exception('Only user and assistant roles are supported!') }}",
      "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}{{ system_message }}{% for message in loop_messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] | trim + '\\n' }}{% endfor %}",
      "line1\r\nline2\r\n{% if true %}\r\nx\r\n{% endif %}\r\n",
      "{{ 'multi\nline' }}\n    {%+ if true %}kept indent{% endif +%}\nnext",
      "{{ x }} {{ 1e3 }} {{ 0.1 + 0.2 }} {{ 10 / 4 }} {{ 1.0 }}",
      "{{ s | trim | length }} {{ '  x  ' | trim }} {{ s | replace('o', '0', 1) }} {{ [3, 1, 2] | sort }} {{ s | first }}{{ s | last }}",
      "{{ messages[5] }}|{{ messages[-1].role }}|{{ nothing.attr }}",
      "{{ undefined_name.attr }}",
      "{{ 'a' + 1 }}",
      "{% for m in messages %}{{ loop.index0 }}{{ loop.first }}{{ loop.revindex }}{{ loop.cycle('a', 'b') }}{% endfor %}",
      "{% set greeting %}Hello {{ s }}{% endset %}[{{ greeting }}]",
      "{%- if true %}\n    text\n{%- endif %}\n\n  {% if true -%}\n    stripped\n  {% endif %}\n",
  };
  std::vector<std::pair<std::string, ojson>> requests;
  for (const auto& t : templates) requests.emplace_back(t, ctx);
  expect_parity(requests);
}

TEST(ChatTemplate, SyntaxErrorsNameTheLine) {
  try {
    ChatTemplate t("line one\n{% if x %}\n{% endfor %}");
    FAIL() << "a mismatched end tag must not parse";
  } catch (const dsv3::Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 3"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ChatTemplate("{{ unclosed"), dsv3::Error);
  EXPECT_THROW(ChatTemplate("{% unknowntag %}"), dsv3::Error);
}

// Templates come with checkpoints; hostile ones must end in an error, not a hang, a stack overflow,
// an allocation failure or undefined behaviour.
TEST(ChatTemplate, HostileTemplatesEndInErrors) {
  const char* hostile[] = {
      "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
      "{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}",
      "{% set ns = namespace(x=[1]) %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
      "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
      "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
      "{{ 9223372036854775807 + 1 }}", "{{ 2 ** 64 }}", "{{ 'x' * 100000000000 }}", "{{ 1e300 | int }}",
      "{{ ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((1" };
  for (const char* t : hostile) {
    SCOPED_TRACE(t);
    EXPECT_THROW(ChatTemplate(t).render(ojson{{"messages", ojson::array()}}), dsv3::Error);
  }
}

}  // namespace
}  // namespace dsv3::tok::testing
