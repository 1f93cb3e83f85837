#pragma once
// Element types dsv3 stores and computes with, and exact conversions between them.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace dsv3 {

// F64 is the precision of `dsv3 parity --precision f64`: the training step run through the
// reference kernels in float64 (kernels/reference.h); no fast kernel computes in it.
enum class DType : uint8_t { F32, BF16, F16, F8E4M3, I32, I64, F64 };

size_t dtype_size(DType dtype);
// Safetensors spelling: "F32", "BF16", "F16", "F8_E4M3", "I32", "I64", "F64".
std::string_view dtype_name(DType dtype);
// Returns false when the name is not a dtype dsv3 supports.
bool dtype_from_name(std::string_view name, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, as PyTorch and the hardware do; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// OCP FP8 E4M3 ("fn": no infinities, 0x7f/0xff are NaN, max finite 448).
float f8e4m3_to_f32(uint8_t v);
// One row of a block-scaled FP8 matrix as float32: out[c] = e4m3(q[c]) * scale[c / block_cols],
// where `scale` is the row of block scales for this row's block (one float32 per block).
void dequantize_fp8_row(const uint8_t* q, const float* scale, int64_t cols, int64_t block_cols,
                        float* out);
// Round to nearest even with saturation to +-448 (the convention of DeepSeek's FP8 recipe).
uint8_t f32_to_f8e4m3(float f);

// Converts n elements of any floating dtype to float32.
void convert_to_f32(DType src_dtype, const void* src, float* dst, size_t n);
// Converts n float32 values to a floating dtype.
void convert_from_f32(const float* src, DType dst_dtype, void* dst, size_t n);

}  // namespace dsv3
