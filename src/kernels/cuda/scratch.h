#pragma once
// The ops' per-call device scratch (BF16 copies of float32 operands, per-row partial sums,
// pointer and chunk tables), carved from one device buffer that is planned by use: no
// allocation once the first training step has run. Host code only.
//
// Scratch objects live inside one op call and nest, so they are taken and given back in stack
// order. Every kernel and copy runs on the one stream (context.h), so a region given back may be
// handed out again at once: the next user's work is queued after the last reader's. (Work on
// side streams joins the stream before the op that owns the scratch returns.)
//
// A request that does not fit the buffer gets a stream-ordered allocation of its own
// (cudaMallocAsync), and the stack remembers the peak it would have needed; when the stack is
// next empty, the buffer is replaced by one of that size. So the first step allocates (a few
// times), and every later step of the same shapes allocates nothing.
#include <cstddef>
#include <cstdint>

namespace dsv3::cuda {

class Scratch {
 public:
  Scratch(size_t bytes, const char* what);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  size_t offset_ = 0;  // where the stack stood before this one (its top after it is popped)
  bool own_ = false;   // an allocation of its own (the buffer was too small)
};

// The stack's current buffer size in bytes, and the device allocations it has made so far
// (tests and diagnostics).
size_t scratch_capacity();
uint64_t scratch_allocations();

}  // namespace dsv3::cuda
