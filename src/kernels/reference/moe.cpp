// Reference MoE data movement: the gather into expert order, the weighted combine and its
// backward, and the scatter-add back to tokens. Every sum in float64, rounded once.
#include <vector>

#include "kernels/reference.h"

namespace dsv3::ref {
namespace {

void check_index(const char* op, const int32_t* idx, int64_t n, int64_t rows) {
  for (int64_t i = 0; i < n; ++i)
    DSV3_CHECK(idx[i] >= 0 && idx[i] < rows, "ref::{}: index {} at {} is outside [0, {})", op,
               idx[i], i, rows);
}

}  // namespace

namespace t {

template <typename T>
void moe_combine(const T* y_perm, const int32_t* row_of, const T* weights, int64_t n, int64_t k,
                 int64_t d, T* out, const T* residual) {
  check_index("moe_combine", row_of, n * k, n * k);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < d; ++i) {
      double sum = double(out[t * d + i]);
      for (int64_t j = 0; j < k; ++j)
        sum += double(weights[t * k + j]) * double(y_perm[int64_t(row_of[t * k + j]) * d + i]);
      if (residual) sum += double(residual[t * d + i]);
      out[t * d + i] = T(sum);
    }
}

template void moe_combine<float>(const float*, const int32_t*, const float*, int64_t, int64_t,
                                 int64_t, float*, const float*);
template void moe_combine<double>(const double*, const int32_t*, const double*, int64_t, int64_t,
                                  int64_t, double*, const double*);

}  // namespace t

void moe_gather_rows(const Tensor& x, const int32_t* src_row, Tensor& out) {
  with_real(x, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t d = out.dim(-1), m = d ? out.numel() / d : 0, n = d ? x.numel() / d : 0;
    check_index("moe_gather_rows", src_row, m, n);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t i = 0; i < d; ++i)
        out.real<T>()[r * d + i] = x.real<T>()[int64_t(src_row[r]) * d + i];
  });
}

void moe_combine(const Tensor& y_perm, const int32_t* row_of, const Tensor& weights, Tensor& out,
                 const Tensor* residual) {
  with_real(y_perm, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t d = out.dim(-1), n = d ? out.numel() / d : 0, k = n ? weights.numel() / n : 0;
    DSV3_CHECK(!residual || residual->numel() == out.numel(),
               "ref::moe_combine: residual {} is not out's shape {}",
               residual ? residual->shape().str() : "", out.shape().str());
    t::moe_combine(y_perm.real<T>(), row_of, weights.real<T>(), n, k, d, out.real<T>(),
                   residual ? residual->real<T>() : nullptr);
  });
}

void moe_combine_backward(const Tensor& d_out, const Tensor& y_perm, const int32_t* row_of,
                          const Tensor& weights, Tensor& d_y_perm, Tensor& d_weights) {
  with_real(d_out, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t d = d_out.dim(-1), n = d ? d_out.numel() / d : 0, k = n ? weights.numel() / n : 0;
    check_index("moe_combine_backward", row_of, n * k, n * k);
    const T* g = d_out.real<T>();
    const T* y = y_perm.real<T>();
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t r = row_of[t * k + j];
        const double w = weights.real<T>()[t * k + j];
        double dot = 0.0;
        for (int64_t i = 0; i < d; ++i) {
          d_y_perm.real<T>()[r * d + i] = T(w * g[t * d + i]);
          dot += double(g[t * d + i]) * y[r * d + i];
        }
        d_weights.real<T>()[t * k + j] = T(dot);
      }
  });
}

void moe_scatter_add(const Tensor& d_x_perm, const int32_t* row_of, int64_t k, Tensor& d_x) {
  with_real(d_x, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t d = d_x.dim(-1), n = d ? d_x.numel() / d : 0;
    check_index("moe_scatter_add", row_of, n * k, n * k);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < d; ++i) {
        double sum = d_x.real<T>()[t * d + i];
        for (int64_t j = 0; j < k; ++j)
          sum += d_x_perm.real<T>()[int64_t(row_of[t * k + j]) * d + i];
        d_x.real<T>()[t * d + i] = T(sum);
      }
  });
}

}  // namespace dsv3::ref
