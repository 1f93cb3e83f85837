// Reference RoPE over interleaved pairs: (a, b) -> (a cos - b sin, a sin + b cos), in float64.
#include "kernels/reference.h"

namespace dsv3::ref {
namespace t {

template <typename T, typename U>
void rope(T* x, const ops::RopeSlice& s, const int32_t* positions, const U* cos, const U* sin,
          int64_t max_pos, bool inverse) {
  const int64_t half = s.rope_dim / 2;
  for (int64_t r = 0; r < s.rows; ++r) {
    DSV3_CHECK(positions[r] >= 0 && positions[r] < max_pos,
               "ref::rope: position {} outside the table of {} positions", positions[r], max_pos);
    for (int64_t h = 0; h < s.heads; ++h) {
      T* v = x + (r * s.heads + h) * s.head_stride + s.offset;
      for (int64_t i = 0; i < half; ++i) {
        const double c = cos[positions[r] * half + i];
        const double sn =
            inverse ? -double(sin[positions[r] * half + i]) : double(sin[positions[r] * half + i]);
        const double a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = T(a * c - b * sn);
        v[2 * i + 1] = T(a * sn + b * c);
      }
    }
  }
}

template void rope<float, float>(float*, const ops::RopeSlice&, const int32_t*, const float*,
                                 const float*, int64_t, bool);
template void rope<double, float>(double*, const ops::RopeSlice&, const int32_t*, const float*,
                                  const float*, int64_t, bool);
template void rope<double, double>(double*, const ops::RopeSlice&, const int32_t*, const double*,
                                   const double*, int64_t, bool);

}  // namespace t

void rope_forward(float* x, const ops::RopeSlice& s, const int32_t* positions, const Tensor& cos,
                  const Tensor& sin) {
  t::rope(x, s, positions, cos.f32(), sin.f32(), cos.dim(0), false);
}

void rope_backward(float* d_x, const ops::RopeSlice& s, const int32_t* positions, const Tensor& cos,
                   const Tensor& sin) {
  t::rope(d_x, s, positions, cos.f32(), sin.f32(), cos.dim(0), true);
}

}  // namespace dsv3::ref
