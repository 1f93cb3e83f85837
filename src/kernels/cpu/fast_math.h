#pragma once
// Vectorizable float32 exp: the compiler turns loops over these inline functions into SIMD
// code, where a call into libm would stay scalar. Accuracy: within 2 ulp of expf over the
// range that matters here (x in [-87, 88]); below that it returns 0, above it +inf.
#include <cmath>
#include <cstdint>
#include <cstring>

namespace dsv3::fast {

inline float exp(float x) {
  // Below -87.3 the result is 0 (so exp(-inf), a masked logit or score, is exactly 0); the
  // arithmetic runs on the clamped value and the select stays vectorizable.
  const bool underflow = x < -87.3f;
  // exp(x) = 2^n * exp(r), n = round(x / ln2), r = x - n*ln2 (in two parts for accuracy).
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  // Round to nearest by adding and subtracting 1.5 * 2^23 (vectorizes, unlike nearbyint).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  // Minimax-style Taylor expansion of exp(r) on |r| <= ln2/2, degree 6 (error < 2e-7).
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return underflow ? 0.0f : p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + fast::exp(-x)); }

}  // namespace dsv3::fast
