// Token ids, targets and positions are range-checked on the device (kernels/cuda/index_errors.h):
// a kernel records the first bad index and skips it, and the error is raised, naming the op,
// the row, the value and the bound, at the next wait (cross_entropy's readback,
// device::synchronize) instead of each call copying the indices back and waiting.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/device.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {

#define REQUIRE_GPU() \
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device"

Tensor device_ints(const std::vector<int32_t>& v) {
  Tensor t = Tensor::zeros({int64_t(v.size())}, DType::I32);
  std::memcpy(t.data(), v.data(), v.size() * 4);
  return t.to(Device::CUDA);
}

Tensor device_filled(const Shape& shape, float value) {
  Tensor t = Tensor::zeros(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = value;
  return t.to(Device::CUDA);
}

// The message of the error the next wait raises ("" when none).
std::string error_at_next_wait() {
  try {
    device::synchronize(Device::CUDA);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaIndexErrors, ABadTokenIdIsRaisedAtTheNextWaitAndSkipped) {
  REQUIRE_GPU();
  ASSERT_EQ(error_at_next_wait(), "");
  const Tensor table = device_filled({5, 4}, 1.0f), ids = device_ints({2, 7, -1});
  Tensor out = device_filled({3, 4}, 9.0f);
  ops::embedding_forward(table, ids.i32(), 3, out);  // queued: no copy back, no throw
  const std::string msg = error_at_next_wait();
  EXPECT_NE(msg.find("token id 7 at position 1 is outside the vocabulary of 5"), std::string::npos)
      << msg;
  const Tensor host = out.to(Device::CPU);
  for (int c = 0; c < 4; ++c) {
    EXPECT_EQ(host.f32()[c], 1.0f) << "a good row is looked up";
    EXPECT_EQ(host.f32()[4 + c], 0.0f) << "the bad id's row is zero, not a read out of bounds";
    EXPECT_EQ(host.f32()[8 + c], 0.0f) << "-1 is no token";
  }
  EXPECT_EQ(error_at_next_wait(), "") << "the record is cleared once raised";

  Tensor d_table = device_filled({5, 4}, 0.0f);
  const Tensor d_out = device_filled({3, 4}, 1.0f), bad = device_ints({1, -2, 4});
  ops::embedding_backward(bad.i32(), 3, d_out, d_table);
  EXPECT_NE(error_at_next_wait().find("token id -2 at position 1"), std::string::npos);
  const Tensor grad = d_table.to(Device::CPU);
  EXPECT_EQ(grad.f32()[1 * 4], 1.0f);
  EXPECT_EQ(grad.f32()[4 * 4], 1.0f);
}

TEST(CudaIndexErrors, ABadPositionIsRaisedAndItsRowLeftAsItIs) {
  REQUIRE_GPU();
  ASSERT_EQ(error_at_next_wait(), "");
  // Two rows of one head, rope over all 4 values; tables of 3 positions.
  Tensor x = device_filled({2, 4}, 1.0f);
  const Tensor cos = device_filled({3, 2}, 0.0f), sin = device_filled({3, 2}, 1.0f);
  const Tensor pos = device_ints({1, 3});
  ops::rope_forward(x.f32(), {2, 1, 4, 0, 4}, pos.i32(), cos, sin);
  const std::string msg = error_at_next_wait();
  EXPECT_NE(msg.find("rope: position 3 at row 1 is outside the table of 3 positions"),
            std::string::npos)
      << msg;
  const Tensor host = x.to(Device::CPU);
  EXPECT_EQ(host.f32()[0], -1.0f) << "row 0 rotated by 90 degrees: (1, 1) -> (-1, 1)";
  EXPECT_EQ(host.f32()[4], 1.0f) << "row 1 untouched";
}

TEST(CudaIndexErrors, CrossEntropyRaisesABadTargetFromItsOwnWaitAndTheFirstErrorWins) {
  REQUIRE_GPU();
  ASSERT_EQ(error_at_next_wait(), "");
  const Tensor logits = device_filled({2, 3}, 0.5f);
  const Tensor targets = device_ints({0, 3});
  try {
    ops::cross_entropy(logits, targets.i32(), 1.0, nullptr);
    ADD_FAILURE() << "a target of 3 in a vocabulary of 3 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cross_entropy: target 3 at row 1 is outside the "
                                         "vocabulary of 3"),
              std::string::npos)
        << e.what();
  }
  // Two bad calls before a wait: the first one's error is the one raised.
  const Tensor table = device_filled({5, 4}, 1.0f), bad_ids = device_ints({6});
  Tensor out = device_filled({1, 4}, 0.0f);
  ops::embedding_forward(table, bad_ids.i32(), 1, out);
  EXPECT_THROW(ops::cross_entropy(logits, targets.i32(), 1.0, nullptr), Error);
  EXPECT_EQ(error_at_next_wait(), "") << "one raise clears the record";
  ops::embedding_forward(table, bad_ids.i32(), 1, out);
  try {
    ops::cross_entropy(logits, targets.i32(), 1.0, nullptr);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 6"), std::string::npos)
        << "the embedding came first: " << e.what();
  }
}

}  // namespace
}  // namespace dsv3
