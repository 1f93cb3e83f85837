// Reference softmax cross-entropy: loss = logsumexp(row) - row[target], in float64.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/reference.h"

namespace dsv3::ref {
namespace t {

template <typename T>
double cross_entropy(const T* logits, int64_t rows, int64_t vocab, const int32_t* targets,
                     double scale, T* d_logits, double* row_loss) {
  double total = 0.0;
  std::vector<double> p(static_cast<size_t>(vocab));
  for (int64_t r = 0; r < rows; ++r) {
    DSV3_CHECK(targets[r] >= -1 && targets[r] < vocab,
               "ref::cross_entropy: target {} at row {} is outside the vocabulary of {}",
               targets[r], r, vocab);
    const T* row = logits + r * vocab;
    if (row_loss) row_loss[r] = 0.0;
    if (targets[r] < 0) {
      if (d_logits) std::fill(d_logits + r * vocab, d_logits + (r + 1) * vocab, T(0));
      continue;
    }
    double mx = -INFINITY;
    for (int64_t j = 0; j < vocab; ++j) mx = std::max(mx, double(row[j]));
    double sum = 0.0;
    for (int64_t j = 0; j < vocab; ++j) sum += (p[size_t(j)] = std::exp(double(row[j]) - mx));
    const double loss = std::log(sum) + mx - double(row[targets[r]]);
    total += loss;
    if (row_loss) row_loss[r] = loss;
    // The row is read completely before the gradient is written: d_logits may alias logits.
    if (d_logits) {
      for (int64_t j = 0; j < vocab; ++j) {
        const double onehot = j == targets[r] ? 1.0 : 0.0;
        d_logits[r * vocab + j] = T(scale * (p[size_t(j)] / sum - onehot));
      }
    }
  }
  return total;
}

template double cross_entropy<float>(const float*, int64_t, int64_t, const int32_t*, double,
                                     float*, double*);
template double cross_entropy<double>(const double*, int64_t, int64_t, const int32_t*, double,
                                      double*, double*);

}  // namespace t

double cross_entropy(const Tensor& logits, const int32_t* targets, double scale, Tensor* d_logits,
                     double* row_loss) {
  return with_real(logits, [&](auto real_zero) -> double {
    using T = decltype(real_zero);
    const int64_t vocab = logits.dim(-1), rows = logits.numel() / vocab;
    return t::cross_entropy(logits.real<T>(), rows, vocab, targets, scale,
                            d_logits ? d_logits->real<T>() : nullptr, row_loss);
  });
}

double cross_entropy(const Tensor& logits, const int32_t* targets, double scale,
                     Tensor* d_logits) {
  return cross_entropy(logits, targets, scale, d_logits, nullptr);
}

void cross_entropy_rows(const Tensor& logits, const int32_t* targets, double scale,
                        Tensor* d_logits, Tensor& row_loss) {
  DSV3_CHECK(row_loss.dtype() == DType::F64 && row_loss.numel() == logits.numel() / logits.dim(-1),
             "ref::cross_entropy_rows: row_loss is {} {}", dtype_name(row_loss.dtype()),
             row_loss.shape().str());
  cross_entropy(logits, targets, scale, d_logits, row_loss.f64());
}

}  // namespace dsv3::ref
