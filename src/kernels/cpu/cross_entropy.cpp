// Softmax cross-entropy over the vocabulary, with its gradient in the same pass if asked.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/fast_math.h"
#include "kernels/ops.h"

namespace dsv3::ops {

double cross_entropy(const Tensor& logits, const int32_t* targets, float scale, Tensor* d_logits) {
  const int64_t vocab = logits.dim(-1), rows = logits.numel() / vocab;
  for (int64_t r = 0; r < rows; ++r)
    DSV3_CHECK(targets[r] >= -1 && targets[r] < vocab,
               "cross_entropy: target {} at row {} is outside the vocabulary of {}", targets[r], r,
               vocab);
  const float* lp = logits.f32();
  float* dp = d_logits ? d_logits->f32() : nullptr;
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = lp + r * vocab;
    float* drow = dp ? dp + r * vocab : nullptr;
    if (targets[r] < 0) {
      if (drow) std::fill(drow, drow + vocab, 0.0f);
      continue;
    }
    float mx = row[0];
    for (int64_t j = 1; j < vocab; ++j) mx = std::max(mx, row[j]);
    // Sum in float lanes of 16 partial sums (vectorized), then in double.
    float partial[16] = {};
    if (drow) {
      for (int64_t j = 0; j < vocab; ++j) {
        float e = fast::exp(row[j] - mx);
        drow[j] = e;
        partial[j & 15] += e;
      }
    } else {
      for (int64_t j = 0; j < vocab; ++j) partial[j & 15] += fast::exp(row[j] - mx);
    }
    double sum = 0.0;
    for (float p : partial) sum += p;
    total += std::log(sum) + mx - row[targets[r]];
    if (drow) {
      const float inv = float(1.0 / sum) * scale;
      for (int64_t j = 0; j < vocab; ++j) drow[j] *= inv;
      drow[targets[r]] -= scale;
    }
  }
  return total;
}

}  // namespace dsv3::ops
