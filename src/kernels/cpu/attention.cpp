// Causal softmax attention on the CPU: one (sequence, head) pair per task, each a few small
// GEMMs. The probabilities are kept for the backward pass (seq x seq per head: fine for the
// sequence lengths trained on a CPU; the CUDA backend uses a flash-style kernel instead).
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/device.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale64,
                       Tensor& probs, Tensor& o) {
  if (q.dtype() == DType::F64) return ref::attention_forward(q, k, v, scale64, probs, o);
  const float scale = float(scale64);
  if (q.device() == Device::CUDA) return cuda_ops::attention_forward(q, k, v, scale, probs, o);
  const int64_t batch = q.dim(0), heads = q.dim(1), seq = q.dim(2), dq = q.dim(3), dv = v.dim(3);
  DSV3_CHECK(k.shape() == q.shape() && v.dim(2) == seq && o.shape() == v.shape() &&
                 probs.numel() == batch * heads * seq * seq,
             "attention_forward: shapes q {} k {} v {} o {} do not agree", q.shape().str(),
             k.shape().str(), v.shape().str(), o.shape().str());
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    const float* qp = q.f32() + bh * seq * dq;
    const float* kp = k.f32() + bh * seq * dq;
    const float* vp = v.f32() + bh * seq * dv;
    float* p = probs.f32() + bh * seq * seq;
    float* op = o.f32() + bh * seq * dv;
    // S = scale * Q K^T  [seq, seq]
    gemm(false, true, seq, seq, dq, scale, qp, dq, kp, dq, 0.0f, p, seq);
    for (int64_t i = 0; i < seq; ++i) {
      float* row = p + i * seq;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, row[j]);
      float sum = 0.0f;
      for (int64_t j = 0; j <= i; ++j) {
        row[j] = fast::exp(row[j] - mx);
        sum += row[j];
      }
      float inv = 1.0f / sum;
      for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
      for (int64_t j = i + 1; j < seq; ++j) row[j] = 0.0f;
    }
    // O = P V  [seq, dv]
    gemm(false, false, seq, dv, seq, 1.0f, p, seq, vp, dv, 0.0f, op, dv);
  }
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
                        const Tensor& d_o, double scale64, Tensor& scratch, Tensor& d_q,
                        Tensor& d_k, Tensor& d_v) {
  if (q.dtype() == DType::F64)
    return ref::attention_backward(q, k, v, probs, d_o, scale64, scratch, d_q, d_k, d_v);
  const float scale = float(scale64);
  if (q.device() == Device::CUDA)
    return cuda_ops::attention_backward(q, k, v, probs, d_o, scale, scratch, d_q, d_k, d_v);
  const int64_t batch = q.dim(0), heads = q.dim(1), seq = q.dim(2), dq = q.dim(3), dv = v.dim(3);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    const float* qp = q.f32() + bh * seq * dq;
    const float* kp = k.f32() + bh * seq * dq;
    const float* vp = v.f32() + bh * seq * dv;
    const float* p = probs.f32() + bh * seq * seq;
    const float* dop = d_o.f32() + bh * seq * dv;
    float* dp = scratch.f32() + bh * seq * seq;
    // dV = P^T dO ; dP = dO V^T
    gemm(true, false, seq, dv, seq, 1.0f, p, seq, dop, dv, 0.0f, d_v.f32() + bh * seq * dv, dv);
    gemm(false, true, seq, seq, dv, 1.0f, dop, dv, vp, dv, 0.0f, dp, seq);
    // dS = P * (dP - rowsum(P * dP)), times the scale of S
    for (int64_t i = 0; i < seq; ++i) {
      const float* pr = p + i * seq;
      float* dr = dp + i * seq;
      float dot = 0.0f;
      for (int64_t j = 0; j <= i; ++j) dot += pr[j] * dr[j];
      for (int64_t j = 0; j <= i; ++j) dr[j] = pr[j] * (dr[j] - dot) * scale;
      for (int64_t j = i + 1; j < seq; ++j) dr[j] = 0.0f;
    }
    // dQ = dS K ; dK = dS^T Q
    gemm(false, false, seq, dq, seq, 1.0f, dp, seq, kp, dq, 0.0f, d_q.f32() + bh * seq * dq, dq);
    gemm(true, false, seq, dq, seq, 1.0f, dp, seq, qp, dq, 0.0f, d_k.f32() + bh * seq * dq, dq);
  }
}

}  // namespace dsv3::ops
