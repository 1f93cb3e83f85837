// Reference causal softmax attention, one (sequence, head) at a time, in float64.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/attention_dims.h"
#include "kernels/reference.h"

namespace dsv3::ref {
namespace t {

// Row i of causal attention: row[j] = exp(scale q_i.k_j - max) for keys j <= i, in float64.
struct ExpRow {
  double max, sum;  // the largest scaled score, and the sum of row[0..i]
};
template <typename T>
ExpRow causal_exp_row(const T* qh, const T* kh, int64_t i, int64_t dq, double scale,
                      std::vector<double>& row) {
  double mx = -INFINITY;
  for (int64_t j = 0; j <= i; ++j) {
    double s = 0.0;
    for (int64_t d = 0; d < dq; ++d) s += double(qh[i * dq + d]) * double(kh[j * dq + d]);
    row[size_t(j)] = s * scale;
    mx = std::max(mx, row[size_t(j)]);
  }
  double sum = 0.0;
  for (int64_t j = 0; j <= i; ++j) sum += (row[size_t(j)] = std::exp(row[size_t(j)] - mx));
  return {mx, sum};
}

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, int64_t bh, int64_t seq, int64_t dq,
                       int64_t dv, double scale, T* probs, T* o) {
  std::vector<double> row(static_cast<size_t>(seq));
  for (int64_t h = 0; h < bh; ++h) {
    const T* qh = q + h * seq * dq;
    const T* kh = k + h * seq * dq;
    const T* vh = v + h * seq * dv;
    for (int64_t i = 0; i < seq; ++i) {
      // Scores against keys 0..i (causal), then a max-shifted softmax.
      const double sum = causal_exp_row(qh, kh, i, dq, scale, row).sum;
      for (int64_t j = 0; j <= i; ++j) row[size_t(j)] /= sum;
      T* p = probs + (h * seq + i) * seq;
      for (int64_t j = 0; j < seq; ++j) p[j] = j <= i ? T(row[size_t(j)]) : T(0);
      for (int64_t d = 0; d < dv; ++d) {
        double acc = 0.0;
        for (int64_t j = 0; j <= i; ++j) acc += row[size_t(j)] * double(vh[j * dv + d]);
        o[(h * seq + i) * dv + d] = T(acc);
      }
    }
  }
}

// dV = P^T dO; dP = dO V^T; dS = P (dP - rowsum(P dP)) * scale; dQ = dS K; dK = dS^T Q.
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* probs, const T* d_o,
                        int64_t bh, int64_t seq, int64_t dq, int64_t dv, double scale, T* d_q,
                        T* d_k, T* d_v) {
  const size_t ss = size_t(seq * seq);
  std::vector<double> ds(ss), dqa(size_t(seq * dq)), dka(size_t(seq * dq)), dva(size_t(seq * dv));
  for (int64_t h = 0; h < bh; ++h) {
    const T* qh = q + h * seq * dq;
    const T* kh = k + h * seq * dq;
    const T* vh = v + h * seq * dv;
    const T* p = probs + h * seq * seq;
    const T* g = d_o + h * seq * dv;
    std::fill(ds.begin(), ds.end(), 0.0);
    std::fill(dqa.begin(), dqa.end(), 0.0);
    std::fill(dka.begin(), dka.end(), 0.0);
    std::fill(dva.begin(), dva.end(), 0.0);
    for (int64_t i = 0; i < seq; ++i) {
      double dot = 0.0;
      for (int64_t j = 0; j <= i; ++j) {
        double dp = 0.0;
        for (int64_t d = 0; d < dv; ++d) dp += double(g[i * dv + d]) * double(vh[j * dv + d]);
        ds[size_t(i * seq + j)] = dp;
        dot += double(p[i * seq + j]) * dp;
        for (int64_t d = 0; d < dv; ++d)
          dva[size_t(j * dv + d)] += double(p[i * seq + j]) * double(g[i * dv + d]);
      }
      for (int64_t j = 0; j <= i; ++j) {
        const double s = double(p[i * seq + j]) * (ds[size_t(i * seq + j)] - dot) * scale;
        for (int64_t d = 0; d < dq; ++d) {
          dqa[size_t(i * dq + d)] += s * double(kh[j * dq + d]);
          dka[size_t(j * dq + d)] += s * double(qh[i * dq + d]);
        }
      }
    }
    for (int64_t i = 0; i < seq * dq; ++i) {
      d_q[h * seq * dq + i] = T(dqa[size_t(i)]);
      d_k[h * seq * dq + i] = T(dka[size_t(i)]);
    }
    for (int64_t i = 0; i < seq * dv; ++i) d_v[h * seq * dv + i] = T(dva[size_t(i)]);
  }
}

// Row by row: scores against keys 0..i, lse_i = max + log(sum exp(s - max)), o_i = sum p_j v_j.
template <typename T>
void attention_forward_lse(const T* q, const T* k, const T* v, int64_t bh, int64_t seq, int64_t dq,
                           int64_t dv, double scale, T* lse, T* o) {
  std::vector<double> row(static_cast<size_t>(seq));
  for (int64_t h = 0; h < bh; ++h) {
    const T* qh = q + h * seq * dq;
    const T* kh = k + h * seq * dq;
    const T* vh = v + h * seq * dv;
    for (int64_t i = 0; i < seq; ++i) {
      const ExpRow r = causal_exp_row(qh, kh, i, dq, scale, row);
      const double sum = r.sum;
      lse[h * seq + i] = T(r.max + std::log(sum));
      for (int64_t d = 0; d < dv; ++d) {
        double acc = 0.0;
        for (int64_t j = 0; j <= i; ++j) acc += row[size_t(j)] * double(vh[j * dv + d]);
        o[(h * seq + i) * dv + d] = T(acc / sum);
      }
    }
  }
}

// P_ij = exp(scale q_i.k_j - lse_i); D_i = dO_i . O_i (= sum_j P_ij dP_ij); dS = P (dP - D);
// dV = P^T dO; dQ = scale dS K; dK = scale dS^T Q. Row 0 has one key, so its softmax is the
// constant 1: P = 1 and dS = 0 exactly (from the rounded lse, P would be 1 +- an ulp and dS a
// rounding residue where the gradient is exactly zero).
template <typename T>
void attention_backward_lse(const T* q, const T* k, const T* v, const T* o, const T* lse,
                            const T* d_o, int64_t bh, int64_t seq, int64_t dq, int64_t dv,
                            double scale, T* d_q, T* d_k, T* d_v) {
  std::vector<double> dqa(size_t(seq * dq)), dka(size_t(seq * dq)), dva(size_t(seq * dv));
  for (int64_t h = 0; h < bh; ++h) {
    const T* qh = q + h * seq * dq;
    const T* kh = k + h * seq * dq;
    const T* vh = v + h * seq * dv;
    const T* oh = o + h * seq * dv;
    const T* g = d_o + h * seq * dv;
    std::fill(dqa.begin(), dqa.end(), 0.0);
    std::fill(dka.begin(), dka.end(), 0.0);
    std::fill(dva.begin(), dva.end(), 0.0);
    for (int64_t i = 0; i < seq; ++i) {
      double di = 0.0;
      for (int64_t d = 0; d < dv; ++d) di += double(g[i * dv + d]) * double(oh[i * dv + d]);
      for (int64_t j = 0; j <= i; ++j) {
        double s = 0.0, dp = 0.0;
        for (int64_t d = 0; d < dq; ++d) s += double(qh[i * dq + d]) * double(kh[j * dq + d]);
        for (int64_t d = 0; d < dv; ++d) dp += double(g[i * dv + d]) * double(vh[j * dv + d]);
        const double p = i == 0 ? 1.0 : std::exp(s * scale - double(lse[h * seq + i]));
        const double ds = i == 0 ? 0.0 : p * (dp - di) * scale;
        for (int64_t d = 0; d < dv; ++d) dva[size_t(j * dv + d)] += p * double(g[i * dv + d]);
        for (int64_t d = 0; d < dq; ++d) {
          dqa[size_t(i * dq + d)] += ds * double(kh[j * dq + d]);
          dka[size_t(j * dq + d)] += ds * double(qh[i * dq + d]);
        }
      }
    }
    for (int64_t i = 0; i < seq * dq; ++i) {
      d_q[h * seq * dq + i] = T(dqa[size_t(i)]);
      d_k[h * seq * dq + i] = T(dka[size_t(i)]);
    }
    for (int64_t i = 0; i < seq * dv; ++i) d_v[h * seq * dv + i] = T(dva[size_t(i)]);
  }
}

#define DSV3_INSTANTIATE(T)                                                                       \
  template void attention_forward<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t,     \
                                     int64_t, double, T*, T*);                                    \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, const T*, int64_t,  \
                                      int64_t, int64_t, int64_t, double, T*, T*, T*);             \
  template void attention_forward_lse<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                         int64_t, double, T*, T*);                                \
  template void attention_backward_lse<T>(const T*, const T*, const T*, const T*, const T*,       \
                                          const T*, int64_t, int64_t, int64_t, int64_t, double,   \
                                          T*, T*, T*);
DSV3_INSTANTIATE(float)
DSV3_INSTANTIATE(double)
#undef DSV3_INSTANTIATE

}  // namespace t

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                       Tensor& probs, Tensor& o) {
  with_real(q, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t batch = q.dim(0), heads = q.dim(1), seq = q.dim(2), dq = q.dim(3), dv = v.dim(3);
    DSV3_CHECK(k.shape() == q.shape() && v.dim(2) == seq && o.shape() == v.shape() &&
                   probs.numel() == batch * heads * seq * seq,
               "ref::attention_forward: shapes q {} k {} v {} o {} do not agree", q.shape().str(),
               k.shape().str(), v.shape().str(), o.shape().str());
    t::attention_forward(q.real<T>(), k.real<T>(), v.real<T>(), batch * heads, seq, dq, dv, scale,
                         probs.real<T>(), o.real<T>());
  });
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
                        const Tensor& d_o, double scale, Tensor& scratch, Tensor& d_q, Tensor& d_k,
                        Tensor& d_v) {
  with_real(q, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t batch = q.dim(0), heads = q.dim(1), seq = q.dim(2), dq = q.dim(3), dv = v.dim(3);
    t::attention_backward(q.real<T>(), k.real<T>(), v.real<T>(), probs.real<T>(), d_o.real<T>(),
                          batch * heads, seq, dq, dv, scale, d_q.real<T>(), d_k.real<T>(),
                          d_v.real<T>());
  });
}

void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                           Tensor& lse, Tensor& o) {
  with_real(q, [&](auto real_zero) {
    using T = decltype(real_zero);
    const ops::LseAttentionDims d =
        ops::lse_attention_dims(q, k, v, o, lse, "ref::attention_forward_lse");
    t::attention_forward_lse(q.real<T>(), k.real<T>(), v.real<T>(), d.bh, d.seq, d.dq, d.dv, scale,
                             lse.real<T>(), o.real<T>());
  });
}

void attention_backward_lse(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                            const Tensor& lse, const Tensor& d_o, double scale, Tensor& d_q,
                            Tensor& d_k, Tensor& d_v) {
  with_real(q, [&](auto real_zero) {
    using T = decltype(real_zero);
    const ops::LseAttentionDims d =
        ops::lse_attention_dims(q, k, v, o, lse, "ref::attention_backward_lse");
    DSV3_CHECK(d_o.shape() == o.shape() && d_q.shape() == q.shape() && d_k.shape() == k.shape() &&
                   d_v.shape() == v.shape(),
               "ref::attention_backward_lse: d_o or a gradient does not match its operand");
    t::attention_backward_lse(q.real<T>(), k.real<T>(), v.real<T>(), o.real<T>(), lse.real<T>(),
                              d_o.real<T>(), d.bh, d.seq, d.dq, d.dv, scale, d_q.real<T>(),
                              d_k.real<T>(), d_v.real<T>());
  });
}

}  // namespace dsv3::ref
