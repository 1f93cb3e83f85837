// Reference GEMM and linear layer: the textbook triple loop, summed in float64.
#include <vector>

#include "kernels/reference.h"

namespace dsv3::ref {
namespace t {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, double beta, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        double av = trans_a ? a[p * lda + i] : a[i * lda + p];
        double bv = trans_b ? b[j * ldb + p] : b[p * ldb + j];
        sum += av * bv;
      }
      T& out = c[i * ldc + j];
      out = T(alpha * sum + (beta == 0.0 ? 0.0 : beta * double(out)));
    }
}

template <typename T>
void linear_forward(const T* x, const T* w, int64_t rows, int64_t in, int64_t out, T* y) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double sum = 0.0;
      for (int64_t i = 0; i < in; ++i) sum += double(x[r * in + i]) * double(w[o * in + i]);
      y[r * out + o] = T(sum);
    }
}

template <typename T>
void linear_backward(const T* x, const T* w, const T* d_y, int64_t rows, int64_t in, int64_t out,
                     T* d_x, T* d_w, bool accumulate_d_x, bool accumulate_d_w) {
  if (d_x)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < in; ++i) {
        double sum = accumulate_d_x ? double(d_x[r * in + i]) : 0.0;
        for (int64_t o = 0; o < out; ++o) sum += double(d_y[r * out + o]) * double(w[o * in + i]);
        d_x[r * in + i] = T(sum);
      }
  if (d_w)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        double sum = accumulate_d_w ? double(d_w[o * in + i]) : 0.0;
        for (int64_t r = 0; r < rows; ++r) sum += double(d_y[r * out + o]) * double(x[r * in + i]);
        d_w[o * in + i] = T(sum);
      }
}

#define DSV3_INSTANTIATE(T)                                                                     \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, double, const T*, int64_t,       \
                        const T*, int64_t, double, T*, int64_t);                                \
  template void linear_forward<T>(const T*, const T*, int64_t, int64_t, int64_t, T*);           \
  template void linear_backward<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, T*, \
                                   T*, bool, bool);
DSV3_INSTANTIATE(float)
DSV3_INSTANTIATE(double)
#undef DSV3_INSTANTIATE

}  // namespace t

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  t::gemm<float>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void linear_forward(const Tensor& x, const Tensor& w, Tensor& y) {
  with_real(x, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t in = w.dim(1), out = w.dim(0), rows = in ? x.numel() / in : 0;
    DSV3_CHECK(x.numel() == rows * in && y.numel() == rows * out,
               "ref::linear_forward: x {} W {} y {} do not agree", x.shape().str(), w.shape().str(),
               y.shape().str());
    t::linear_forward(x.real<T>(), w.real<T>(), rows, in, out, y.real<T>());
  });
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& d_y, Tensor* d_x, Tensor* d_w,
                     bool accumulate_d_x, bool accumulate_d_w) {
  with_real(x, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t in = w.dim(1), out = w.dim(0), rows = in ? x.numel() / in : 0;
    t::linear_backward(x.real<T>(), w.real<T>(), d_y.real<T>(), rows, in, out,
                       d_x ? d_x->real<T>() : nullptr, d_w ? d_w->real<T>() : nullptr,
                       accumulate_d_x, accumulate_d_w);
  });
}

// The grouped forms: the definition itself, a loop over the groups' row ranges.
void grouped_linear_forward(const Tensor& x, const std::vector<const Tensor*>& w,
                            const int64_t* offsets, Tensor& y) {
  for (size_t g = 0; g < w.size(); ++g) {
    if (offsets[g + 1] == offsets[g]) continue;
    Tensor yg = y.slice_rows(offsets[g], offsets[g + 1]);
    linear_forward(x.slice_rows(offsets[g], offsets[g + 1]), *w[g], yg);
  }
}

void grouped_linear_backward(const Tensor& x, const std::vector<const Tensor*>& w,
                             const Tensor& d_y, const int64_t* offsets, Tensor* d_x,
                             const std::vector<Tensor*>& d_w, bool accumulate_d_w) {
  for (size_t g = 0; g < w.size(); ++g) {
    const int64_t b = offsets[g], e = offsets[g + 1];
    if (b == e) {
      if (!accumulate_d_w) d_w[g]->zero_();  // a sum over no rows
      continue;
    }
    Tensor dxg = d_x ? d_x->slice_rows(b, e) : Tensor();
    linear_backward(x.slice_rows(b, e), *w[g], d_y.slice_rows(b, e), d_x ? &dxg : nullptr, d_w[g],
                    false, accumulate_d_w);
  }
}

}  // namespace dsv3::ref
