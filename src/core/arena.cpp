#include "core/arena.h"

#include <cstdlib>
#include <cstring>

#include "core/device.h"

namespace dsv3 {

namespace {
// Views start at multiples of this from the block's base. A device block is 256-byte aligned
// (cudaMalloc), and 256-byte views give its GEMM operands the alignment of a cudaMalloc'ed
// buffer, which is what cuBLAS's choice of algorithm may look at; 64 bytes (a cache line) on
// the host.
size_t alignment(Device device) { return device == Device::CUDA ? 256 : 64; }
size_t round_up(size_t bytes, size_t align) { return (bytes + align - 1) / align * align; }
}  // namespace

Arena::Arena(size_t capacity_bytes, Device device)
    : capacity_(round_up(capacity_bytes, alignment(device))), device_(device) {
  if (device == Device::CUDA) {
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
  const size_t bytes = round_up(size_t(shape.numel()) * dtype_size(dtype), alignment(device_));
  size_t offset = used_;
  used_ += bytes;
  if (is_measuring()) {
    // A placeholder pointer: measured plans are never read or written.
    return Tensor::view(reinterpret_cast<void*>(uintptr_t(256)), shape, dtype, device_);
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
