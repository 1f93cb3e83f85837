#include "train/schedule.h"

#include <algorithm>
#include <cmath>

namespace dsv3 {

ScheduleValues schedule_at(const ScheduleSettings& s, int64_t step) {
  const double total = double(std::max<int64_t>(s.total_steps, 1));
  const double progress = double(step) / total;  // fraction of the run completed
  ScheduleValues v{};
  if (step < s.warmup_steps) {
    v.lr = s.peak_lr * double(step + 1) / double(s.warmup_steps);
  } else if (progress < s.constant_until) {
    v.lr = s.peak_lr;
  } else if (progress < s.decay_until) {
    double t = (progress - s.constant_until) / (s.decay_until - s.constant_until);
    double floor = s.final_lr_fraction;
    v.lr = s.peak_lr * (floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * t)));
  } else {
    v.lr = s.peak_lr * s.final_lr_fraction;
  }
  if (progress < s.ramp_until && s.full_micro_batches > s.start_micro_batches) {
    double t = progress / s.ramp_until;
    v.micro_batches = s.start_micro_batches +
                      int64_t(std::floor(t * double(s.full_micro_batches - s.start_micro_batches)));
  } else {
    v.micro_batches = s.full_micro_batches;
  }
  v.mtp_lambda = progress < s.mtp_switch_at ? s.mtp_lambda : s.mtp_lambda_late;
  v.bias_gamma = progress < s.bias_gamma_until ? s.bias_gamma : 0.0;
  return v;
}

}  // namespace dsv3
