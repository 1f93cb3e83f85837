#include "core/dtype.h"

#include <cmath>

#include "core/error.h"

namespace dsv3 {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return 4;
    case DType::BF16:
      return 2;
    case DType::F16:
      return 2;
    case DType::F8E4M3:
      return 1;
    case DType::I32:
      return 4;
    case DType::I64:
      return 8;
    case DType::F64:
      return 8;
  }
  return 0;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "F32";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::F8E4M3:
      return "F8_E4M3";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
    case DType::F64:
      return "F64";
  }
  return "?";
}

bool dtype_from_name(std::string_view name, DType* out) {
  static constexpr DType all[] = {DType::F32, DType::BF16, DType::F16, DType::F8E4M3,
                                  DType::I32, DType::I64,  DType::F64};
  for (DType d : all) {
    if (dtype_name(d) == name) {
      *out = d;
      return true;
    }
  }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  int exponent = (h >> 10) & 0x1f;
  uint32_t mantissa = h & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(float(mantissa), -24);
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(float(mantissa | 0x400), exponent - 25);
  }
  float out = magnitude;
  uint32_t bits;
  std::memcpy(&bits, &out, 4);
  bits |= sign;
  std::memcpy(&out, &bits, 4);
  return out;
}

uint16_t f32_to_f16(float f) {
  // Round to nearest even, in integer arithmetic: _Float16 is not available on x86 in every
  // compiler dsv3 builds with (clang 14, used for the fuzz targets, lacks it).
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  auto sign = uint16_t((bits >> 16) & 0x8000u);
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u)  // NaN: quiet, keeping the top of the payload
    return uint16_t(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  if (magnitude >= 0x477ff000u)  // >= 65520, halfway past the largest half (65504): infinity
    return uint16_t(sign | 0x7c00u);
  if (magnitude >= 0x38800000u) {  // normal half (>= 2^-14): rebias the exponent, round 13 bits
    uint32_t v = magnitude - 0x38000000u;
    return uint16_t(sign | ((v + 0xfffu + ((v >> 13) & 1u)) >> 13));
  }
  // Subnormal half: a multiple of 2^-24; scaling by 2^24 is exact and nearbyint rounds to even.
  float units = std::nearbyint(std::fabs(f) * 16777216.0f);
  return uint16_t(sign | uint16_t(units));
}

void dequantize_fp8_row(const uint8_t* q, const float* scale, int64_t cols, int64_t block_cols,
                        float* out) {
  for (int64_t c = 0; c < cols; ++c) out[c] = f8e4m3_to_f32(q[c]) * scale[c / block_cols];
}

float f8e4m3_to_f32(uint8_t v) {
  float sign = (v & 0x80) ? -1.0f : 1.0f;
  int exponent = (v >> 3) & 0xf;
  int mantissa = v & 0x7;
  if (exponent == 0xf && mantissa == 0x7) return NAN;
  if (exponent == 0) return sign * std::ldexp(float(mantissa), -9);  // subnormal: m/8 * 2^-6
  return sign * std::ldexp(float(8 + mantissa), exponent - 10);      // (1+m/8) * 2^(e-7)
}

uint8_t f32_to_f8e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;
  // Find the nearest representable magnitude by the spacing of its binade, ties to even.
  int exponent;
  std::frexp(a, &exponent);  // a = frac * 2^exponent, frac in [0.5, 1)
  int e = exponent - 1;      // a in [2^e, 2^(e+1))
  if (e < -6) e = -6;        // subnormal range shares the spacing of 2^-6 binade
  float spacing = std::ldexp(1.0f, e - 3);
  float steps = std::nearbyint(a / spacing);  // default rounding mode: ties to even
  float rounded = steps * spacing;
  if (rounded >= 448.0f) return sign | 0x7e;
  if (rounded == 0.0f) return sign;
  int re;
  std::frexp(rounded, &re);
  int biased = re - 1 + 7;
  if (biased <= 0) {  // subnormal: value = m * 2^-9
    return sign | uint8_t(std::lround(rounded / std::ldexp(1.0f, -9)));
  }
  int mantissa = int(std::lround(rounded / std::ldexp(1.0f, re - 1 - 3))) - 8;
  return sign | uint8_t(biased << 3) | uint8_t(mantissa);
}

void convert_to_f32(DType src_dtype, const void* src, float* dst, size_t n) {
  switch (src_dtype) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16: {
      auto s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      auto s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::F8E4M3: {
      auto s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f8e4m3_to_f32(s[i]);
      return;
    }
    case DType::F64: {  // rounds to nearest
      auto s = static_cast<const double*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = float(s[i]);
      return;
    }
    default:
      fail("convert_to_f32: {} is not a floating dtype", dtype_name(src_dtype));
  }
}

void convert_from_f32(const float* src, DType dst_dtype, void* dst, size_t n) {
  switch (dst_dtype) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16: {
      auto d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      auto d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::F8E4M3: {
      auto d = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f8e4m3(src[i]);
      return;
    }
    case DType::F64: {  // exact
      auto d = static_cast<double*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = src[i];
      return;
    }
    default:
      fail("convert_from_f32: {} is not a floating dtype", dtype_name(dst_dtype));
  }
}

}  // namespace dsv3
