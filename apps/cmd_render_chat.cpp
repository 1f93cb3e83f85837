// `dsv3 render-chat`: renders the chat template of a tokenizer_config.json.
//   echo '{"messages": [{"role": "user", "content": "Hi"}]}' |
//     dsv3 render-chat --tokenizer-config tokenizer_config.json --add-generation-prompt
// The JSON object on stdin supplies the template's variables (messages, tools, ...); bos_token and
// eos_token come from the config unless the object sets them.
#include <cstdio>
#include <iostream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "command.h"
#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer_config.h"

namespace {

dsv3::app::Registrar reg("render-chat", "Render a conversation (JSON on stdin) with the chat template", [](CLI::App& sub) {
  struct Options {
    std::string config;
    bool add_generation_prompt = false;
  };
  auto opt = std::make_shared<Options>();
  sub.add_option("--tokenizer-config", opt->config, "tokenizer_config.json holding chat_template")->required();
  sub.add_flag("--add-generation-prompt", opt->add_generation_prompt, "end with the assistant's turn opener");
  return [opt]() {
    auto config = dsv3::tok::TokenizerConfig::load(opt->config);
    if (config.chat_template.empty()) dsv3::fail("{}: no chat_template", opt->config);
    std::string input(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>{});
    nlohmann::ordered_json context;
    try {
      context = nlohmann::ordered_json::parse(input);
    } catch (const nlohmann::json::parse_error&) {
      dsv3::fail("stdin: not valid JSON");
    }
    if (!context.is_object() || !context.contains("messages") || !context["messages"].is_array())
      dsv3::fail("stdin: expected a JSON object with a \"messages\" list");
    if (!context.contains("bos_token") && config.bos_token) context["bos_token"] = *config.bos_token;
    if (!context.contains("eos_token") && config.eos_token) context["eos_token"] = *config.eos_token;
    context["add_generation_prompt"] = opt->add_generation_prompt;
    std::string text = dsv3::tok::ChatTemplate(config.chat_template).render(context);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  };
});

}  // namespace
