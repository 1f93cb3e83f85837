#pragma once
// The training loop: DeepSeek-V3 pre-training as DESIGN.md section 2 states it, at the scale of
// the machine. Gradient accumulation over micro-batches (the batch-size ramp adds micro-batches),
// AdamW with global-norm clipping, the report's schedules, the auxiliary-loss-free bias update,
// validation, metrics, atomic checkpoints and exact resume.
#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "model/config.h"

namespace dsv3 {

enum class BalanceMode {
  LossFree,  // the correction bias (gamma) plus the small sequence-wise loss (alpha), as in V3
  AuxLoss,   // a pure auxiliary loss: alpha only, the bias never moves
  None,      // neither
};

struct TrainSettings {
  std::string run_dir = "runs/default";
  std::string data_dir;       // prepared shards (dsv3 prepare)
  std::string tokenizer_dir;  // copied into checkpoints (tokenizer.json, tokenizer_config.json)
  ModelConfig model;
  int64_t seq = 256;
  int64_t micro_batch = 4;           // sequences per forward/backward
  int64_t micro_batches = 2;         // per optimizer step at full batch size
  int64_t start_micro_batches = 1;   // the batch-size ramp starts here
  int64_t steps = 2000;
  int64_t warmup_steps = 30;
  double lr = 1e-3;
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, clip = 1.0;
  double init_std = 0.006;
  BalanceMode balance = BalanceMode::LossFree;
  double balance_alpha = 1e-4;  // sequence-wise balance loss weight
  double bias_gamma = 0.001;    // bias update speed
  double mtp_lambda = 0.3;      // 0.1 for the last third (schedule.h)
  int64_t eval_every = 100, eval_batches = 16;
  int64_t save_every = 250;
  int keep_last = 2;
  int64_t log_every = 10;
  int max_bad_steps = 5;        // consecutive non-finite steps before the run stops
  uint64_t seed = 1234;
  bool resume = false;
  int64_t stop_after = -1;      // stop (with a checkpoint) after this step, as an interruption would
  int threads = 0;
  Device device = Device::CPU;  // where the model trains (the data pipeline stays on the host)
  DType precision = DType::F32;  // GEMM operands: F32, or BF16 mixed precision (GPU)
};

struct TrainOutcome {
  int64_t steps_done = 0;
  double last_loss = 0, last_val_loss = 0;
  std::string last_checkpoint;
  bool already_complete = false;  // --resume of a run that had done all its steps
};

// Runs (or resumes) a training run; throws dsv3::Error with a clear message on bad input.
TrainOutcome train(const TrainSettings& settings);

// The largest expert load over the mean load, minus 1 (0 is perfectly balanced).
double max_violation(const float* load, int64_t experts);

}  // namespace dsv3
