// Softmax cross-entropy over the vocabulary, with its gradient in the same pass if asked.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/device.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {

namespace {
// Grows once to the largest row count seen, then is reused: no allocation in steady state.
float* scratch_row_loss(int64_t rows) {
  static thread_local std::vector<float> buffer;
  if (int64_t(buffer.size()) < rows) buffer.resize(size_t(rows));
  return buffer.data();
}

// The float32 loss of each row into row_loss (0 for left-out rows), and the gradient.
void float_rows(const Tensor& logits, const int32_t* targets, float scale, Tensor* d_logits,
                float* row_loss) {
  const int64_t vocab = logits.dim(-1), rows = logits.numel() / vocab;
  for (int64_t r = 0; r < rows; ++r)
    DSV3_CHECK(targets[r] >= -1 && targets[r] < vocab,
               "cross_entropy: target {} at row {} is outside the vocabulary of {}", targets[r], r,
               vocab);
  const float* lp = logits.f32();
  float* dp = d_logits ? d_logits->f32() : nullptr;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    row_loss[r] = 0.0f;
    const float* row = lp + r * vocab;
    float* drow = dp ? dp + r * vocab : nullptr;
    if (targets[r] < 0) {
      if (drow) std::fill(drow, drow + vocab, 0.0f);
      continue;
    }
    const float target_logit = row[targets[r]];  // read first: d_logits may alias logits
    float mx = row[0];
    for (int64_t j = 1; j < vocab; ++j) mx = std::max(mx, row[j]);
    // exp(row - max): 16 independent partial sums per chunk so the loop vectorizes.
    constexpr int64_t kLanes = 16;
    float partial[kLanes] = {};
    const int64_t whole = vocab / kLanes * kLanes;
    for (int64_t j0 = 0; j0 < whole; j0 += kLanes) {
      float e[kLanes];
      for (int64_t l = 0; l < kLanes; ++l) e[l] = fast::exp(row[j0 + l] - mx);
      for (int64_t l = 0; l < kLanes; ++l) partial[l] += e[l];
      if (drow)
        for (int64_t l = 0; l < kLanes; ++l) drow[j0 + l] = e[l];
    }
    for (int64_t j = whole; j < vocab; ++j) {
      float e = fast::exp(row[j] - mx);
      partial[j - whole] += e;
      if (drow) drow[j] = e;
    }
    double sum = 0.0;
    for (float p : partial) sum += p;
    row_loss[r] = float(std::log(sum) + mx - target_logit);
    if (drow) {
      const float inv = float(1.0 / sum) * scale;
      for (int64_t j = 0; j < vocab; ++j) drow[j] *= inv;
      drow[targets[r]] -= scale;
    }
  }
}

int64_t rows_of(const Tensor& logits) {
  const int64_t vocab = logits.dim(-1);
  return vocab ? logits.numel() / vocab : 0;
}

}  // namespace

double cross_entropy(const Tensor& logits, const int32_t* targets, double scale64,
                     Tensor* d_logits) {
  if (logits.dtype() == DType::F64) return ref::cross_entropy(logits, targets, scale64, d_logits);
  const float scale = float(scale64);
  if (logits.device() == Device::CUDA)
    return cuda_ops::cross_entropy(logits, targets, scale, d_logits);
  // Per-row losses are summed in row order afterwards, so the total is the same for any thread
  // count or timing (an OpenMP reduction would add in arrival order).
  const int64_t rows = rows_of(logits);
  float* row_loss = scratch_row_loss(rows);
  float_rows(logits, targets, scale, d_logits, row_loss);
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) total += row_loss[r];
  return total;
}

void cross_entropy_rows(const Tensor& logits, const int32_t* targets, double scale64,
                        Tensor* d_logits, Tensor& row_loss) {
  const int64_t rows = rows_of(logits);
  DSV3_CHECK(row_loss.dtype() == DType::F64 && row_loss.numel() == rows &&
                 row_loss.device() == logits.device(),
             "cross_entropy_rows: row_loss is {} {} on {}, not float64 [{}] on {}",
             dtype_name(row_loss.dtype()), row_loss.shape().str(), device_name(row_loss.device()),
             rows, device_name(logits.device()));
  if (logits.dtype() == DType::F64) {
    ref::cross_entropy(logits, targets, scale64, d_logits, row_loss.f64());
    return;
  }
  const float scale = float(scale64);
  if (logits.device() == Device::CUDA)
    return cuda_ops::cross_entropy_rows(logits, targets, scale, d_logits, row_loss);
  float* loss32 = scratch_row_loss(rows);
  float_rows(logits, targets, scale, d_logits, loss32);
  double* out = row_loss.f64();
  for (int64_t r = 0; r < rows; ++r) out[r] = loss32[r];
}

}  // namespace dsv3::ops
