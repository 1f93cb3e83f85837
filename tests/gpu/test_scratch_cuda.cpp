// The ops' device scratch (kernels/cuda/scratch.h): regions handed out in stack order from one
// buffer that grows to the peak a pattern of use needs, then serves it with no allocation.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <optional>

#include "core/device.h"
#include "kernels/cuda/scratch.h"

namespace dsv3::cuda {
namespace {

bool disjoint(const Scratch& a, size_t a_bytes, const Scratch& b, size_t b_bytes) {
  const auto pa = reinterpret_cast<uintptr_t>(a.as<void>());
  const auto pb = reinterpret_cast<uintptr_t>(b.as<void>());
  return pa + a_bytes <= pb || pb + b_bytes <= pa;
}

TEST(CudaScratch, NestedRegionsAreDisjointAndARepeatAllocatesNothing) {
  if (!device::cuda_device_count()) GTEST_SKIP() << "no CUDA device";
  const auto pattern = [] {
    Scratch a(1000, "test"), b(300000, "test");
    EXPECT_TRUE(disjoint(a, 1000, b, 300000));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.as<void>()) % 256, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.as<void>()) % 256, 0u);
    { Scratch c(5000, "test"); EXPECT_TRUE(disjoint(b, 300000, c, 5000)); }
    // Usable memory: a round trip through each region.
    const uint32_t v = 0x12345678;
    uint32_t back = 0;
    ASSERT_EQ(cudaMemcpy(b.as<void>(), &v, 4, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(&back, b.as<void>(), 4, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(back, v);
  };
  pattern();  // may grow the buffer to this pattern's peak
  EXPECT_GE(scratch_capacity(), size_t(1024 + 300032 + 5120));
  const uint64_t allocations = scratch_allocations();
  for (int i = 0; i < 3; ++i) pattern();
  EXPECT_EQ(scratch_allocations(), allocations);
}

// Two holders filled in one order and emptied in the same order (not last-in first-out): the
// region still held is not handed out again.
TEST(CudaScratch, ARegionReleasedOutOfOrderDoesNotFreeTheOneAboveIt) {
  if (!device::cuda_device_count()) GTEST_SKIP() << "no CUDA device";
  { Scratch warm(64 * 1024, "test"); }  // capacity for what follows, so every region is shared
  std::optional<Scratch> first, second;
  first.emplace(4096, "test");
  second.emplace(4096, "test");
  first.reset();  // `second` is above it and still held
  Scratch third(8192, "test");
  EXPECT_TRUE(disjoint(*second, 4096, third, 8192));
  second.reset();
  Scratch fourth(4096, "test");
  EXPECT_TRUE(disjoint(third, 8192, fourth, 4096));
}

}  // namespace
}  // namespace dsv3::cuda
