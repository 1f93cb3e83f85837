#include "core/arena.h"

#include <cstdlib>
#include <cstring>

namespace dsv3 {

Arena::Arena(size_t capacity_bytes) : capacity_((capacity_bytes + 63) / 64 * 64) {
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
    return Tensor::view(reinterpret_cast<void*>(uintptr_t(64)), shape, dtype);
  }
  DSV3_CHECK(used_ <= capacity_, "arena overflow: need {} bytes, planned {}", used_, capacity_);
  return Tensor::view(base_ + offset, shape, dtype, Device::CPU, block_);
}

}  // namespace dsv3
