// Reference embedding lookup and scatter-add gradient (id -1: zero row, no gradient), and the
// elementwise add.
#include <map>
#include <vector>

#include "kernels/reference.h"

namespace dsv3::ref {
namespace t {

template <typename T>
void embedding_forward(const T* table, int64_t vocab, int64_t dim, const int32_t* ids, int64_t rows,
                       T* out) {
  for (int64_t r = 0; r < rows; ++r) {
    DSV3_CHECK(ids[r] >= -1 && ids[r] < vocab,
               "ref::embedding: token id {} at position {} is outside the vocabulary of {}", ids[r],
               r, vocab);
    for (int64_t i = 0; i < dim; ++i)
      out[r * dim + i] = ids[r] < 0 ? T(0) : table[int64_t(ids[r]) * dim + i];
  }
}

template <typename T>
void embedding_backward(const int32_t* ids, int64_t rows, int64_t vocab, int64_t dim,
                        const T* d_out, T* d_table) {
  // Each table row receives the float64 sum of the gradient rows carrying its id.
  std::map<int32_t, std::vector<double>> sums;
  for (int64_t r = 0; r < rows; ++r) {
    if (ids[r] < 0) continue;
    auto [it, fresh] = sums.try_emplace(ids[r], static_cast<size_t>(dim), 0.0);
    if (fresh)
      for (int64_t i = 0; i < dim; ++i) it->second[size_t(i)] = d_table[int64_t(ids[r]) * dim + i];
    for (int64_t i = 0; i < dim; ++i) it->second[size_t(i)] += d_out[r * dim + i];
  }
  for (const auto& [id, sum] : sums)
    for (int64_t i = 0; i < dim; ++i) d_table[int64_t(id) * dim + i] = T(sum[size_t(i)]);
}

template void embedding_forward<float>(const float*, int64_t, int64_t, const int32_t*, int64_t,
                                       float*);
template void embedding_forward<double>(const double*, int64_t, int64_t, const int32_t*, int64_t,
                                        double*);
template void embedding_backward<float>(const int32_t*, int64_t, int64_t, int64_t, const float*,
                                        float*);
template void embedding_backward<double>(const int32_t*, int64_t, int64_t, int64_t, const double*,
                                         double*);

}  // namespace t

void embedding_forward(const Tensor& table, const int32_t* ids, int64_t rows, Tensor& out) {
  with_real(table, [&](auto real_zero) {
    using T = decltype(real_zero);
    t::embedding_forward(table.real<T>(), table.dim(0), table.dim(1), ids, rows, out.real<T>());
  });
}

void embedding_backward(const int32_t* ids, int64_t rows, const Tensor& d_out, Tensor& d_table) {
  with_real(d_out, [&](auto real_zero) {
    using T = decltype(real_zero);
    t::embedding_backward(ids, rows, d_table.dim(0), d_table.dim(1), d_out.real<T>(),
                          d_table.real<T>());
  });
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  with_real(out, [&](auto real_zero) {
    using T = decltype(real_zero);
    DSV3_CHECK(a.numel() == out.numel() && b.numel() == out.numel(), "ref::add: {} + {} into {}",
               a.shape().str(), b.shape().str(), out.shape().str());
    for (int64_t i = 0; i < out.numel(); ++i)
      out.real<T>()[i] = T(double(a.real<T>()[i]) + b.real<T>()[i]);
  });
}

}  // namespace dsv3::ref
