// `dsv3 bench decode -m DIR`: prefill and batch-1 decode speed on random prompt ids (greedy,
// end-of-sequence ignored), with resident memory and achieved weight bandwidth.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include "command.h"
#include "core/profile.h"
#include "kernels/device_peak.h"
#include "infer/matmul.h"
#include "infer_common.h"

namespace {
struct Options {
  dsv3::app::ModelOptions model;
  int prompt_tokens = 128, new_tokens = 64, repeat = 3;
  bool profile = false;
  uint64_t seed = 1;
  std::string speculative;
};

// Resident and peak resident set sizes from /proc/self/status, in MiB.
std::pair<double, double> rss_mib() {
  std::ifstream in("/proc/self/status");
  std::string key;
  double rss = 0, hwm = 0;
  while (in >> key) {
    if (key == "VmRSS:") in >> rss;
    else if (key == "VmHWM:") in >> hwm;
  }
  return {rss / 1024.0, hwm / 1024.0};
}

// Phase times per prefill (over all its tokens) and per decoded token, against the measured
// time of each; the remainder is what no phase covers (embedding, norms, residuals, sampling).
void print_profile(int runs, int prompt_tokens, int new_tokens, double prefill_tps,
                   double decode_tps) {
  const double prefill_ms = prompt_tokens / prefill_tps * 1e3, token_ms = 1e3 / decode_tps;
  for (const char* mode : {"prefill", "decode"}) {
    const bool prefill = mode[0] == 'p';
    // Prefill: one pass per run. Decode: new_tokens - 1 passes per run after the first token.
    const double per = prefill ? runs : double(runs) * (new_tokens - 1), total = prefill ? prefill_ms : token_ms;
    std::printf("profile, %s (ms per %s, of %.3f ms):\n", mode, prefill ? "prompt" : "token", total);
    double phased = 0;
    for (const auto& e : dsv3::profile::entries()) {
      if (e.name.rfind(mode, 0) != 0) continue;
      const double ms = e.seconds / per * 1e3;
      phased += ms;
      std::printf("  %-28s %8.3f ms  %5.1f%%\n", e.name.c_str() + std::strlen(mode) + 1, ms, 100 * ms / total);
    }
    std::printf("  %-28s %8.3f ms  %5.1f%%\n", "other", total - phased, 100 * (total - phased) / total);
  }
}

dsv3::app::Registrar reg(
    "bench decode", "Prefill and decode tokens/s of a model (random prompt, greedy)",
    [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      o->model.add(sub);
      sub.add_option("--prompt-tokens", o->prompt_tokens, "Prompt length (default 128)")
          ->check(dsv3::app::at_least(1));
      sub.add_option("--new-tokens", o->new_tokens, "Tokens to generate (default 64)")
          ->check(dsv3::app::at_least(2));
      sub.add_option("--repeat", o->repeat, "Timed runs after one warm-up; the median is reported")
          ->check(dsv3::app::at_least(1));
      sub.add_option("--seed", o->seed, "Seed of the random prompt");
      sub.add_option("--speculative", o->speculative, "mtp: MTP speculative decoding")
          ->check(CLI::IsMember({"mtp", "none"}));
      sub.add_flag("--profile", o->profile,
                   "Time the phases of the forward pass (prefill and decode apart) and print them");
      return [o]() {
        using namespace dsv3;
        // Phases are filed as prefill or decode by the rows of the pass.
        DSV3_CHECK(!o->profile || o->prompt_tokens > infer::kSmallRows,
                   "bench decode: --profile needs --prompt-tokens > {} (shorter prompts run "
                   "like decode steps and could not be told apart)", infer::kSmallRows);
        DSV3_CHECK(!o->profile || o->model.device == Device::CPU,
                   "bench decode: --profile times the CPU engine's phases; it is not available "
                   "with --device cuda");
        auto weights = o->model.load();
        infer::Engine engine(weights, o->model.device);
        const ModelConfig& c = engine.config();
        std::mt19937 rng(uint32_t(o->seed));
        std::uniform_int_distribution<int32_t> id(0, c.vocab_size - 1);
        std::vector<int32_t> prompt(size_t(o->prompt_tokens));
        for (auto& t : prompt) t = id(rng);
        infer::GenerateOptions go;
        go.max_new_tokens = o->new_tokens;
        go.cache_dtype = o->model.cache_dtype();
        go.speculative_mtp = o->speculative == "mtp";
        infer::Generator gen(engine);
        std::vector<double> prefill, decode;
        infer::GenerateStats st;
        profile::enable(o->profile);
        for (int r = 0; r <= o->repeat; ++r) {
          gen.generate(prompt, go, nullptr, &st);
          if (r == 0) {  // warm-up: page in the weights, create GEMM primitives
            profile::reset();
            continue;
          }
          prefill.push_back(st.prefill_tokens_per_second());
          decode.push_back(st.decode_tokens_per_second());
        }
        auto median = [](std::vector<double> v) {
          std::sort(v.begin(), v.end());
          return v[v.size() / 2];
        };
        const double pf = median(prefill), dc = median(decode);
        auto [rss, hwm] = rss_mib();
        const double active = double(weights->active_bytes_per_token());
        std::printf("model: %s (%s weights, %s cache), %d threads\n", o->model.model.c_str(),
                    o->model.precision.c_str(), o->model.cache.c_str(), num_threads());
        std::printf("weights: %.1f MiB held, %.1f MiB read per decoded token; latent cache: %.2f "
                    "MiB (%d positions)\n",
                    double(weights->weight_bytes()) / 1048576.0, active / 1048576.0,
                    double(st.cache_bytes) / 1048576.0, o->prompt_tokens + o->new_tokens);
        std::printf("memory: rss=%.1f MiB peak_rss=%.1f MiB\n", rss, hwm);
        std::printf("decode weight bandwidth: %.1f GB/s\n", active * dc / 1e9);
        if (o->model.device == Device::CUDA) {
          // The batch-1 roofline: the bytes one decoded token must read (the active weights, and
          // the latent cache at the decode's mean context) over the measured copy bandwidth.
          const ModelConfig& mc = engine.config();
          const double mean_ctx = o->prompt_tokens + 0.5 * o->new_tokens;
          const double cache_row = double(mc.kv_lora_rank + mc.qk_rope_head_dim) *
                                   double(dtype_size(o->model.cache_dtype()));
          const double bytes = active + double(mc.num_hidden_layers) * mean_ctx * cache_row;
          const double gbps = ops::measure_device_copy_gbps();
          const double roofline = gbps * 1e9 / bytes;
          std::printf("roofline: %.1f MiB per token, device copy %.0f GB/s, %.0f tokens/s; "
                      "decode at %.1f%% of it\n",
                      bytes / 1048576.0, gbps, roofline, 100.0 * dc / roofline);
        }
        if (go.speculative_mtp)
          std::printf("speculative: drafted=%d accepted=%d acceptance=%.3f\n", st.drafted,
                      st.accepted, st.drafted ? double(st.accepted) / st.drafted : 0.0);
        if (o->profile) print_profile(o->repeat, o->prompt_tokens, o->new_tokens, pf, dc);
        std::printf("prompt=%d new=%d prefill tokens/s=%.1f decode tokens/s=%.1f\n",
                    o->prompt_tokens, o->new_tokens, pf, dc);
        return 0;
      };
    });
}  // namespace
