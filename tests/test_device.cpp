// The device seam on any machine: without the CUDA backend, or without a GPU, asking for CUDA
// memory is a dsv3::Error that says so (never a crash); CPU tensors move "to" the CPU for free.
#include <gtest/gtest.h>

#include "core/arena.h"
#include "core/device.h"
#include "core/tensor.h"

namespace dsv3 {
namespace {

TEST(Device, CudaRequestWithoutDeviceIsAClearError) {
  if (device::cuda_built() && device::cuda_device_count() > 0)
    GTEST_SKIP() << "a CUDA device is visible; dsv3_gpu_tests covers it";
  try {
    Tensor::zeros({4}, DType::F32, Device::CUDA);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA device requested but"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(Arena(1024, Device::CUDA), Error);
  EXPECT_THROW(Tensor::zeros({2}).to(Device::CUDA), Error);
}

TEST(Device, HostTensorsAreNeverDevicePointers) {
  Tensor t = Tensor::zeros({16});
  EXPECT_FALSE(device::is_cuda_pointer(t.data()));
  Tensor same = t.to(Device::CPU);
  EXPECT_EQ(same.data(), t.data());  // no copy
}

}  // namespace
}  // namespace dsv3
