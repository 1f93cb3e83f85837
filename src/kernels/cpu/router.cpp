// The MoE router's arithmetic (ops::route_forward, route_backward, moe_permute): scores,
// group-limited top-k, gating weights, the sequence-wise balance statistics and their gradient,
// and the counting sort into expert order. The loops are the ones the router and the MoE layer
// ran inline before they became ops, so the CPU results are unchanged bit for bit; they are
// templated on the element type, float or double (the float64 step), and are the plain version
// the CUDA kernels (kernels/cuda/router.cu) are tested against.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"

namespace dsv3::ops {
namespace {

bool is_f64(const Tensor& t) { return t.dtype() == DType::F64; }

template <typename T>
void route_forward_cpu(const RouteSpec& spec, const Tensor& logits_t, const Tensor* bias_t,
                       Tensor& scores_t, Tensor& indices_t, Tensor& weights_t, Tensor& score_sum_t,
                       Tensor& seq_counts_t, Tensor& seq_prob_t) {
  const int64_t experts = spec.select.experts, k = spec.select.k;
  const int64_t n = logits_t.numel() / std::max<int64_t>(experts, 1);
  const int64_t batch = spec.seq ? n / spec.seq : 0;
  const T* logits = logits_t.real<T>();
  T* scores = scores_t.real<T>();
  const float* bias = bias_t ? bias_t->f32() : nullptr;
  int32_t* indices = indices_t.i32();
  T* weights = weights_t.real<T>();
  T* score_sum = score_sum_t.real<T>();
#pragma omp parallel
  {
    std::vector<T> selection(static_cast<size_t>(experts)), groups(size_t(spec.select.groups));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      const T* l = logits + t * experts;
      T* s = scores + t * experts;
      if (spec.sigmoid) {
        for (int64_t e = 0; e < experts; ++e) s[e] = T(1) / (T(1) + std::exp(-l[e]));
      } else {
        T mx = *std::max_element(l, l + experts), sum = T(0);
        for (int64_t e = 0; e < experts; ++e) sum += (s[e] = std::exp(l[e] - mx));
        for (int64_t e = 0; e < experts; ++e) s[e] /= sum;
      }
      T total = T(0);
      for (int64_t e = 0; e < experts; ++e) {
        selection[size_t(e)] = s[e] + (bias ? T(bias[e]) : T(0));
        total += s[e];
      }
      score_sum[t] = total;
      int32_t* chosen = indices + t * k;
      select_experts(spec.select, selection.data(), groups.data(), chosen);
      // Gating weights come from the unbiased scores.
      T* wt = weights + t * k;
      T sum = T(0);
      for (int64_t j = 0; j < k; ++j) sum += (wt[j] = s[chosen[j]]);
      T scale = T(spec.scaling);
      if (spec.norm_topk) scale /= (sum + T(1e-20));
      for (int64_t j = 0; j < k; ++j) wt[j] *= scale;
    }
  }
  // Per sequence: the tokens routed to each expert, and the sum of normalised scores.
  float* seq_counts = seq_counts_t.f32();
  double* seq_prob = seq_prob_t.f64();
  std::fill(seq_counts, seq_counts + batch * experts, 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t b = t / spec.seq;
    for (int64_t j = 0; j < k; ++j) seq_counts[b * experts + indices[t * k + j]] += 1.0f;
  }
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t e = 0; e < experts; ++e) {
      double p = 0.0;
      for (int64_t t = b * spec.seq; t < (b + 1) * spec.seq; ++t)
        p += double(scores[t * experts + e]) / score_sum[t];
      seq_prob[b * experts + e] = p;
    }
}

template <typename T>
void route_backward_cpu(const RouteSpec& spec, double alpha, const Tensor& scores_t,
                        const Tensor& indices_t, const Tensor& score_sum_t,
                        const Tensor& seq_counts_t, const Tensor& d_weights_t,
                        Tensor& d_logits_t) {
  const int64_t experts = spec.select.experts, k = spec.select.k;
  const int64_t n = scores_t.numel() / std::max<int64_t>(experts, 1);
  const int64_t batch = spec.seq ? n / spec.seq : 0;
  const T* scores = scores_t.real<T>();
  const int32_t* indices = indices_t.i32();
  const T* dw = d_weights_t.real<T>();
  const T* score_sum = score_sum_t.real<T>();
  const float* seq_counts = seq_counts_t.f32();
  T* dl = d_logits_t.real<T>();
  // d(balance)/d(normalized score of expert e at a token of sequence b) = f_{b,e} / (B * T).
  const T f_scale = T(experts) / T(k * spec.seq);
  const T balance_grad = T(alpha) / T(batch * spec.seq);
  const T routed_scale = T(spec.scaling);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* s = scores + t * experts;
    T* d = dl + t * experts;
    for (int64_t e = 0; e < experts; ++e) d[e] = T(0);
    // Through the gating weights w_j = scale * s_j (/ Z, Z = sum of chosen s + 1e-20).
    const int32_t* chosen = indices + t * k;
    const T* g = dw + t * k;
    if (spec.norm_topk) {
      T z = T(1e-20), dot = T(0);
      for (int64_t j = 0; j < k; ++j) {
        z += s[chosen[j]];
        dot += g[j] * s[chosen[j]];
      }
      for (int64_t j = 0; j < k; ++j) d[chosen[j]] += routed_scale * (g[j] / z - dot / (z * z));
    } else {
      for (int64_t j = 0; j < k; ++j) d[chosen[j]] += routed_scale * g[j];
    }
    // Through the balance term's normalized scores s_e / sum(s).
    if (alpha != 0.0) {
      const float* counts = seq_counts + (t / spec.seq) * experts;
      const T total = score_sum[t];
      T dot = T(0);
      for (int64_t e = 0; e < experts; ++e) dot += balance_grad * f_scale * T(counts[e]) * s[e];
      dot /= total;
      for (int64_t e = 0; e < experts; ++e)
        d[e] += (balance_grad * f_scale * T(counts[e]) - dot) / total;
    }
    // Through the scoring function.
    if (spec.sigmoid) {
      for (int64_t e = 0; e < experts; ++e) d[e] *= s[e] * (T(1) - s[e]);
    } else {
      T dot = T(0);
      for (int64_t e = 0; e < experts; ++e) dot += d[e] * s[e];
      for (int64_t e = 0; e < experts; ++e) d[e] = s[e] * (d[e] - dot);
    }
  }
}

}  // namespace

void route_forward(const RouteSpec& spec, const Tensor& logits, const Tensor* bias,
                   Tensor& scores, Tensor& indices, Tensor& weights, Tensor& score_sum,
                   Tensor& seq_counts, Tensor& seq_prob) {
  const int64_t n = spec.select.experts ? logits.numel() / spec.select.experts : 0;
  DSV3_CHECK(spec.select.experts > 0 && spec.select.k > 0 && spec.seq > 0 && n % spec.seq == 0 &&
                 logits.numel() == n * spec.select.experts &&
                 scores.numel() == logits.numel() && indices.numel() == n * spec.select.k &&
                 weights.numel() == n * spec.select.k && score_sum.numel() == n &&
                 seq_counts.numel() == n / spec.seq * spec.select.experts &&
                 seq_prob.numel() == seq_counts.numel() &&
                 (!bias || bias->numel() == spec.select.experts),
             "route_forward: logits {} do not match {} experts, k = {}, sequences of {}",
             logits.shape().str(), spec.select.experts, spec.select.k, spec.seq);
  DSV3_CHECK(indices.dtype() == DType::I32 && seq_counts.dtype() == DType::F32 &&
                 seq_prob.dtype() == DType::F64 && (!bias || bias->dtype() == DType::F32),
             "route_forward: indices int32, seq_counts float32, seq_prob float64, bias float32");
  if (logits.device() == Device::CUDA)
    return cuda_ops::route_forward(spec, logits, bias, scores, indices, weights, score_sum,
                                   seq_counts, seq_prob);
  if (is_f64(logits))
    return route_forward_cpu<double>(spec, logits, bias, scores, indices, weights, score_sum,
                                     seq_counts, seq_prob);
  route_forward_cpu<float>(spec, logits, bias, scores, indices, weights, score_sum, seq_counts,
                           seq_prob);
}

void route_backward(const RouteSpec& spec, double alpha, const Tensor& scores,
                    const Tensor& indices, const Tensor& score_sum, const Tensor& seq_counts,
                    const Tensor& d_weights, Tensor& d_logits) {
  const int64_t n = spec.select.experts ? scores.numel() / spec.select.experts : 0;
  DSV3_CHECK(spec.select.experts > 0 && spec.seq > 0 && n % spec.seq == 0 &&
                 d_logits.numel() == scores.numel() && indices.numel() == n * spec.select.k &&
                 d_weights.numel() == indices.numel() && score_sum.numel() == n &&
                 seq_counts.numel() == n / spec.seq * spec.select.experts,
             "route_backward: scores {} do not match {} experts, k = {}, sequences of {}",
             scores.shape().str(), spec.select.experts, spec.select.k, spec.seq);
  if (scores.device() == Device::CUDA)
    return cuda_ops::route_backward(spec, alpha, scores, indices, score_sum, seq_counts,
                                    d_weights, d_logits);
  if (is_f64(scores))
    return route_backward_cpu<double>(spec, alpha, scores, indices, score_sum, seq_counts,
                                      d_weights, d_logits);
  route_backward_cpu<float>(spec, alpha, scores, indices, score_sum, seq_counts, d_weights,
                            d_logits);
}

void moe_permute(const Tensor& indices, const Tensor& offsets, Tensor& permuted_token,
                 Tensor& permuted_row) {
  const int64_t assignments = indices.numel(), experts = offsets.numel() - 1;
  DSV3_CHECK(experts >= 1 && offsets.dtype() == DType::I64 && indices.dtype() == DType::I32 &&
                 permuted_token.numel() >= assignments && permuted_row.numel() >= assignments,
             "moe_permute: {} assignments, offsets {}, outputs {} and {}", assignments,
             offsets.shape().str(), permuted_token.shape().str(), permuted_row.shape().str());
  if (indices.device() == Device::CUDA)
    return cuda_ops::moe_permute(indices, offsets, permuted_token, permuted_row);
  const int32_t* idx = indices.i32();
  const int64_t* off = offsets.i64();
  DSV3_CHECK(off[0] == 0 && off[experts] == assignments,
             "moe_permute: offsets run from {} to {}, not 0 to the {} assignments", off[0],
             off[experts], assignments);
  // k = assignments per token: the caller's indices are [N, K].
  const int64_t k = indices.dim(-1);
  std::vector<int64_t> cursor(off, off + experts);
  int32_t* tok = permuted_token.i32();
  int32_t* row_of = permuted_row.i32();
  for (int64_t a = 0; a < assignments; ++a) {
    DSV3_CHECK(idx[a] >= 0 && idx[a] < experts, "moe_permute: expert {} of assignment {}",
               idx[a], a);
    const int64_t r = cursor[size_t(idx[a])]++;
    tok[r] = int32_t(a / k);
    row_of[a] = int32_t(r);
  }
}

}  // namespace dsv3::ops
