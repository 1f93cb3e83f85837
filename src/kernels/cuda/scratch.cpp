#include "kernels/cuda/scratch.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "kernels/cuda/context.h"

namespace dsv3::cuda {
namespace {

constexpr size_t kAlign = 256;  // as cudaMalloc aligns: every vector load of the kernels fits

size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// One per process: the GPU is driven from one host thread (context.h).
struct Stack {
  void* base = nullptr;  // [capacity] bytes of device memory
  size_t capacity = 0;
  // The regions handed out, in order: [offset, offset + bytes) of the stack. A region given
  // back out of order stays until those above it go too, so a nesting that is not strictly
  // last-in first-out (two optional holders filled in the other order) is still safe.
  struct Region {
    size_t offset, bytes;
    bool live;
  };
  std::vector<Region> regions;
  size_t peak = 0;  // the most the stack has needed at once, regions of their own included
  uint64_t allocations = 0;

  size_t top() const { return regions.empty() ? 0 : regions.back().offset + regions.back().bytes; }
};

Stack& stack() {
  static Stack s;
  return s;
}

}  // namespace

Scratch::Scratch(size_t bytes, const char* what) {
  Stack& s = stack();
  const size_t need = round_up(std::max<size_t>(bytes, 1));
  offset_ = s.top();
  if (offset_ + need <= s.capacity) {
    p_ = static_cast<char*>(s.base) + offset_;
  } else {
    // Too small for now: a region of its own, and the buffer grows once the stack is empty.
    check(cudaMallocAsync(&p_, need, stream()), what);
    ++s.allocations;
    own_ = true;
  }
#ifdef DSV3_CUDA_EMULATION
  // Reused scratch holds the last user's values, where fresh device memory holds garbage: the
  // emulation poisons it, so a kernel that reads scratch it never wrote still shows it.
  dsv3emu::poison_device(p_, need, stream());
#endif
  s.regions.push_back({offset_, need, true});
  s.peak = std::max(s.peak, s.top());
}

Scratch::~Scratch() {
  Stack& s = stack();
  if (own_) cudaFreeAsync(p_, stream());
  for (auto it = s.regions.rbegin(); it != s.regions.rend(); ++it)
    if (it->offset == offset_ && it->live) {
      it->live = false;
      break;
    }
  while (!s.regions.empty() && !s.regions.back().live) s.regions.pop_back();
  if (!s.regions.empty() || s.peak <= s.capacity) return;
  // Empty, and smaller than the peak: one buffer of the peak's size from now on. The old one is
  // given back in stream order, after the work queued on it, once the new one exists. A
  // destructor never throws: if the allocation fails, the old buffer stays, and requests that
  // do not fit keep taking regions of their own (the next empty stack tries again).
  void* grown = nullptr;
  if (cudaMallocAsync(&grown, s.peak, stream()) != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    s.peak = s.capacity;
    return;
  }
  if (s.base) cudaFreeAsync(s.base, stream());
  s.base = grown;
  s.capacity = s.peak;
  ++s.allocations;
}

size_t scratch_capacity() { return stack().capacity; }
uint64_t scratch_allocations() { return stack().allocations; }

}  // namespace dsv3::cuda
