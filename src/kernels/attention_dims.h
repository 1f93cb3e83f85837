#pragma once
// The shapes of the lse form of causal attention (ops::attention_forward_lse / _backward_lse),
// checked once for every implementation that reads raw pointers (the CPU's and the reference).
#include <cstdint>

#include "core/tensor.h"

namespace dsv3::ops {

struct LseAttentionDims {
  int64_t bh, seq, dq, dv;  // batch x heads, sequence, q/k head dim, v head dim
};

// q, k: [B, H, T, dq]; v, o: [B, H, T, dv]; lse: B*H*T values. `op` names the caller in errors.
inline LseAttentionDims lse_attention_dims(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& o, const Tensor& lse, const char* op) {
  DSV3_CHECK(q.ndim() == 4 && k.shape() == q.shape() && v.ndim() == 4 && v.dim(0) == q.dim(0) &&
                 v.dim(1) == q.dim(1) && v.dim(2) == q.dim(2) && o.shape() == v.shape() &&
                 lse.numel() == q.dim(0) * q.dim(1) * q.dim(2),
             "{}: shapes q {} k {} v {} o {} lse {} do not agree", op, q.shape().str(),
             k.shape().str(), v.shape().str(), o.shape().str(), lse.shape().str());
  return {q.dim(0) * q.dim(1), q.dim(2), q.dim(3), v.dim(3)};
}

}  // namespace dsv3::ops
