// The routed experts' grouped products spread over side streams (DSV3_GROUPED_GEMM=streams)
// against the same cuBLAS calls one after another on the main stream (DSV3_GROUPED_GEMM=0):
// the forward, the input gradient and the accumulated weight gradient, with float32 and BF16
// weights, bit for bit. Each product is the same call either way; what this checks is the
// ordering: the products start after the work queued before them (the inputs are written just
// before) and everything after waits for all of them (the results are read at once). Part of
// dsv3_gpu_tests and of the emulated tests.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/device.h"
#include "kernels/op_cases.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {

// DSV3_GROUPED_GEMM set for a scope, restored after.
class GroupedMode {
 public:
  explicit GroupedMode(const char* mode) {
    if (const char* v = std::getenv("DSV3_GROUPED_GEMM")) saved_ = v, had_ = true;
    setenv("DSV3_GROUPED_GEMM", mode, 1);
  }
  ~GroupedMode() {
    if (had_) setenv("DSV3_GROUPED_GEMM", saved_.c_str(), 1);
    else unsetenv("DSV3_GROUPED_GEMM");
  }

 private:
  std::string saved_;
  bool had_ = false;
};

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

// The three products over 32 experts with uneven rows (some empty), under `mode`. The inputs
// are made on the device right before, and the outputs copied back right after.
Results run(const char* mode, DType wt) {
  const GroupedMode scoped(mode);
  const int64_t groups = 32, in = 96, out = 72;
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
  Tensor y = Tensor::zeros({rows, out}, DType::F32, Device::CUDA);
  Tensor d_x = Tensor::zeros({rows, in}, DType::F32, Device::CUDA);
  ops::grouped_linear_forward(x, w, off.data(), y);
  ops::grouped_linear_backward(x, w, d_y, off.data(), &d_x, d_w_ptrs);
  Results r;
  r.host.push_back(y.to(Device::CPU));
  r.host.push_back(d_x.to(Device::CPU));
  for (const Tensor& t : d_w) r.host.push_back(t.to(Device::CPU));
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

TEST(CudaGroupedStreams, AnUnknownModeIsAClearError) {
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device";
  const GroupedMode scoped("stream");
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
