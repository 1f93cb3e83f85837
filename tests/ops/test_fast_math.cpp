// The CPU kernels' vectorizable exp (kernels/cpu/fast_math.h): accurate over its range, exactly
// 0 below it (exp(-inf) is how masked logits and scores vanish), +inf above it.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/cpu/fast_math.h"

namespace dsv3 {
namespace {

TEST(FastExp, MatchesExpOverItsRange) {
  double worst = 0.0;
  for (float x = -87.0f; x <= 88.0f; x += 0.013f) {
    const double want = std::exp(double(x));
    worst = std::max(worst, std::abs(double(fast::exp(x)) - want) / want);
  }
  EXPECT_LT(worst, 4e-7) << "relative error over [-87, 88]";
  EXPECT_FLOAT_EQ(fast::exp(0.0f), 1.0f);
}

TEST(FastExp, IsZeroBelowItsRangeAndForMinusInfinity) {
  EXPECT_EQ(fast::exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(fast::exp(-100.0f), 0.0f);
  EXPECT_EQ(fast::exp(-87.4f), 0.0f);
  EXPECT_GT(fast::exp(-87.2f), 0.0f);
}

TEST(FastExp, OverflowsToInfinityAndKeepsNaN) {
  EXPECT_EQ(fast::exp(std::numeric_limits<float>::infinity()),
            std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(fast::exp(std::numeric_limits<float>::quiet_NaN())));
}

}  // namespace
}  // namespace dsv3
