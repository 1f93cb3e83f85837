#pragma once
// Helpers the GPU tests share for exact comparisons of device tensors: random values, zeros on
// the device, the conversion op's BF16 rounding, bit-for-bit differences, and index tensors.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace dsv3::test {

// Standard normal float32 values on the host.
inline Tensor random_host(const Shape& shape, std::mt19937_64& rng) {
  Tensor t = Tensor::zeros(shape);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
  return t;
}

inline Tensor cuda_zeros(const Shape& shape, DType dtype = DType::F32) {
  return Tensor::zeros(shape, dtype, Device::CUDA);
}

// The float32 tensor rounded to BF16 on the device by the conversion op.
inline Tensor rounded(const Tensor& f32) {
  Tensor b = cuda_zeros(f32.shape(), DType::BF16);
  ops::convert(f32, b);
  return b;
}

// The BF16 tensor widened to float32 on the device by the conversion op (exactly).
inline Tensor widened(const Tensor& bf16) {
  Tensor f = cuda_zeros(bf16.shape());
  ops::convert(bf16, f);
  return f;
}

// Bit-for-bit equality of two device tensors of one dtype; the count of differing elements.
inline int64_t differing(const Tensor& a_dev, const Tensor& b_dev) {
  const Tensor a = a_dev.to(Device::CPU), b = b_dev.to(Device::CPU);
  EXPECT_EQ(a.dtype(), b.dtype());
  EXPECT_EQ(a.numel(), b.numel());
  const size_t elem = a.dtype() == DType::BF16 ? 2 : 4;
  int64_t bad = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    bad += std::memcmp(static_cast<const char*>(a.data()) + size_t(i) * elem,
                       static_cast<const char*>(b.data()) + size_t(i) * elem, elem) != 0;
  return bad;
}

// int32 values on the device (token ids, positions).
inline Tensor device_ints(const std::vector<int32_t>& v) {
  Tensor t = Tensor::zeros({int64_t(v.size())}, DType::I32);
  std::memcpy(t.data(), v.data(), v.size() * 4);
  return t.to(Device::CUDA);
}

}  // namespace dsv3::test
