// The device's float32 <-> BF16 conversions (kernels/cuda/convert.cu) against the host's
// (core/dtype.h) bit for bit: round to nearest even, ties, NaN, infinities, zeros, subnormals,
// the largest finite value. Lengths around multiples of four and pointers off the 16-/8-byte
// alignment exercise both the four-wide path and the one-at-a-time path, and the elements just
// outside each range must be left as they were. Part of dsv3_gpu_tests and the emulated tests.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "device_vectors.h"
#include "kernels/cuda/launch.h"

namespace dsv3 {
namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Values that test the rounding, then random ones of several magnitudes.
std::vector<float> test_values(size_t n) {
  std::vector<float> v = {
      0.0f, -0.0f, 1.0f, -1.0f, std::numeric_limits<float>::infinity(),
      -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
      std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
      from_bits(0x3f808000u),  // halfway between two BF16 values, even below: rounds down
      from_bits(0x3f818000u),  // halfway, odd below: rounds up
      from_bits(0x3f808001u),  // just above halfway
      from_bits(0x00000001u),  // the smallest subnormal
      from_bits(0x807fffffu),  // the largest negative subnormal
      from_bits(0x7f7f8000u),  // halfway to overflow: rounds to infinity
  };
  std::mt19937_64 rng(9);
  std::normal_distribution<float> d;
  while (v.size() < n) v.push_back(d(rng) * std::ldexp(1.0f, int(v.size() % 40) - 20));
  v.resize(n);
  return v;
}

TEST(CudaConvert, MatchesTheHostBitForBitAtEveryLengthAndAlignment) {
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device";
  constexpr size_t kPad = 8;  // room for the offsets and a guard on each side
  for (size_t n : {1, 3, 4, 5, 8, 15, 64, 1001}) {
    for (const auto& [src_off, dst_off] : std::vector<std::pair<size_t, size_t>>{
             {0, 0}, {1, 0}, {0, 1}, {4, 4}, {3, 2}}) {
      SCOPED_TRACE("n " + std::to_string(n) + ", offsets " + std::to_string(src_off) + ", " +
                   std::to_string(dst_off));
      const std::vector<float> x = test_values(n + 2 * kPad);
      const std::vector<uint16_t> guard16(n + 2 * kPad, 0xabcd);
      const std::vector<float> guard32(n + 2 * kPad, -7.0f);
      float* dx = test::to_device(x);
      uint16_t* dy = test::to_device(guard16);
      float* dz = test::to_device(guard32);
      ASSERT_EQ(cuda::f32_to_bf16(dx + kPad + src_off, dy + kPad + dst_off, int64_t(n), nullptr),
                cudaSuccess);
      // Back to float32 from the converted values, at the source offset into the third buffer.
      ASSERT_EQ(cuda::bf16_to_f32(dy + kPad + dst_off, dz + kPad + src_off, int64_t(n), nullptr),
                cudaSuccess);
      const std::vector<uint16_t> y = test::to_host(dy, n + 2 * kPad);
      const std::vector<float> z = test::to_host(dz, n + 2 * kPad);
      for (size_t i = 0; i < n + 2 * kPad; ++i) {
        if (i < kPad + dst_off || i >= kPad + dst_off + n) {
          ASSERT_EQ(y[i], 0xabcd) << "bf16 element " << i << ", outside the range, was written";
        } else {
          const float src = x[i - dst_off + src_off];
          if (std::isnan(src))  // a NaN's bits: the host keeps its payload, a GPU makes 0x7fff
            ASSERT_GT(y[i] & 0x7fff, 0x7f80) << "bf16 element " << i << " of a NaN";
          else
            ASSERT_EQ(y[i], f32_to_bf16(src)) << "bf16 element " << i << " of " << src;
        }
        if (i < kPad + src_off || i >= kPad + src_off + n) {
          ASSERT_EQ(z[i], -7.0f) << "float32 element " << i << ", outside the range, was written";
        } else {
          const float want = bf16_to_f32(y[i - src_off + dst_off]);  // exact: the bits shifted
          ASSERT_EQ(std::memcmp(&z[i], &want, 4), 0) << "float32 element " << i;
        }
      }
      cudaFree(dx);
      cudaFree(dy);
      cudaFree(dz);
    }
  }
}

}  // namespace
}  // namespace dsv3
