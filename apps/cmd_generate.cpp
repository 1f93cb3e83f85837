// `dsv3 generate -m DIR -p TEXT`: generates a continuation and streams it as it comes.
// `--prompt-ids 1,2,3` and `--print-ids` drive a model without a tokenizer (a parity fixture).
// `--batch FILE` decodes several prompts together (one per line; with --batch-ids, lines of
// comma-separated ids), each with its own cache and position, and prints each result when all
// are done.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "command.h"
#include "infer_common.h"

namespace {
struct Options {
  dsv3::app::ModelOptions model;
  dsv3::app::SamplingOptions sampling;
  std::string prompt, prompt_ids, batch;
  bool batch_ids = false;
  bool print_ids = false, stats = false, bos = false;
};

// --batch: reads the prompts, decodes them together, prints "[i] " and each continuation.
int run_batch(const Options& o) {
  using namespace dsv3;
  DSV3_CHECK(o.prompt.empty() && o.prompt_ids.empty(),
             "generate: give exactly one of -p/--prompt, --prompt-ids and --batch");
  DSV3_CHECK(o.sampling.stop.empty(), "generate: --stop is not supported with --batch");
  std::ifstream in(o.batch);
  DSV3_CHECK(in.good() && !std::filesystem::is_directory(o.batch),
             "generate: cannot read the batch file {}", o.batch);
  auto weights = o.model.load();
  infer::Engine engine(weights, o.model.device);
  auto text = infer::TextCodec::open(o.model.model);
  DSV3_CHECK(o.batch_ids || text != nullptr,
             "{}: no tokenizer.json; give the batch as ids with --batch-ids", o.model.model);
  std::vector<std::vector<int32_t>> prompts;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
    if (line.empty()) continue;
    const std::string where = fmt::format("{}:{}", o.batch, number);
    prompts.push_back(o.batch_ids ? app::parse_ids(line, where)
                                  : text->encode(line, o.bos || text->adds_bos()));
    infer::check_token_ids(engine.config(), prompts.back().data(), prompts.back().size(),
                           where.c_str());
  }
  DSV3_CHECK(!prompts.empty(), "generate: the batch file {} has no prompts", o.batch);
  infer::GenerateOptions go = o.sampling.make(engine.config(), text.get(), o.model.cache_dtype());
  infer::Generator gen(engine);
  infer::GenerateStats st;
  auto out = gen.generate_batch(prompts, go, &st);
  for (size_t i = 0; i < out.size(); ++i) {
    std::string shown;
    if (text && !o.print_ids) {
      shown = text->decode(out[i]);
    } else {
      for (size_t j = 0; j < out[i].size(); ++j) shown += (j ? "," : "") + std::to_string(out[i][j]);
    }
    std::printf("[%zu] %s\n", i, shown.c_str());
  }
  if (o.stats)
    std::fprintf(stderr, "sequences=%zu prompt=%d new=%d prefill_tokens/s=%.1f decode_tokens/s=%.1f\n",
                 out.size(), st.prompt_tokens, st.new_tokens, st.prefill_tokens_per_second(),
                 st.decode_tokens_per_second());
  return 0;
}

dsv3::app::Registrar reg(
    "generate", "Generate text (or token ids) from a prompt, streaming it", [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      o->model.add(sub);
      o->sampling.add(sub);
      sub.add_option("-p,--prompt", o->prompt, "Prompt text (needs tokenizer.json in the model folder)");
      sub.add_option("--prompt-ids", o->prompt_ids, "Prompt as comma-separated token ids");
      sub.add_option("--batch", o->batch,
                     "Decode the prompts of FILE (one per line) together as a batch");
      sub.add_flag("--batch-ids", o->batch_ids,
                   "The --batch lines are comma-separated token ids, not text");
      sub.add_flag("--print-ids", o->print_ids, "Print the generated token ids (comma-separated)");
      sub.add_flag("--bos", o->bos, "Prepend the tokenizer's BOS token to a text prompt");
      sub.add_flag("--stats", o->stats, "Print timing and speculative acceptance to stderr");
      return [o]() {
        using namespace dsv3;
        if (!o->batch.empty()) return run_batch(*o);
        DSV3_CHECK(!o->batch_ids, "generate: --batch-ids needs --batch FILE");
        DSV3_CHECK(o->prompt.empty() != o->prompt_ids.empty(),
                   "generate: give exactly one of -p/--prompt, --prompt-ids and --batch");
        auto weights = o->model.load();
        infer::Engine engine(weights, o->model.device);
        auto text = infer::TextCodec::open(o->model.model);
        std::vector<int32_t> prompt;
        if (!o->prompt_ids.empty()) {
          prompt = app::parse_ids(o->prompt_ids);
        } else {
          DSV3_CHECK(text != nullptr, "{}: no tokenizer.json; use --prompt-ids and --print-ids",
                     o->model.model);
          prompt = text->encode(o->prompt, o->bos || text->adds_bos());
        }
        DSV3_CHECK(o->sampling.stop.empty() || text != nullptr,
                   "--stop needs a tokenizer (the model folder has no tokenizer.json)");
        infer::GenerateOptions go = o->sampling.make(engine.config(), text.get(), o->model.cache_dtype());
        const bool stream_text = text != nullptr && !o->print_ids;
        infer::StopStrings stops(o->sampling.stop);
        app::install_interrupt_handler();
        auto on_token = [&](int32_t id) {
          if (text && (stream_text || !o->sampling.stop.empty())) {
            std::string piece = stops.push(text->push(id));
            if (stream_text) {
              std::fwrite(piece.data(), 1, piece.size(), stdout);
              std::fflush(stdout);
            }
            if (stops.stopped()) return false;
          }
          return !app::interrupted();
        };
        infer::Generator gen(engine);
        infer::GenerateStats st;
        std::vector<int32_t> out = gen.generate(prompt, go, on_token, &st);
        if (stream_text) {
          std::string rest = stops.push(text->finish());
          rest += stops.finish();
          std::fwrite(rest.data(), 1, rest.size(), stdout);
          std::fputc('\n', stdout);
        }
        if (o->print_ids || !text) {
          std::string ids;
          for (size_t i = 0; i < out.size(); ++i) ids += (i ? "," : "") + std::to_string(out[i]);
          std::printf("%s\n", ids.c_str());
        }
        if (app::interrupted()) std::fprintf(stderr, "[interrupted: output truncated]\n");
        if (o->stats) {
          std::fprintf(stderr,
                       "prompt=%d new=%d finish=%s prefill_tokens/s=%.1f decode_tokens/s=%.1f "
                       "cache_bytes=%zu\n",
                       st.prompt_tokens, st.new_tokens, st.finish_reason.c_str(),
                       st.prefill_tokens_per_second(), st.decode_tokens_per_second(),
                       st.cache_bytes);
          if (go.speculative_mtp)
            std::fprintf(stderr, "speculative: drafted=%d accepted=%d acceptance=%.3f passes=%d\n",
                         st.drafted, st.accepted, st.drafted ? double(st.accepted) / st.drafted : 0.0,
                         st.passes);
        }
        return 0;
      };
    });
}  // namespace
