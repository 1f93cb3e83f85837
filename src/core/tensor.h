#pragma once
// A dense, contiguous, row-major tensor: a pointer, a dtype, a device tag and a shape.
// A Tensor either owns its bytes (shared ownership, freed with the last copy) or views memory
// that something else owns (an arena, a memory-mapped file). Model code never cares which.
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "core/dtype.h"
#include "core/error.h"

namespace dsv3 {

enum class Device : uint8_t { CPU, CUDA };
std::string_view device_name(Device device);

// Up to 6 dimensions, stored inline so that shapes never allocate.
class Shape {
 public:
  static constexpr int kMaxDims = 6;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  template <typename It>
  static Shape from(It begin, It end) {
    Shape s;
    for (It it = begin; it != end; ++it) s.push_back(int64_t(*it));
    return s;
  }
  int ndim() const { return ndim_; }
  int64_t operator[](int i) const { return dims_[size_t(i < 0 ? i + ndim_ : i)]; }
  int64_t numel() const;
  void push_back(int64_t d);
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const;  // "[2, 24, 512]"

 private:
  std::array<int64_t, kMaxDims> dims_{};
  int ndim_ = 0;
};

class Tensor {
 public:
  Tensor() = default;
  // Allocates zero-filled, 64-byte aligned storage owned by the tensor, on the CPU or (in a
  // build with the CUDA backend and a visible GPU) in device memory; otherwise a dsv3::Error
  // "CUDA device requested but ...".
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  // Views memory owned elsewhere; `keep_alive` (optional) is held as long as the view lives.
  static Tensor view(void* data, const Shape& shape, DType dtype, Device device = Device::CPU,
                     std::shared_ptr<void> keep_alive = nullptr);

  bool defined() const { return data_ != nullptr || (shape_.numel() == 0 && shape_.ndim() > 0); }
  void* data() const { return data_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }

  // Typed access; checks the dtype so that a wrong cast is an error, not garbage.
  float* f32() const { return typed<float>(DType::F32); }
  int32_t* i32() const { return typed<int32_t>(DType::I32); }
  int64_t* i64() const { return typed<int64_t>(DType::I64); }
  uint16_t* bf16() const { return typed<uint16_t>(DType::BF16); }
  double* f64() const { return typed<double>(DType::F64); }
  // The same for a floating type named by T: float (F32) or double (F64).
  template <typename T>
  T* real() const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
    return typed<T>(std::is_same_v<T, float> ? DType::F32 : DType::F64);
  }

  // Same bytes, new shape with the same element count.
  Tensor reshape(const Shape& shape) const;
  // Rows [begin, end) along the first dimension, sharing storage.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  // Deep copy on the same device in the same dtype.
  Tensor clone() const;
  // A copy on `device` (this tensor itself when it is already there: no copy).
  Tensor to(Device device) const;
  // A float32 copy on the same device (converting BF16/F16/F8 exactly; a device tensor makes
  // the round trip through the host).
  Tensor to_f32() const;
  void zero_();
  // Overwrites this tensor's bytes with src's (same dtype and element count; any devices).
  void copy_from(const Tensor& src);

 private:
  template <typename T>
  T* typed(DType expected) const {
    DSV3_CHECK(dtype_ == expected, "tensor of dtype {} used as {}", dtype_name(dtype_),
               dtype_name(expected));
    return static_cast<T*>(data_);
  }

  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  std::shared_ptr<void> owner_;
};

// A readback of several tensors with one wait for the device: for each pair, dst (on the host)
// takes src's bytes, as dst.copy_from(src) would (same dtype and element count). Device sources
// come back together (device::copy_to_host); host sources are copied at once (nothing when a
// pair is one tensor, as a CPU run's host mirrors are). At most 16 pairs a call.
struct HostCopyOf {
  Tensor* dst;
  const Tensor* src;
};
void copy_to_host(std::span<const HostCopyOf> pairs);
inline void copy_to_host(std::initializer_list<HostCopyOf> pairs) {
  copy_to_host(std::span<const HostCopyOf>(pairs.begin(), pairs.size()));
}

}  // namespace dsv3
