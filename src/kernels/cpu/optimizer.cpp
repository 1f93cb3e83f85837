// The optimizer's arithmetic over whole tensors: the squared norm of a gradient, scaling a
// gradient, and the AdamW update. The loops are the ones AdamW ran inline before they became
// ops, so the CPU results are unchanged bit for bit (resumed runs depend on that).
#include <cmath>

#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {

double sum_squares(const Tensor& g, double acc) {
  if (g.dtype() == DType::F64) return ref::sum_squares(g, acc);
  if (g.device() == Device::CUDA) return cuda_ops::sum_squares(g, acc);
  // Fixed chunks summed in order: the same value for any thread count (resume is bit-exact).
  constexpr int64_t kChunks = 64;
  const float* gp = g.f32();
  const int64_t n = g.numel();
  double partial[kChunks] = {};
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < kChunks; ++c) {
    double local = 0.0;
    for (int64_t i = n * c / kChunks; i < n * (c + 1) / kChunks; ++i)
      local += double(gp[i]) * gp[i];
    partial[c] = local;
  }
  for (double v : partial) acc += v;
  return acc;
}

double sum_squares_all(const std::vector<const Tensor*>& gs) {
  if (!gs.empty() && gs.front()->device() == Device::CUDA) return cuda_ops::sum_squares_all(gs);
  double acc = 0.0;
  for (const Tensor* g : gs) acc = sum_squares(*g, acc);
  return acc;
}

void scale_inplace(Tensor& x, float factor) {
  if (x.dtype() == DType::F64) return ref::scale_inplace(x, factor);
  if (x.device() == Device::CUDA) return cuda_ops::scale_inplace(x, factor);
  float* xp = x.f32();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) xp[i] *= factor;
}

void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const AdamWScalars& s) {
  if (p.dtype() == DType::F64) return ref::adamw_update(p, g, m, v, s);
  if (p.device() == Device::CUDA) return cuda_ops::adamw_update(p, g, m, v, s);
  const int64_t n = p.numel();
  DSV3_CHECK(g.numel() == n && m.numel() == n && v.numel() == n,
             "adamw_update: p {}, g {}, m {}, v {} differ in size", p.shape().str(),
             g.shape().str(), m.shape().str(), v.shape().str());
  float* pp = p.f32();
  const float* gp = g.f32();
  float* mp = m.f32();
  float* vp = v.f32();
  const float decay = s.decay, b1 = s.b1, b2 = s.b2, cs = s.clip_scale;
  const float step_size = s.step_size, inv_sqrt_bc2 = s.inv_sqrt_bc2, eps = s.eps;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = gp[i] * cs;
    mp[i] = b1 * mp[i] + (1.0f - b1) * gi;
    vp[i] = b2 * vp[i] + (1.0f - b2) * gi * gi;
    pp[i] = pp[i] * decay - step_size * mp[i] / (std::sqrt(vp[i]) * inv_sqrt_bc2 + eps);
  }
}

void adamw_update_all(const std::vector<AdamWTensors>& ts, const AdamWScalars& s) {
  if (!ts.empty() && ts.front().p->device() == Device::CUDA &&
      ts.front().p->dtype() == DType::F32)
    return cuda_ops::adamw_update_all(ts, s);
  for (const AdamWTensors& t : ts) {
    AdamWScalars k = s;
    k.decay = t.decay;
    adamw_update(*t.p, *t.g, *t.m, *t.v, k);
  }
}

}  // namespace dsv3::ops
