// Reference SwiGLU h = silu(g) * u = g * sigmoid(g) * u, and its gradient, in float64.
#include <cmath>

#include "kernels/reference.h"

namespace dsv3::ref {
namespace t {

template <typename T>
void swiglu_forward(const T* gate_up, int64_t rows, int64_t width, T* h) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i) {
      const double g = gate_up[r * 2 * width + i], u = gate_up[r * 2 * width + width + i];
      h[r * width + i] = T(g / (1.0 + std::exp(-g)) * u);
    }
}

// d silu(g)/dg = sig(g) + g sig(g) (1 - sig(g)).
template <typename T>
void swiglu_backward(const T* gate_up, const T* d_h, int64_t rows, int64_t width, T* d_gate_up) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i) {
      const double g = gate_up[r * 2 * width + i], u = gate_up[r * 2 * width + width + i];
      const double d = d_h[r * width + i];
      const double sig = 1.0 / (1.0 + std::exp(-g));
      d_gate_up[r * 2 * width + i] = T(d * u * (sig + g * sig * (1.0 - sig)));
      d_gate_up[r * 2 * width + width + i] = T(d * g * sig);
    }
}

template void swiglu_forward<float>(const float*, int64_t, int64_t, float*);
template void swiglu_forward<double>(const double*, int64_t, int64_t, double*);
template void swiglu_backward<float>(const float*, const float*, int64_t, int64_t, float*);
template void swiglu_backward<double>(const double*, const double*, int64_t, int64_t, double*);

}  // namespace t

void swiglu_forward(const Tensor& gate_up, Tensor& h) {
  with_real(gate_up, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t width = h.dim(-1), rows = h.numel() / width;
    DSV3_CHECK(gate_up.numel() == rows * 2 * width, "ref::swiglu_forward: gate_up {} vs h {}",
               gate_up.shape().str(), h.shape().str());
    t::swiglu_forward(gate_up.real<T>(), rows, width, h.real<T>());
  });
}

void swiglu_backward(const Tensor& gate_up, const Tensor& d_h, Tensor& d_gate_up) {
  with_real(gate_up, [&](auto real_zero) {
    using T = decltype(real_zero);
    const int64_t width = d_h.dim(-1), rows = d_h.numel() / width;
    t::swiglu_backward(gate_up.real<T>(), d_h.real<T>(), rows, width, d_gate_up.real<T>());
  });
}

}  // namespace dsv3::ref
