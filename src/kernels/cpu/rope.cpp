// Rotary position embedding over interleaved pairs, on the CPU.
#include "core/device.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {
namespace {
template <bool kInverse>
void rotate(float* x, const RopeSlice& s, const int32_t* positions, const Tensor& cos,
            const Tensor& sin) {
  const int64_t half = s.rope_dim / 2;
  const float* cp = cos.f32();
  const float* sp = sin.f32();
  const int64_t max_pos = cos.dim(0);
  // Checked before the parallel loop: an exception must not escape an OpenMP region.
  for (int64_t r = 0; r < s.rows; ++r)
    DSV3_CHECK(positions[r] >= 0 && positions[r] < max_pos,
               "rope: position {} outside the table of {} positions", positions[r], max_pos);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < s.rows; ++r) {
    int64_t pos = positions[r];
    const float* c = cp + pos * half;
    const float* sn = sp + pos * half;
    for (int64_t h = 0; h < s.heads; ++h) {
      float* v = x + (r * s.heads + h) * s.head_stride + s.offset;
      for (int64_t i = 0; i < half; ++i) {
        float a = v[2 * i], b = v[2 * i + 1];
        float si = kInverse ? -sn[i] : sn[i];
        v[2 * i] = a * c[i] - b * si;
        v[2 * i + 1] = a * si + b * c[i];
      }
    }
  }
}
}  // namespace

void rope_forward(float* x, const RopeSlice& s, const int32_t* positions, const Tensor& cos,
                  const Tensor& sin) {
  if (cos.device() == Device::CUDA) return cuda_ops::rope(x, s, positions, cos, sin, false);
  rotate<false>(x, s, positions, cos, sin);
}

void rope_backward(float* d_x, const RopeSlice& s, const int32_t* positions, const Tensor& cos,
                   const Tensor& sin) {
  if (cos.device() == Device::CUDA) return cuda_ops::rope(d_x, s, positions, cos, sin, true);
  rotate<true>(d_x, s, positions, cos, sin);
}

namespace {
void rotate_tensor(Tensor& x, const RopeSlice& s, const int32_t* positions, const Tensor& cos,
                   const Tensor& sin, bool inverse) {
  if (x.dtype() == DType::F32)
    return inverse ? rope_backward(x.f32(), s, positions, cos, sin)
                   : rope_forward(x.f32(), s, positions, cos, sin);
  if (x.dtype() == DType::BF16 && x.device() == Device::CUDA && cos.device() == Device::CUDA)
    return cuda_ops::rope_bf16(x.bf16(), s, positions, cos, sin, inverse);
  DSV3_CHECK(x.dtype() == DType::F64 && x.device() == Device::CPU,
             "rope: {} tensors on the {} are not supported", dtype_name(x.dtype()),
             device_name(x.device()));
  if (cos.dtype() == DType::F64)
    ref::t::rope(x.f64(), s, positions, cos.f64(), sin.f64(), cos.dim(0), inverse);
  else
    ref::t::rope(x.f64(), s, positions, cos.f32(), sin.f32(), cos.dim(0), inverse);
}
}  // namespace

void rope_forward(Tensor& x, const RopeSlice& s, const int32_t* positions, const Tensor& cos,
                  const Tensor& sin) {
  rotate_tensor(x, s, positions, cos, sin, false);
}

void rope_backward(Tensor& d_x, const RopeSlice& s, const int32_t* positions, const Tensor& cos,
                   const Tensor& sin) {
  rotate_tensor(d_x, s, positions, cos, sin, true);
}

}  // namespace dsv3::ops
