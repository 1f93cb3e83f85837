// float32 -> float16 conversion: exact for every half value, round to nearest even in between.
#include <cmath>
#include <cstdint>

#include <gtest/gtest.h>

#include "core/dtype.h"

namespace dsv3 {
namespace {

bool is_nan_half(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

TEST(F16Conversion, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (is_nan_half(uint16_t(h))) {
      EXPECT_TRUE(std::isnan(f));
      EXPECT_TRUE(is_nan_half(f32_to_f16(f))) << h;
    } else {
      EXPECT_EQ(f32_to_f16(f), h) << "half 0x" << std::hex << h;
    }
  }
}

TEST(F16Conversion, RoundsToNearestEven) {
  // Between each pair of adjacent finite positive halves (subnormal and normal), the midpoint
  // goes to the even one and anything off the midpoint goes to the nearer one; both signs.
  for (uint32_t h = 0; h < 0x7bffu; ++h) {
    float lo = f16_to_f32(uint16_t(h)), hi = f16_to_f32(uint16_t(h + 1));
    float mid = (lo + hi) / 2;  // exact: float has 13 more mantissa bits than half
    uint16_t even = (h % 2 == 0) ? uint16_t(h) : uint16_t(h + 1);
    for (float s : {1.0f, -1.0f}) {
      uint16_t sign = s < 0 ? 0x8000u : 0;
      ASSERT_EQ(f32_to_f16(s * mid), even | sign) << "midpoint above half 0x" << std::hex << h;
      ASSERT_EQ(f32_to_f16(s * std::nextafter(mid, 0.0f)), h | sign) << h;
      ASSERT_EQ(f32_to_f16(s * std::nextafter(mid, INFINITY)), (h + 1) | sign) << h;
    }
  }
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bffu);
  EXPECT_EQ(f32_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7bffu);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00u);
  EXPECT_EQ(f32_to_f16(-1e30f), 0xfc00u);
  EXPECT_EQ(f32_to_f16(INFINITY), 0x7c00u);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000u);
  EXPECT_EQ(f32_to_f16(1e-30f), 0x0000u);  // far below the smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000u);  // half of 2^-24: ties to even zero
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001u);
  EXPECT_TRUE(is_nan_half(f32_to_f16(NAN)));
}

}  // namespace
}  // namespace dsv3
