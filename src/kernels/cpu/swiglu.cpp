// SwiGLU h = silu(gate) * up, on the CPU.
#include <cmath>

#include "core/device.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {

void swiglu_forward(const Tensor& gate_up, Tensor& h) {
  if (gate_up.dtype() == DType::F64) return ref::swiglu_forward(gate_up, h);
  if (gate_up.device() == Device::CUDA) return cuda_ops::swiglu_forward(gate_up, h);
  const int64_t width = h.dim(-1), rows = h.numel() / width;
  const float* gu = gate_up.f32();
  float* hp = h.f32();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gu + r * 2 * width;
    const float* u = g + width;
    float* o = hp + r * width;
    for (int64_t i = 0; i < width; ++i) o[i] = g[i] * fast::sigmoid(g[i]) * u[i];
  }
}

void swiglu_backward(const Tensor& gate_up, const Tensor& d_h, Tensor& d_gate_up) {
  if (gate_up.dtype() == DType::F64) return ref::swiglu_backward(gate_up, d_h, d_gate_up);
  if (gate_up.device() == Device::CUDA) return cuda_ops::swiglu_backward(gate_up, d_h, d_gate_up);
  const int64_t width = d_h.dim(-1), rows = d_h.numel() / width;
  const float* gu = gate_up.f32();
  const float* dh = d_h.f32();
  float* dgu = d_gate_up.f32();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gu + r * 2 * width;
    const float* u = g + width;
    const float* d = dh + r * width;
    float* dg = dgu + r * 2 * width;
    float* du = dg + width;
    for (int64_t i = 0; i < width; ++i) {
      float sig = fast::sigmoid(g[i]);
      float silu = g[i] * sig;
      du[i] = d[i] * silu;
      dg[i] = d[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
    }
  }
}

}  // namespace dsv3::ops
