// The routed experts' grouped products run other ways against the same cuBLAS calls one after
// another on the main stream (DSV3_GROUPED_GEMM=0): the forward, the input gradient and the
// accumulated weight gradient, with float32 and BF16 weights.
// - Spread over side streams (streams): bit for bit. Each product is the same call either way;
//   what this checks is the ordering: the products start after the work queued before them
//   (the inputs are written just before) and everything after waits for all of them (the
//   results are read at once).
// - As batched products over the groups cut into chunks of one height (padded, the default;
//   grouped_padded.h: whole chunks in place, the tails padded): other cuBLAS kernels, so equal within float32 summation differences on a
//   GPU (and bit for bit in the emulation, whose products sum in one order); the weight
//   gradients of empty groups untouched, bit for bit.
// - padded-kernel: the padded products with the weight gradients through dsv3's grouped kernel.
// - With BF16 outputs (y and d_x: mixed precision stores the routed experts' outputs and input
//   gradients so), every way writes its float32 sums rounded.
// Part of dsv3_gpu_tests and of the emulated tests.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/device.h"
#include "scoped_env.h"
#include "kernels/cuda/scratch.h"
#include "kernels/op_cases.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {

using test::ScopedEnv;

constexpr int64_t kGroups = 32, kIn = 96, kOut = 72;

struct Results {
  std::vector<Tensor> host;  // y, d_x, then each group's d_w
};

Tensor device_randn(const Shape& shape, uint64_t seed, DType dtype = DType::F32) {
  optest::Rng rng(seed);
  const Tensor h = optest::randn(shape, rng);
  Tensor d = h.to(Device::CUDA);
  if (dtype == DType::F32) return d;
  Tensor b = Tensor::zeros(shape, dtype, Device::CUDA);
  ops::convert(d, b);
  return b;
}

// The three products over 32 experts with uneven rows (some empty), under `mode`, y and d_x in
// `out_dtype`. The inputs are made on the device right before, and the outputs copied back
// right after.
Results run(const char* mode, DType wt, DType out_dtype = DType::F32) {
  const ScopedEnv scoped("DSV3_GROUPED_GEMM", mode);
  const int64_t groups = kGroups, in = kIn, out = kOut;
  std::vector<int64_t> off{0};
  for (int64_t g = 0; g < groups; ++g) off.push_back(off.back() + (g % 7 == 3 ? 0 : (g * 29 + 5) % 83));
  const int64_t rows = off.back();
  std::vector<Tensor> w_dev, d_w;
  std::vector<const Tensor*> w;
  std::vector<Tensor*> d_w_ptrs;
  for (int64_t g = 0; g < groups; ++g) {
    w_dev.push_back(device_randn({out, in}, 100 + uint64_t(g), wt));
    d_w.push_back(device_randn({out, in}, 200 + uint64_t(g)));  // accumulated into
  }
  for (const Tensor& t : w_dev) w.push_back(&t);
  for (Tensor& t : d_w) d_w_ptrs.push_back(&t);
  const Tensor x = device_randn({rows, in}, 1), d_y = device_randn({rows, out}, 2);
  Tensor y = Tensor::zeros({rows, out}, out_dtype, Device::CUDA);
  Tensor d_x = Tensor::zeros({rows, in}, out_dtype, Device::CUDA);
  ops::grouped_linear_forward(x, w, off.data(), y);
  ops::grouped_linear_backward(x, w, d_y, off.data(), &d_x, d_w_ptrs);
  Results r;
  r.host.push_back(y.to(Device::CPU));
  r.host.push_back(d_x.to(Device::CPU));
  for (const Tensor& t : d_w) r.host.push_back(t.to(Device::CPU));
  return r;
}

// The weight gradients `run` starts from (its other inputs are not outputs).
Results run_inputs_only() {
  Results r;
  r.host.resize(2);
  for (int64_t g = 0; g < kGroups; ++g)
    r.host.push_back(device_randn({kOut, kIn}, 200 + uint64_t(g)).to(Device::CPU));
  return r;
}

class CudaGroupedStreams : public ::testing::TestWithParam<DType> {};

TEST_P(CudaGroupedStreams, EqualTheLoopOnTheMainStream) {
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device";
  const Results loop = run("0", GetParam()), side = run("streams", GetParam());
  ASSERT_EQ(loop.host.size(), side.host.size());
  for (size_t i = 0; i < loop.host.size(); ++i) {
    const char* what = i == 0 ? "y" : i == 1 ? "d_x" : "d_w";
    ASSERT_EQ(loop.host[i].nbytes(), side.host[i].nbytes()) << what;
    EXPECT_EQ(std::memcmp(loop.host[i].data(), side.host[i].data(), loop.host[i].nbytes()), 0)
        << what << (i >= 2 ? " of group " + std::to_string(i - 2) : std::string());
  }
}

INSTANTIATE_TEST_SUITE_P(Weights, CudaGroupedStreams, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// Largest |a - b| over the largest |b|, and whether every value of a is finite.
double relative_difference(const Tensor& a, const Tensor& b, bool& finite) {
  const float* x = a.f32();
  const float* y = b.f32();
  double diff = 0.0, scale = 0.0;
  finite = true;
  for (int64_t i = 0; i < a.numel(); ++i) {
    finite = finite && std::isfinite(x[i]);
    diff = std::max(diff, std::fabs(double(x[i]) - double(y[i])));
    scale = std::max(scale, std::fabs(double(y[i])));
  }
  return scale > 0.0 ? diff / scale : diff;
}

TEST(CudaGroupedPadded, EqualsTheLoopAndLeavesEmptyGroupsAlone) {
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device";
  // The groups of `run` have 0 to 79 rows: a tail only at the default height and at 80 rows;
  // at 16 rows up to four whole chunks read and written in place and a tail topped up with
  // zero rows, and one group of exactly 16 rows (a whole chunk, no tail).
  const Results loop = run("0", DType::BF16), by_default = run("", DType::BF16);
  const Results before = run_inputs_only();
  for (const char* height : {"16", "80"}) {
    const ScopedEnv scoped("DSV3_GROUPED_CHUNK_ROWS", height);
    const Results padded = run("padded", DType::BF16);
    ASSERT_EQ(loop.host.size(), padded.host.size());
    for (size_t i = 0; i < loop.host.size(); ++i) {
      const std::string what = std::string(height) + "-row chunks: " +
                               (i == 0 ? "y" : i == 1 ? "d_x" : "d_w of group " + std::to_string(i - 2));
      if (i >= 2 && (i - 2) % 7 == 3) {  // an empty group: d_w as it was, bit for bit
        EXPECT_EQ(std::memcmp(padded.host[i].data(), before.host[i].data(), padded.host[i].nbytes()), 0)
            << what;
        continue;
      }
      bool finite = false;
      // Both sum float32 products of the same BF16 values; cuBLAS's kernels may order the sums
      // differently (a relative 1e-6 or so), while a wrong row or group is off by its own size.
      EXPECT_LE(relative_difference(padded.host[i], loop.host[i], finite), 1e-4) << what;
      EXPECT_TRUE(finite) << what;
    }
  }
  // The default is the padded path: in the emulation, whose products sum in one order, it is
  // the loop bit for bit at any chunk height; on a GPU within the tolerance above.
  for (size_t i = 0; i < loop.host.size(); ++i) {
    bool finite = false;
    EXPECT_LE(relative_difference(by_default.host[i], loop.host[i], finite), 1e-4) << i;
  }
}

// padded-kernel: the forward and the input gradient are the default's batched products and the
// weight gradients dsv3's grouped kernel, each bit for bit what that way alone gives (both are
// deterministic: no product depends on which other products share its launch).
TEST(CudaGroupedPadded, PaddedKernelTakesEachProductFromItsWay) {
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device";
  const Results padded = run("padded", DType::BF16), kernel = run("kernel", DType::BF16);
  const Results mixed = run("padded-kernel", DType::BF16), before = run_inputs_only();
  ASSERT_EQ(mixed.host.size(), padded.host.size());
  for (size_t i = 0; i < mixed.host.size(); ++i) {
    const bool weight_gradient = i >= 2;
    const Results& want = weight_gradient ? kernel : padded;
    const std::string what = i == 0 ? "y" : i == 1 ? "d_x" : "d_w of group " + std::to_string(i - 2);
    EXPECT_EQ(std::memcmp(mixed.host[i].data(), want.host[i].data(), mixed.host[i].nbytes()), 0)
        << what << " differs from " << (weight_gradient ? "kernel" : "padded");
    if (weight_gradient && (i - 2) % 7 == 3) {  // an empty group: d_w as it was
      EXPECT_EQ(std::memcmp(mixed.host[i].data(), before.host[i].data(), mixed.host[i].nbytes()), 0)
          << what;
    }
  }
  // The ways differ somewhere, or the comparisons above could not tell them apart.
  bool any_differs = false;
  for (size_t i = 2; i < mixed.host.size(); ++i)
    any_differs = any_differs || std::memcmp(kernel.host[i].data(), padded.host[i].data(),
                                             kernel.host[i].nbytes()) != 0;
  EXPECT_TRUE(any_differs) << "the kernel's weight gradients equal the cuBLAS loop's bit for bit";
}

// BF16 bits of v rounded to nearest even (what the conversion op writes).
uint16_t bf16_bits(float v) {
  uint32_t u = 0;
  std::memcpy(&u, &v, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// The BF16 y and d_x of each way are its float32 ones rounded: bit for bit in the emulation
// (one summation order); on a GPU cuBLAS may pick another kernel for a BF16 output, whose sums
// can land on the neighbouring BF16 value, and no further.
TEST(CudaGroupedPadded, Bf16OutputsAreTheFloat32SumsRounded) {
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device";
  for (const char* mode : {"0", "padded", "cublas", "streams", "kernel", "padded-kernel"}) {
    for (const char* height : {"16", "128"}) {
      const ScopedEnv scoped("DSV3_GROUPED_CHUNK_ROWS", height);
      const Results f32 = run(mode, DType::BF16), bf16 = run(mode, DType::BF16, DType::BF16);
      for (size_t i = 0; i < 2; ++i) {
        const Tensor& want = f32.host[i];
        const uint16_t* got = bf16.host[i].bf16();
        int64_t off_by_one = 0, further = 0;
        for (int64_t j = 0; j < want.numel(); ++j) {
          const int diff = std::abs(int(got[j]) - int(bf16_bits(want.f32()[j])));
          off_by_one += diff == 1;
          further += diff > 1;
        }
        const std::string what = std::string(mode) + ", " + height + "-row chunks, " +
                                 (i == 0 ? "y" : "d_x");
        EXPECT_EQ(further, 0) << what;
#ifdef DSV3_CUDA_EMULATION
        EXPECT_EQ(off_by_one, 0) << what;
#endif
      }
      // The weight gradients stay float32 and do not depend on the outputs' dtype.
      for (size_t i = 2; i < f32.host.size(); ++i)
        EXPECT_EQ(std::memcmp(f32.host[i].data(), bf16.host[i].data(), f32.host[i].nbytes()), 0)
            << mode << ", d_w of group " << i - 2;
    }
  }
}

TEST(CudaGroupedPadded, ABadChunkHeightIsAClearError) {
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device";
  const ScopedEnv scoped("DSV3_GROUPED_CHUNK_ROWS", "100");
  try {
    run("padded", DType::BF16);
    FAIL() << "DSV3_GROUPED_CHUNK_ROWS=100 was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("DSV3_GROUPED_CHUNK_ROWS=100"), std::string::npos) << e.what();
  }
}

// The padded path asks the ops' scratch for the same sizes whatever the routing: after one
// call, another over the same rows cut into many more chunks allocates nothing.
TEST(CudaGroupedPadded, RoutingDoesNotGrowTheScratch) {
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device";
  const ScopedEnv mode("DSV3_GROUPED_GEMM", "padded");
  const ScopedEnv height("DSV3_GROUPED_CHUNK_ROWS", "8");
  const int64_t groups = 16, rows = 256, in = 16, out = 8;
  std::vector<Tensor> w_dev;
  std::vector<const Tensor*> w;
  for (int64_t g = 0; g < groups; ++g) w_dev.push_back(device_randn({out, in}, 300 + uint64_t(g), DType::BF16));
  for (const Tensor& t : w_dev) w.push_back(&t);
  const Tensor x = device_randn({rows, in}, 3);
  Tensor y = Tensor::zeros({rows, out}, DType::F32, Device::CUDA);
  std::vector<int64_t> one_group(groups + 1, rows), even(groups + 1);
  one_group[0] = 0;  // every row in group 0: 32 chunks
  for (int64_t g = 0; g <= groups; ++g) even[g] = g * rows / groups;  // 16 rows each: 32 chunks
  std::vector<int64_t> ragged{0};  // 9 rows each but the last: 2 chunks each, 46 in all
  for (int64_t g = 0; g < groups - 1; ++g) ragged.push_back(ragged.back() + 9);
  ragged.push_back(rows);
  ops::grouped_linear_forward(x, w, one_group.data(), y);
  ops::grouped_linear_forward(x, w, one_group.data(), y);  // the buffer has grown to its peak
  device::synchronize(Device::CUDA);
  const uint64_t allocations = cuda::scratch_allocations();
  ops::grouped_linear_forward(x, w, even.data(), y);
  ops::grouped_linear_forward(x, w, ragged.data(), y);
  device::synchronize(Device::CUDA);
  EXPECT_EQ(cuda::scratch_allocations(), allocations);
}

TEST(CudaGroupedStreams, AnUnknownModeIsAClearError) {
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device";
  const ScopedEnv scoped("DSV3_GROUPED_GEMM", "stream");
  const Tensor x = device_randn({4, 8}, 1), w0 = device_randn({8, 8}, 2);
  const std::vector<const Tensor*> w{&w0, &w0};
  const int64_t off[] = {0, 2, 4};
  Tensor y = Tensor::zeros({4, 8}, DType::F32, Device::CUDA);
  try {
    ops::grouped_linear_forward(x, w, off, y);
    FAIL() << "DSV3_GROUPED_GEMM=stream was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("DSV3_GROUPED_GEMM=stream"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dsv3
