#pragma once
// The DeepSeek-V3 report's training schedules, scaled from its 14.8T tokens to a run of any
// length by the fraction of the run completed:
//   learning rate: linear warmup -> constant until 10.0T/14.8T (67.6%) -> cosine decay to 10%
//                  of the peak until 14.3T/14.8T (96.6%) -> constant 10% tail;
//   batch size:    linear ramp from a start size to the full size over the first 469B/14.8T
//                  (3.2%) of tokens, then constant;
//   MTP lambda:    0.3 for the first 10T (the first two thirds), 0.1 after;
//   bias gamma:    0.001 until 14.3T, 0 for the last 500B (3.4%).
#include <cstdint>

namespace dsv3 {

struct ScheduleSettings {
  int64_t total_steps = 1000;
  int64_t warmup_steps = 50;
  double peak_lr = 1e-3;
  double constant_until = 10.0 / 14.8;  // fraction of the run
  double decay_until = 14.3 / 14.8;
  double final_lr_fraction = 0.1;
  // Batch ramp, in micro-batches per optimizer step.
  int64_t start_micro_batches = 1, full_micro_batches = 1;
  double ramp_until = 0.469 / 14.8;
  // MTP weight and bias-update speed.
  double mtp_lambda = 0.3, mtp_lambda_late = 0.1;
  double mtp_switch_at = 10.0 / 14.8;
  double bias_gamma = 0.001;
  double bias_gamma_until = 14.3 / 14.8;
};

struct ScheduleValues {
  double lr;
  int64_t micro_batches;
  double mtp_lambda;
  double bias_gamma;
};

// The values for optimizer step `step` (0-based).
ScheduleValues schedule_at(const ScheduleSettings& s, int64_t step);

}  // namespace dsv3
