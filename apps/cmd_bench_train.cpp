// `dsv3 bench train-step`: times forward + backward (every loss term) on random weights and
// tokens, and reports achieved GFLOP/s and tokens/s.
#include <chrono>
#include <cstdio>
#include <random>
#include <string>

#include "command.h"
#include "core/device.h"
#include "core/profile.h"
#include "core/threads.h"
#include "kernels/device_peak.h"
#include "model/flops.h"
#include "model/transformer.h"

namespace {
struct Options {
  std::string config;
  int batch = 4, seq = 256, threads = 0, steps = 5, warmup = 1;
  uint64_t seed = 0;
  dsv3::Device device = dsv3::Device::CPU;
  std::string precision = "auto";
  bool profile = false;
};

int run(const Options& o) {
  using clock = std::chrono::steady_clock;
  dsv3::set_num_threads(o.threads);
  dsv3::ModelConfig c = dsv3::ModelConfig::load(o.config);
  dsv3::ModelWeights weights(c);
  weights.init_random(o.seed);
  dsv3::profile::enable(o.profile);
  weights.to_device(o.device);
  const dsv3::DType precision = dsv3::app::resolve_precision(o.precision, o.device);
  weights.set_compute_dtype(precision);
  dsv3::Transformer model(weights, o.batch, o.seq);
  std::mt19937 rng(uint32_t(o.seed + 1));
  std::uniform_int_distribution<int32_t> token(0, c.vocab_size - 1);
  std::vector<int32_t> tokens(size_t(o.batch) * o.seq + 1);
  for (auto& t : tokens) t = token(rng);
  const int32_t* labels = tokens.data() + 1;  // next-token labels of a random stream
  dsv3::LossWeights loss{c.train.mtp_lambda, c.train.balance_alpha};
  dsv3::StepFlops flops = dsv3::training_step_flops(c, o.batch, o.seq);

  std::printf(
      "config: %s  params=%.1fM active=%.1fM  batch=%d seq=%d device=%s precision=%s "
      "threads=%d  activations=%.0f MiB\n",
      o.config.c_str(), c.parameter_count() / 1e6, c.active_parameter_count() / 1e6, o.batch, o.seq,
      std::string(dsv3::device_name(o.device)).c_str(),
      std::string(dsv3::dtype_name(precision)).c_str(), dsv3::num_threads(),
      model.activation_bytes() / 1048576.0);
  double total = 0;
  for (int i = 0; i < o.warmup + o.steps; ++i) {
    auto t0 = clock::now();
    weights.discard_grads();  // as training does: the step overwrites them
    dsv3::StepResult r = model.step(tokens.data(), labels, loss, true);
    dsv3::device::synchronize(o.device);  // the backward pass may still be queued
    double s = std::chrono::duration<double>(clock::now() - t0).count();
    bool warm = i < o.warmup;
    if (!warm) total += s;
    if (i + 1 == o.warmup) dsv3::profile::reset();  // phases of the timed steps only
    std::printf("step %d%s: %.1f ms  loss=%.4f\n", i + 1, warm ? " (warm-up)" : "", s * 1e3,
                r.total);
  }
  double per_step = total / o.steps;
  double tokens_per_s = double(o.batch) * o.seq / per_step;
  std::printf(
      "forward+backward: %.1f ms/step  model GFLOP/step=%.2f (matmul %.2f, attention "
      "%.2f)  GFLOP/s=%.1f\n",
      per_step * 1e3, flops.total() / 1e9, flops.matmul / 1e9, flops.attention / 1e9,
      flops.total() / per_step / 1e9);
  if (o.device == dsv3::Device::CUDA) {
    // MFU against the measured dense GEMM peak of the step's precision, and against the BF16
    // peak (the figure the report and the issue quote) when the step runs in float32.
    const double achieved = flops.total() / per_step / 1e9;
    const double peak = dsv3::ops::measure_device_gemm_gflops(precision);
    std::printf("MFU: %.1f%% of the measured %s GEMM peak (%.0f GFLOP/s)", 100 * achieved / peak,
                std::string(dsv3::dtype_name(precision)).c_str(), peak);
    if (precision != dsv3::DType::BF16) {
      const double bf16 = dsv3::ops::measure_device_gemm_gflops(dsv3::DType::BF16);
      std::printf(", %.1f%% of the BF16 peak (%.0f GFLOP/s)", 100 * achieved / bf16, bf16);
    }
    std::printf("\n");
  }
  if (o.profile) {
    // Phases waited for the device at both ends: shares of a serialised step.
    double phased = 0;
    for (const auto& e : dsv3::profile::entries()) phased += e.seconds;
    std::printf("profile (each phase synchronised; per step, of %.1f ms):\n", total / o.steps * 1e3);
    for (const auto& e : dsv3::profile::entries())
      std::printf("  %-44s %8.2f ms  %5.1f%%  (%ld calls)\n", e.name.c_str(),
                  e.seconds / o.steps * 1e3, 100 * e.seconds / total, e.calls / o.steps);
    std::printf("  %-44s %8.2f ms  %5.1f%%\n", "other (norms, residuals, embedding, MTP glue)",
                (total - phased) / o.steps * 1e3, 100 * (total - phased) / total);
  }
  std::printf("tokens/s=%.1f\n", tokens_per_s);
  return 0;
}

dsv3::app::Registrar reg(
    "bench train-step", "Time one training step (forward + backward) on random data",
    [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      sub.add_option("--config", o->config, "Model config.json")->required();
      sub.add_option("--batch", o->batch, "Sequences per step")->check(dsv3::app::at_least(1));
      sub.add_option("--seq", o->seq, "Tokens per sequence")->check(dsv3::app::at_least(1));
      dsv3::app::add_threads_option(sub, o->threads);
      sub.add_option("--steps", o->steps, "Timed steps")->check(dsv3::app::at_least(1));
      sub.add_option("--warmup", o->warmup, "Untimed steps first")->check(dsv3::app::at_least(0));
      sub.add_option("--seed", o->seed, "Seed for weights and tokens");
      dsv3::app::add_device_option(sub, o->device);
      dsv3::app::add_precision_option(sub, o->precision);
      sub.add_flag("--profile", o->profile,
                   "Time the step's phases (each waits for the device: slower, shares only)");
      return [o]() { return run(*o); };
    });
}  // namespace
