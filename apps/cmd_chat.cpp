// `dsv3 chat -m DIR`: an interactive conversation. Each turn is rendered with the tokenizer's
// chat template (the whole history, re-prefilled each turn), the reply streams as it comes,
// Ctrl-C stops the reply (not the session), an empty line or Ctrl-D ends the session.
#include <cstdio>
#include <iostream>

#include "command.h"
#include "infer_common.h"

namespace {
struct Options {
  dsv3::app::ModelOptions model;
  dsv3::app::SamplingOptions sampling;
  std::string system;
};

dsv3::app::Registrar reg(
    "chat", "Chat with a model interactively (chat template, history, streaming)", [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      o->model.add(sub);
      o->sampling.add(sub);
      sub.add_option("--system", o->system, "System prompt");
      return [o]() {
        using namespace dsv3;
        auto weights = o->model.load();
        infer::Engine engine(weights, o->model.device);
        auto text = infer::TextCodec::open(o->model.model);
        DSV3_CHECK(text != nullptr && text->has_chat_template(),
                   "{}: chat needs tokenizer.json and a tokenizer_config.json with a chat_template",
                   o->model.model);
        infer::GenerateOptions go = o->sampling.make(engine.config(), text.get(), o->model.cache_dtype());
        infer::Generator gen(engine);
        nlohmann::ordered_json messages = nlohmann::ordered_json::array();
        if (!o->system.empty()) messages.push_back({{"role", "system"}, {"content", o->system}});
        app::install_interrupt_handler();
        const int context = engine.config().max_position_embeddings;
        while (true) {
          std::fputs("> ", stdout);
          std::fflush(stdout);
          std::string line;
          app::interrupted() = 0;
          if (!std::getline(std::cin, line)) {
            if (app::interrupted()) {  // Ctrl-C at the prompt: a fresh prompt
              std::cin.clear();
              std::fputc('\n', stdout);
              continue;
            }
            break;
          }
          if (line.empty()) break;
          messages.push_back({{"role", "user"}, {"content", line}});
          std::vector<int32_t> prompt = text->encode(text->render_chat(messages), false);
          infer::GenerateOptions turn = go;
          turn.max_new_tokens = std::min(go.max_new_tokens, context - int(prompt.size()) - 1);
          if (turn.max_new_tokens < 1) {
            std::fputs("[the conversation fills the context; start a new session]\n", stdout);
            messages.erase(messages.end() - 1);
            continue;
          }
          infer::StopStrings stops(o->sampling.stop);
          std::vector<int32_t> reply_ids;
          std::string reply;
          auto on_token = [&](int32_t id) {
            std::string piece = stops.push(text->push(id));
            reply += piece;
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
            return !stops.stopped() && !app::interrupted();
          };
          try {
            gen.generate(prompt, turn, on_token);
          } catch (const Error& e) {
            std::fprintf(stderr, "\nerror: %s\n", e.what());
          }
          std::string rest = stops.push(text->finish()) + stops.finish();
          reply += rest;
          std::fwrite(rest.data(), 1, rest.size(), stdout);
          if (app::interrupted()) std::fputs(" [stopped]", stdout);
          std::fputc('\n', stdout);
          messages.push_back({{"role", "assistant"}, {"content", reply}});
        }
        return 0;
      };
    });
}  // namespace
