#pragma once
// Options shared by the inference commands (generate, chat, perplexity, bench decode): the model
// folder, precision, cache dtype, threads and sampling.
#include <csignal>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "command.h"
#include "core/error.h"
#include "core/threads.h"
#include "infer/engine.h"
#include "infer/generator.h"
#include "infer/text.h"

namespace dsv3::app {

struct ModelOptions {
  std::string model;
  std::string precision = "bf16";
  std::string cache = "bf16";
  int threads = 0;
  Device device = Device::CPU;

  void add(CLI::App& sub) {
    sub.add_option("-m,--model", model, "Model folder (config.json + safetensors)")->required();
    sub.add_option("--dtype", precision, "Weight precision for compute: bf16 (default) or f32")
        ->check(CLI::IsMember({"bf16", "f32"}));
    sub.add_option("--cache-dtype", cache, "Latent cache dtype: bf16 (default) or f32")
        ->check(CLI::IsMember({"bf16", "f32"}));
    add_threads_option(sub, threads);
    add_device_option(sub, device);
  }
  std::shared_ptr<infer::InferWeights> load() const {
    set_num_threads(threads);
    return infer::InferWeights::load(model, infer::parse_precision(precision));
  }
  DType cache_dtype() const { return cache == "f32" ? DType::F32 : DType::BF16; }
};

struct SamplingOptions {
  infer::SamplingParams p;
  int max_new_tokens = 128;
  std::vector<std::string> stop;
  std::vector<int32_t> eos;
  bool ignore_eos = false;
  std::string speculative;

  void add(CLI::App& sub) {
    sub.add_option("-n,--max-new-tokens", max_new_tokens, "Token limit for the reply (default 128)");
    sub.add_option("--temperature", p.temperature, "0 = greedy (default)");
    sub.add_option("--top-k", p.top_k, "Keep the k most probable tokens (0 = off)");
    sub.add_option("--top-p", p.top_p, "Nucleus mass (1 = off)");
    sub.add_option("--min-p", p.min_p, "Drop tokens below min-p x the top probability (0 = off)");
    sub.add_option("--repetition-penalty", p.repetition_penalty, "1 = off");
    sub.add_option("--presence-penalty", p.presence_penalty, "0 = off");
    sub.add_option("--frequency-penalty", p.frequency_penalty, "0 = off");
    sub.add_option("--seed", p.seed, "Sampling seed (same seed, same output)");
    sub.add_option("--stop", stop, "Stop string (repeatable; needs a tokenizer)");
    sub.add_option("--eos-id", eos, "End-of-sequence id (repeatable; default: the tokenizer's or "
                                    "config's eos_token_id)");
    sub.add_flag("--ignore-eos", ignore_eos, "Do not stop at end-of-sequence tokens");
    sub.add_option("--speculative", speculative, "Speculative decoding: mtp")
        ->check(CLI::IsMember({"mtp", "none"}));
  }

  infer::GenerateOptions make(const ModelConfig& c, const infer::TextCodec* text,
                              DType cache) const {
    infer::GenerateOptions o;
    o.sampling = p;
    // With a tokenizer, only ids it can decode are drawn.
    if (text) o.sampling.allowed = text->token_ids(c.vocab_size);
    o.max_new_tokens = max_new_tokens;
    o.cache_dtype = cache;
    o.speculative_mtp = speculative == "mtp";
    if (!ignore_eos) {
      o.eos_ids = eos;
      if (o.eos_ids.empty() && text && text->eos_id()) o.eos_ids.push_back(*text->eos_id());
      if (o.eos_ids.empty() && c.eos_token_id) o.eos_ids.push_back(*c.eos_token_id);
    }
    return o;
  }
};

// "1,2,3" -> ids; errors are prefixed with `what` (the option or file:line it came from).
inline std::vector<int32_t> parse_ids(const std::string& s, const std::string& what = "--prompt-ids") {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string item = s.substr(i, j - i);
    try {
      size_t used = 0;
      long v = std::stol(item, &used);
      DSV3_CHECK(used == item.size() && v >= INT32_MIN && v <= INT32_MAX, "bad id");
      ids.push_back(int32_t(v));
    } catch (const std::exception&) {
      fail("{}: '{}' is not an integer token id", what, item);
    }
    i = j + 1;
  }
  DSV3_CHECK(!ids.empty(), "{}: no ids given", what);
  return ids;
}

// Ctrl-C: sets a flag that the token callback reads; generation stops at the next token.
inline volatile std::sig_atomic_t& interrupted() {
  static volatile std::sig_atomic_t flag = 0;
  return flag;
}
inline void install_interrupt_handler() {
  struct sigaction sa {};
  sa.sa_handler = [](int) { interrupted() = 1; };
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocked read returns so the prompt can be shown again
  sigaction(SIGINT, &sa, nullptr);
}

}  // namespace dsv3::app
