#include "core/tensor.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "core/device.h"

namespace dsv3 {

std::string_view device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

Shape::Shape(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims) push_back(d);
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= dims_[size_t(i)];
  return n;
}

void Shape::push_back(int64_t d) {
  DSV3_CHECK(ndim_ < kMaxDims, "shape has more than {} dimensions", kMaxDims);
  DSV3_CHECK(d >= 0, "negative dimension {} in a shape", d);
  dims_[size_t(ndim_++)] = d;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim_ != o.ndim_) return false;
  for (int i = 0; i < ndim_; ++i)
    if (dims_[size_t(i)] != o.dims_[size_t(i)]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < ndim_; ++i) s += (i ? ", " : "") + std::to_string(dims_[size_t(i)]);
  return s + "]";
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  size_t bytes = (t.nbytes() + 63) / 64 * 64;
  if (device == Device::CUDA) {
    void* p = device::cuda_alloc(bytes);
    t.owner_ = std::shared_ptr<void>(p, [](void* q) { device::cuda_free(q); });
    t.data_ = p;
    device::zero(p, device, bytes);
    return t;
  }
  void* p = std::aligned_alloc(64, bytes ? bytes : 64);
  DSV3_CHECK(p != nullptr, "out of memory allocating {} bytes for a tensor of shape {}", bytes,
             shape.str());
  std::memset(p, 0, bytes);
  t.owner_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  t.data_ = p;
  return t;
}

Tensor Tensor::view(void* data, const Shape& shape, DType dtype, Device device,
                    std::shared_ptr<void> keep_alive) {
  Tensor t;
  t.data_ = data;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.owner_ = std::move(keep_alive);
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  DSV3_CHECK(shape.numel() == numel(), "cannot reshape {} to {}", shape_.str(), shape.str());
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  DSV3_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= dim(0),
             "row slice [{}, {}) out of range for shape {}", begin, end, shape_.str());
  Tensor t = *this;
  int64_t row = dim(0) ? numel() / dim(0) : 0;
  Shape s;
  s.push_back(end - begin);
  for (int i = 1; i < ndim(); ++i) s.push_back(dim(i));
  t.shape_ = s;
  t.data_ = static_cast<char*>(data_) + size_t(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = zeros(shape_, dtype_, device_);
  device::copy(t.data_, device_, data_, device_, nbytes());
  return t;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor t = zeros(shape_, dtype_, device);
  device::copy(t.data_, device, data_, device_, nbytes());
  return t;
}

Tensor Tensor::to_f32() const {
  if (device_ != Device::CPU) return to(Device::CPU).to_f32().to(device_);
  Tensor t = zeros(shape_, DType::F32, device_);
  convert_to_f32(dtype_, data_, t.f32(), size_t(numel()));
  return t;
}

void Tensor::zero_() { device::zero(data_, device_, nbytes()); }

void Tensor::copy_from(const Tensor& src) {
  DSV3_CHECK(src.dtype_ == dtype_ && src.numel() == numel(),
             "copy_from: {} {} into {} {}", dtype_name(src.dtype_), src.shape_.str(),
             dtype_name(dtype_), shape_.str());
  if (src.data_ == data_ && src.device_ == device_) return;
  device::copy(data_, device_, src.data_, src.device_, nbytes());
}

void copy_to_host(std::span<const HostCopyOf> pairs) {
  for (const HostCopyOf& p : pairs) {
    DSV3_CHECK(p.dst->device() == Device::CPU, "copy_to_host: the destination is on {}",
               device_name(p.dst->device()));
    DSV3_CHECK(p.src->dtype() == p.dst->dtype() && p.src->numel() == p.dst->numel(),
               "copy_to_host: {} {} into {} {}", dtype_name(p.src->dtype()), p.src->shape().str(),
               dtype_name(p.dst->dtype()), p.dst->shape().str());
  }
  // The device regions in a fixed-size list: no allocation.
  constexpr size_t kMax = 16;
  DSV3_CHECK(pairs.size() <= kMax, "copy_to_host: {} tensors, at most {} at once", pairs.size(),
             kMax);
  device::ToHost regions[kMax];
  size_t n = 0;
  for (const HostCopyOf& p : pairs) {
    if (p.src->device() == Device::CPU)
      p.dst->copy_from(*p.src);
    else
      regions[n++] = {p.dst->data(), p.src->data(), p.src->nbytes()};
  }
  if (n) device::copy_to_host(std::span<const device::ToHost>(regions, n));
}

}  // namespace dsv3
