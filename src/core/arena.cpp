#include "core/arena.h"

#include <cstdlib>
#include <cstring>

#include "core/device.h"

namespace dsv3 {

Arena::Arena(size_t capacity_bytes, Device device)
    : capacity_((capacity_bytes + 63) / 64 * 64), device_(device) {
  if (device == Device::CUDA) {
    // cudaMalloc aligns to 256 bytes, so 64-byte offsets from the base stay 64-byte aligned.
    void* p = device::cuda_alloc(capacity_);
    block_ = std::shared_ptr<void>(p, [](void* q) { device::cuda_free(q); });
    base_ = static_cast<char*>(p);
    device::zero(p, device, capacity_);
    return;
  }
  void* p = std::aligned_alloc(64, capacity_ ? capacity_ : 64);
  DSV3_CHECK(p != nullptr, "out of memory: cannot reserve {} MiB for activations", capacity_ >> 20);
  std::memset(p, 0, capacity_);
  block_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  base_ = static_cast<char*>(p);
}

Tensor Arena::alloc(const Shape& shape, DType dtype) {
  size_t bytes = (size_t(shape.numel()) * dtype_size(dtype) + 63) / 64 * 64;
  size_t offset = used_;
  used_ += bytes;
  if (is_measuring()) {
    // A placeholder pointer: measured plans are never read or written.
    return Tensor::view(reinterpret_cast<void*>(uintptr_t(64)), shape, dtype, device_);
  }
  DSV3_CHECK(used_ <= capacity_, "arena overflow: need {} bytes, planned {}", used_, capacity_);
  return Tensor::view(base_ + offset, shape, dtype, device_, block_);
}

Arena& Arena::host() {
  if (host_) return *host_;
  DSV3_CHECK(device_ == Device::CPU, "a device arena has no host arena attached (attach_host)");
  return *this;
}

Arena::Mirrored Arena::alloc_mirrored(const Shape& shape, DType dtype) {
  Tensor h = host().alloc(shape, dtype);
  return {h, &host() == this ? h : alloc(shape, dtype)};
}

}  // namespace dsv3
