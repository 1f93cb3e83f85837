#include "train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "core/threads.h"
#include "kernels/device_peak.h"
#include "kernels/ops.h"
#include "model/flops.h"
#include "model/transformer.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/data/atomic_file.h"
#include "tokenizer/tokenizer.h"
#include "train/data/batch_loader.h"
#include "train/data/hash.h"
#include "train/metrics.h"
#include "train/schedule.h"

namespace dsv3 {

namespace fs = std::filesystem;

double max_violation(const float* load, int64_t experts) {
  double total = 0, worst = 0;
  for (int64_t e = 0; e < experts; ++e) {
    total += load[e];
    worst = std::max(worst, double(load[e]));
  }
  return total > 0 ? worst / (total / double(experts)) - 1.0 : 0.0;
}

namespace {

std::atomic<bool> g_stop_requested{false};
void on_interrupt(int) { g_stop_requested = true; }

const char* balance_name(BalanceMode m) {
  switch (m) {
    case BalanceMode::LossFree: return "loss-free";
    case BalanceMode::AuxLoss: return "aux-loss";
    case BalanceMode::None: return "none";
  }
  return "?";
}

// Everything that must match for --resume to continue a run rather than start another one.
nlohmann::json run_identity(const TrainSettings& s) {
  return {{"seq", s.seq},           {"micro_batch", s.micro_batch},
          {"micro_batches", s.micro_batches}, {"start_micro_batches", s.start_micro_batches},
          {"steps", s.steps},       {"warmup_steps", s.warmup_steps},
          {"lr", s.lr},             {"weight_decay", s.weight_decay},
          {"clip", s.clip},         {"balance", balance_name(s.balance)},
          {"balance_alpha", s.balance_alpha}, {"bias_gamma", s.bias_gamma},
          {"mtp_lambda", s.mtp_lambda}, {"seed", s.seed}};
}

struct Validation {
  double loss = 0;          // main next-token cross-entropy
  double accuracy = 0;      // main head: top-1 accuracy of the next token
  double mtp_accuracy = 0;  // MTP depth 1: top-1 accuracy of the token after next (-1: no MTP)
};

// Top-1 accuracy of logits [rows, vocab] against targets (-1: not counted).
void count_correct(const Tensor& logits, const int32_t* targets, int64_t* correct, int64_t* total) {
  const Tensor host = logits.to(Device::CPU);
  const int64_t vocab = logits.dim(-1), rows = logits.numel() / vocab;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    const float* row = host.f32() + r * vocab;
    *correct += std::max_element(row, row + vocab) - row == targets[r];
    ++*total;
  }
}

Validation validate(Transformer& model, const TrainSettings& s, const LossWeights& lw,
                    int64_t batches) {
  // A fresh loader each time: every evaluation sees the same validation windows.
  BatchLoader val(s.data_dir, "validation", s.seq, s.seed, FimSettings{0.0});
  std::vector<int32_t> tokens(size_t(s.micro_batch * s.seq)), labels(tokens.size()),
      next_next(tokens.size());
  Validation v;
  int64_t correct = 0, total = 0, mtp_correct = 0, mtp_total = 0;
  for (int64_t i = 0; i < batches; ++i) {
    val.next(s.micro_batch, tokens.data(), labels.data());
    v.loss += model.step(tokens.data(), labels.data(), lw, false).main;
    count_correct(model.logits(), labels.data(), &correct, &total);
    if (s.model.num_nextn_predict_layers > 0) {
      // Depth 1 at position i predicts the label of position i + 1 (the token after next).
      for (int64_t b = 0; b < s.micro_batch; ++b)
        for (int64_t t = 0; t < s.seq; ++t)
          next_next[size_t(b * s.seq + t)] = t + 1 < s.seq ? labels[size_t(b * s.seq + t + 1)] : -1;
      count_correct(model.mtp_logits(1), next_next.data(), &mtp_correct, &mtp_total);
    }
  }
  v.loss /= double(batches);
  v.accuracy = double(correct) / double(std::max<int64_t>(total, 1));
  v.mtp_accuracy = mtp_total ? double(mtp_correct) / double(mtp_total) : -1.0;
  return v;
}

}  // namespace

TrainOutcome train(const TrainSettings& s) {
  using clock = std::chrono::steady_clock;
  set_num_threads(s.threads);
  const ModelConfig& c = s.model;
  DSV3_CHECK(!s.data_dir.empty(), "no training data: give --data DIR (made by dsv3 prepare)");
  DSV3_CHECK(s.steps > 0 && s.micro_batch > 0 && s.seq > 1 && s.micro_batches > 0,
             "steps, batch and sequence length must be positive");
  DSV3_CHECK(s.seq <= c.max_position_embeddings,
             "sequence length {} exceeds the model's max_position_embeddings {}", s.seq,
             c.max_position_embeddings);
  fs::create_directories(s.run_dir);

  // Data. FIM needs the tokenizer's sentinels; the tokenizer must be the one the data was made with.
  FimSettings fim{0.0};
  const fs::path tokenizer_json = fs::path(s.tokenizer_dir) / "tokenizer.json";
  if (!s.tokenizer_dir.empty() && fs::exists(tokenizer_json)) {
    fim = fim_settings_from(tok::Tokenizer::load(tokenizer_json.string()));
  } else {
    std::printf("note: no tokenizer given (--tokenizer-dir): FIM is off and checkpoints carry no "
                "tokenizer files\n");
  }
  BatchLoader loader(s.data_dir, "train", s.seq, s.seed, fim);
  if (fim.rate > 0 || fs::exists(tokenizer_json))
    loader.expect_tokenizer(tokenizer_file_hash(tokenizer_json.string()), loader.vocab_size());
  DSV3_CHECK(loader.vocab_size() <= c.vocab_size,
             "{}: the data's vocabulary ({} tokens) does not fit the model's vocab_size {}",
             s.data_dir, loader.vocab_size(), c.vocab_size);

  // Model and optimizer, fresh or from the last checkpoint.
  ModelWeights weights(c);
  AdamW opt(weights);
  int64_t start_step = 0;
  double tokens_seen = 0;
  const auto latest = latest_checkpoint(s.run_dir);
  if (s.resume) {
    DSV3_CHECK(latest.has_value(), "{}: --resume given but the run has no checkpoint",
               s.run_dir);
    nlohmann::json state;
    load_checkpoint(*latest, weights, &opt, &state);
    nlohmann::json want = run_identity(s);
    if (state.contains("run") && state["run"] != want) {
      // Name each setting that differs, with the value the run was started with.
      std::string diff;
      const nlohmann::json& was = state["run"];
      for (const auto& [key, value] : want.items()) {
        const std::string before = was.contains(key) ? was[key].dump() : "(unset)";
        if (before != value.dump())
          diff += fmt::format("{}{} {} (now {})", diff.empty() ? "" : ", ", key, before, value.dump());
      }
      for (const auto& [key, value] : was.items())
        if (!want.contains(key)) diff += fmt::format("{}{} {} (now unset)", diff.empty() ? "" : ", ", key, value.dump());
      fail("{}: --resume with different settings than the run was started with: {}; resume with "
           "the settings it was started with, or start a new run (--out)",
           *latest, diff);
    }
    start_step = state.at("step").get<int64_t>();
    tokens_seen = state.value("tokens_seen", 0.0);
    loader.restore(state.at("data"));
    if (start_step >= s.steps) {
      std::printf("the run is complete: %lld of %lld steps, checkpoint %s\n",
                  (long long)start_step, (long long)s.steps, latest->c_str());
      TrainOutcome done;
      done.steps_done = start_step;
      done.last_checkpoint = *latest;
      done.already_complete = true;
      return done;
    }
    std::printf("resuming %s at step %lld\n", latest->c_str(), (long long)start_step);
  } else {
    DSV3_CHECK(!latest.has_value(),
               "{}: the run folder already has checkpoints; use --resume to continue it or "
               "another --out",
               s.run_dir);
    weights.init_random(s.seed, float(s.init_std));
    // The model config of the run, for dsv3 generate and for other tools.
    write_file_atomically((fs::path(s.run_dir) / "config.json").string(), c.to_json().dump(2) + "\n");
  }
  // Loaded and initialised on the host; trained where the settings say.
  weights.to_device(s.device);
  opt.to_device(s.device);
  weights.set_compute_dtype(s.precision);
  nlohmann::json identity = run_identity(s);
  MetricsLog log(s.run_dir, s.resume ? start_step : -1);

  Transformer model(weights, s.micro_batch, s.seq);
  ScheduleSettings sched;
  sched.total_steps = s.steps;
  sched.warmup_steps = s.warmup_steps;
  sched.peak_lr = s.lr;
  sched.start_micro_batches = s.start_micro_batches;
  sched.full_micro_batches = s.micro_batches;
  sched.mtp_lambda = s.mtp_lambda;
  sched.mtp_lambda_late = s.mtp_lambda / 3.0;  // 0.3 -> 0.1 as in the report
  sched.bias_gamma = s.balance == BalanceMode::LossFree ? s.bias_gamma : 0.0;
  const double alpha = s.balance == BalanceMode::None ? 0.0 : s.balance_alpha;
  AdamWSettings adam{s.lr, s.beta1, s.beta2, s.eps, s.weight_decay, s.clip};

  // MoE layers (MTP blocks included) and their per-step load accumulators.
  std::vector<int> moe_layers;
  for (int l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers; ++l)
    if (c.is_moe_layer(l)) moe_layers.push_back(l);
  std::vector<Tensor> step_load;
  for (size_t i = 0; i < moe_layers.size(); ++i)
    step_load.push_back(Tensor::zeros({c.n_routed_experts}));
  auto bias_of = [&](int layer) -> Tensor& {
    return layer < c.num_hidden_layers
               ? weights.layers[size_t(layer)].experts.bias
               : weights.mtp[size_t(layer - c.num_hidden_layers)].block.experts.bias;
  };

  // MFU is taken against the measured dense GEMM rate of the precision the step runs in.
  const double peak_gflops = s.device == Device::CPU
                                 ? ops::measure_gemm_gflops()
                                 : ops::measure_device_gemm_gflops(s.precision);
  const StepFlops f = training_step_flops(c, s.micro_batch, s.seq);  // per micro-batch
  const bool tty = isatty(fileno(stdout));
  std::vector<int32_t> tokens(size_t(s.micro_batch * s.seq)), labels(tokens.size());
  g_stop_requested = false;
  auto old_handler = std::signal(SIGINT, on_interrupt);
  std::printf("training %s: %.1fM parameters (%.1fM active), %lld steps of up to %lld x %lld x "
              "%lld tokens, on %s (%s), %d threads, balance %s, GEMM peak %.0f GFLOP/s\n",
              s.run_dir.c_str(), c.parameter_count() / 1e6, c.active_parameter_count() / 1e6,
              (long long)s.steps, (long long)s.micro_batches, (long long)s.micro_batch,
              (long long)s.seq, std::string(device_name(s.device)).c_str(),
              std::string(dtype_name(s.precision)).c_str(), num_threads(),
              balance_name(s.balance), peak_gflops);

  TrainOutcome out;
  auto save = [&](int64_t step) {
    CheckpointContents cc;
    cc.weights = &weights;
    cc.optimizer = &opt;
    cc.tokenizer_dir = s.tokenizer_dir;
    cc.state = {{"tokens_seen", tokens_seen}, {"data", loader.state()}, {"run", identity}};
    out.last_checkpoint = save_checkpoint(s.run_dir, step, cc, s.keep_last);
  };

  int bad_in_a_row = 0;
  const auto run_start = clock::now();
  int64_t steps_this_run = 0;
  for (int64_t step = start_step; step < s.steps; ++step) {
    const auto t0 = clock::now();
    const ScheduleValues sv = schedule_at(sched, step);
    LossWeights lw{sv.mtp_lambda, alpha};
    weights.discard_grads();  // the first micro-batch overwrites them
    for (Tensor& l : step_load) l.zero_();
    double loss = 0, main = 0, mtp = 0, balance = 0;
    for (int64_t micro = 0; micro < sv.micro_batches; ++micro) {
      loader.next(s.micro_batch, tokens.data(), labels.data());
      StepResult r = model.step(tokens.data(), labels.data(), lw, true);
      loss += r.total;
      main += r.main;
      for (double m : r.mtp) mtp += m / double(r.mtp.size());
      balance += r.balance_sum;
      for (size_t i = 0; i < moe_layers.size(); ++i) {
        const RouterActivations* ra = model.routing(moe_layers[i]);
        for (int64_t e = 0; e < c.n_routed_experts; ++e)
          step_load[i].f32()[e] += ra->load.f32()[e];
      }
    }
    const double m = double(sv.micro_batches);
    loss /= m, main /= m, mtp /= m, balance /= m;
    opt.scale_grads(float(1.0 / m));
    const double norm = opt.grad_norm();
    const double step_tokens = m * double(s.micro_batch * s.seq);
    tokens_seen += step_tokens;

    nlohmann::json rec = {{"step", step + 1}, {"loss", loss}, {"loss_main", main},
                          {"lr", sv.lr},      {"grad_norm", norm}, {"tokens", tokens_seen}};
    if (!std::isfinite(loss) || !std::isfinite(norm)) {
      // Skip the update (weights, moments and biases stay as they were) and say so.
      ++bad_in_a_row;
      rec["skipped"] = true;
      log.write(rec);
      std::printf("%sstep %lld: non-finite %s (%g); update skipped (%d in a row)\n",
                  tty ? "\n" : "", (long long)step + 1, std::isfinite(loss) ? "gradient" : "loss",
                  std::isfinite(loss) ? norm : loss, bad_in_a_row);
      if (bad_in_a_row >= s.max_bad_steps) {
        save(step + 1);
        fail("{} non-finite steps in a row at step {}: stopping. The weights are those of the last "
             "good step, saved in {}; lower the learning rate and --resume",
             bad_in_a_row, step + 1, out.last_checkpoint);
      }
      continue;
    }
    bad_in_a_row = 0;
    opt.step(adam, sv.lr, norm);
    weights.refresh_compute();  // BF16 copies of the updated master weights (no-op in F32)
    double worst_vio = 0;
    for (size_t i = 0; i < moe_layers.size(); ++i) {
      worst_vio = std::max(worst_vio, max_violation(step_load[i].f32(), c.n_routed_experts));
      if (sv.bias_gamma > 0) update_balance_bias(bias_of(moe_layers[i]), step_load[i], sv.bias_gamma);
    }
    const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
    const double tps = step_tokens / seconds;
    const double mfu = f.total() * m / seconds / (peak_gflops * 1e9);
    ++steps_this_run;
    const double elapsed = std::chrono::duration<double>(clock::now() - run_start).count();
    const double eta = elapsed / double(steps_this_run) * double(s.steps - step - 1);
    rec.update({{"loss_mtp", mtp}, {"balance", balance}, {"tokens_per_s", tps}, {"mfu", mfu},
                {"max_vio", worst_vio}, {"mtp_lambda", sv.mtp_lambda},
                {"micro_batches", sv.micro_batches}, {"seconds", seconds}});
    out.last_loss = main;

    const bool eval_now = s.eval_every > 0 && ((step + 1) % s.eval_every == 0 || step + 1 == s.steps);
    if (eval_now) {
      Validation v = validate(model, s, lw, s.eval_batches);
      rec["val_loss"] = v.loss;
      rec["val_ppl"] = std::exp(v.loss);
      rec["val_acc"] = v.accuracy;
      if (v.mtp_accuracy >= 0) rec["val_mtp_acc"] = v.mtp_accuracy;
      out.last_val_loss = v.loss;
    }
    log.write(rec);
    std::string line = fmt::format(
        "step {:>6}/{}  loss {:.4f}  mtp {:.4f}  lr {:.2e}  {:.0f} tok/s  MFU {:.1f}%  MaxVio {:.3f}"
        "  ETA {}",
        step + 1, s.steps, main, mtp, sv.lr, tps, mfu * 100, worst_vio, format_duration(eta));
    if (eval_now) line += fmt::format("  val {:.4f} (ppl {:.1f})", out.last_val_loss, std::exp(out.last_val_loss));
    if (tty) {
      std::printf("\r\033[K%s", line.c_str());
      if (eval_now) std::printf("\n");
    } else if ((step + 1) % s.log_every == 0 || eval_now || step == start_step) {
      std::printf("%s\n", line.c_str());
    }
    std::fflush(stdout);
    out.steps_done = step + 1;
    const bool last = step + 1 == s.steps;
    const bool stop = g_stop_requested || step + 1 == s.stop_after;
    if ((s.save_every > 0 && (step + 1) % s.save_every == 0) || last || stop) save(step + 1);
    if (stop && !last) {
      std::printf("%sinterrupted: saved %s; continue with --resume\n", tty ? "\n" : "",
                  out.last_checkpoint.c_str());
      break;
    }
  }
  if (tty) std::printf("\n");
  std::signal(SIGINT, old_handler);
  return out;
}

}  // namespace dsv3
