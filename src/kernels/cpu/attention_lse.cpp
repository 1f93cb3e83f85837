// Causal attention on the CPU in the lse form (kernels/ops.h): the forward saves the per-row
// log-sum-exp instead of the [seq, seq] probabilities, and the backward recomputes P from q, k
// and lse. Work goes by blocks of kRows query rows, so each step is a few GEMMs over
// [kRows, keys] tiles and the only temporaries are a thread's [kRows, seq] score and gradient
// tiles: O(seq) memory per thread, nothing quadratic per call.
//
// Parallel over (batch, head) pairs, one per task as in kernels/cpu/attention.cpp: a pair's key
// gradients accumulate over its query blocks, so one thread owning the pair needs no locks.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/device.h"
#include "kernels/attention_dims.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {
namespace {

// Query rows per block: large enough for the GEMMs to run near their peak, small enough that a
// thread's tiles ([kRows, seq] floats, two of them in the backward) stay in L2 at moderate seq.
constexpr int64_t kRows = 64;

}  // namespace

void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, double scale64,
                           Tensor& lse, Tensor& o) {
  if (q.dtype() == DType::F64) return ref::attention_forward_lse(q, k, v, scale64, lse, o);
  const float scale = float(scale64);
  if (q.device() == Device::CUDA) return cuda_ops::attention_forward_lse(q, k, v, scale, lse, o);
  const LseAttentionDims d = lse_attention_dims(q, k, v, o, lse, "attention_forward_lse");
  const int64_t seq = d.seq, dq = d.dq, dv = d.dv;
#pragma omp parallel
  {
    std::vector<float> tile(size_t(std::min(kRows, seq) * seq));  // P rows of one block
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < d.bh; ++bh) {
      const float* qp = q.f32() + bh * seq * dq;
      const float* kp = k.f32() + bh * seq * dq;
      const float* vp = v.f32() + bh * seq * dv;
      float* op = o.f32() + bh * seq * dv;
      float* lp = lse.f32() + bh * seq;
      for (int64_t i0 = 0; i0 < seq; i0 += kRows) {
        // Rows i0 .. i0 + rows - 1 see keys 0 .. i0 + rows - 1 (causal); S [rows, keys].
        const int64_t rows = std::min(kRows, seq - i0), keys = i0 + rows;
        float* s = tile.data();
        gemm(false, true, rows, keys, dq, scale, qp + i0 * dq, dq, kp, dq, 0.0f, s, keys);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r;
          float* row = s + r * keys;
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, row[j]);
          float sum = 0.0f;
          for (int64_t j = 0; j <= i; ++j) {
            row[j] = fast::exp(row[j] - mx);
            sum += row[j];
          }
          const float inv = 1.0f / sum;
          for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
          for (int64_t j = i + 1; j < keys; ++j) row[j] = 0.0f;
          lp[i] = mx + std::log(sum);
        }
        // O [rows, dv] = P [rows, keys] V [keys, dv]
        gemm(false, false, rows, dv, keys, 1.0f, s, keys, vp, dv, 0.0f, op + i0 * dv, dv);
      }
    }
  }
}

void attention_backward_lse(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                            const Tensor& lse, const Tensor& d_o, double scale64, Tensor& d_q,
                            Tensor& d_k, Tensor& d_v) {
  if (q.dtype() == DType::F64)
    return ref::attention_backward_lse(q, k, v, o, lse, d_o, scale64, d_q, d_k, d_v);
  const float scale = float(scale64);
  if (q.device() == Device::CUDA)
    return cuda_ops::attention_backward_lse(q, k, v, o, lse, d_o, scale, d_q, d_k, d_v);
  const LseAttentionDims d = lse_attention_dims(q, k, v, o, lse, "attention_backward_lse");
  DSV3_CHECK(d_o.shape() == o.shape() && d_q.shape() == q.shape() && d_k.shape() == k.shape() &&
                 d_v.shape() == v.shape(),
             "attention_backward_lse: d_o {} or a gradient (d_q {}, d_k {}, d_v {}) does not "
             "match its operand",
             d_o.shape().str(), d_q.shape().str(), d_k.shape().str(), d_v.shape().str());
  const int64_t seq = d.seq, dq = d.dq, dv = d.dv;
#pragma omp parallel
  {
    const size_t tile_size = size_t(std::min(kRows, seq) * seq);
    std::vector<float> p_tile(tile_size), ds_tile(tile_size);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < d.bh; ++bh) {
      const float* qp = q.f32() + bh * seq * dq;
      const float* kp = k.f32() + bh * seq * dq;
      const float* vp = v.f32() + bh * seq * dv;
      const float* op = o.f32() + bh * seq * dv;
      const float* gp = d_o.f32() + bh * seq * dv;
      const float* lp = lse.f32() + bh * seq;
      float* dqp = d_q.f32() + bh * seq * dq;
      float* dkp = d_k.f32() + bh * seq * dq;
      float* dvp = d_v.f32() + bh * seq * dv;
      // dK and dV accumulate over the query blocks below.
      std::fill(dkp, dkp + seq * dq, 0.0f);
      std::fill(dvp, dvp + seq * dv, 0.0f);
      for (int64_t i0 = 0; i0 < seq; i0 += kRows) {
        const int64_t rows = std::min(kRows, seq - i0), keys = i0 + rows;
        float* p = p_tile.data();
        float* ds = ds_tile.data();
        // S = scale Q K^T and dP = dO V^T, both [rows, keys]
        gemm(false, true, rows, keys, dq, scale, qp + i0 * dq, dq, kp, dq, 0.0f, p, keys);
        gemm(false, true, rows, keys, dv, 1.0f, gp + i0 * dv, dv, vp, dv, 0.0f, ds, keys);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r;
          float* prow = p + r * keys;
          float* drow = ds + r * keys;
          // D_i = dO_i . O_i, which equals sum_j P_ij dP_ij without a second pass over the row.
          float di = 0.0f;
          for (int64_t c = 0; c < dv; ++c) di += gp[i * dv + c] * op[i * dv + c];
          if (i == 0) {
            // One key: the softmax is the constant 1, so P = 1 and dS = 0 exactly. From the
            // rounded lse, P = 1 +- an ulp and dP - D a rounding residue, which would leave a
            // gradient where the true one is exactly zero.
            prow[0] = 1.0f;
            drow[0] = 0.0f;
          } else {
            const float li = lp[i];
            for (int64_t j = 0; j <= i; ++j) {
              prow[j] = fast::exp(prow[j] - li);
              drow[j] = prow[j] * (drow[j] - di) * scale;
            }
          }
          for (int64_t j = i + 1; j < keys; ++j) prow[j] = drow[j] = 0.0f;
        }
        // dV[keys] += P^T dO ; dK[keys] += dS^T Q ; dQ[rows] = dS K (dS carries the scale)
        gemm(true, false, keys, dv, rows, 1.0f, p, keys, gp + i0 * dv, dv, 1.0f, dvp, dv);
        gemm(true, false, keys, dq, rows, 1.0f, ds, keys, qp + i0 * dq, dq, 1.0f, dkp, dq);
        gemm(false, false, rows, dq, keys, 1.0f, ds, keys, kp, dq, 0.0f, dqp + i0 * dq, dq);
      }
    }
  }
}

}  // namespace dsv3::ops
