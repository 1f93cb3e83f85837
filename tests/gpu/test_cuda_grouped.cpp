// The grouped linear ops on a GPU against a loop of the per-group linear ops on the same GPU:
// an MoE layer's 32 experts with uneven loads, empty experts included, with float32 weights and
// with BF16 weights (mixed precision: float32 activations rounded to BF16 once for all groups
// by the grouped ops, per group by the loop; the same values either way). Part of
// dsv3_gpu_tests (see test_cuda.cpp); without a device it fails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/device.h"
#include "kernels/op_cases.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {

using optest::compare;
using optest::Tolerance;

Tensor host_randn(const Shape& shape, uint64_t seed) {
  optest::Rng rng(seed);
  return optest::randn(shape, rng);
}

Tensor to_bf16(const Tensor& t) {
  Tensor b = Tensor::zeros(t.shape(), DType::BF16);
  convert_from_f32(t.f32(), DType::BF16, b.data(), size_t(t.numel()));
  return b;
}

Tensor nan_on_device(const Shape& shape) {
  return optest::filled(shape, std::nanf("")).to(Device::CUDA);
}

void expect_all_finite(const Tensor& t, const char* what) {
  Tensor h = t.to(Device::CPU);
  int64_t bad = 0;
  for (int64_t i = 0; i < h.numel(); ++i) bad += std::isfinite(h.f32()[i]) ? 0 : 1;
  EXPECT_EQ(bad, 0) << what << ": elements left unwritten (NaN) or not finite";
}

class CudaGroupedLinear : public ::testing::TestWithParam<DType> {};

TEST_P(CudaGroupedLinear, MatchesAPerGroupLoopOfLinearOps) {
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device";
  const DType wt = GetParam();
  const int64_t groups = 32, in = 200, out = 136;
  // Uneven loads: empty groups (first, last, inside, two in a row), single rows, large groups.
  std::vector<int64_t> sizes(groups);
  for (int64_t g = 0; g < groups; ++g) sizes[size_t(g)] = (g * 37 + 11) % 97;
  for (int64_t g : {0, 5, 6, 17, 31}) sizes[size_t(g)] = 0;
  sizes[3] = 1;
  sizes[20] = 300;
  std::vector<int64_t> off{0};
  for (int64_t s : sizes) off.push_back(off.back() + s);
  const int64_t rows = off.back();

  const Tensor x = host_randn({rows, in}, 1).to(Device::CUDA);
  const Tensor d_y = host_randn({rows, out}, 2).to(Device::CUDA);
  std::vector<Tensor> w_dev, d_w_init;
  std::vector<const Tensor*> w;
  for (int64_t g = 0; g < groups; ++g) {
    const Tensor h = host_randn({out, in}, 100 + uint64_t(g));
    w_dev.push_back((wt == DType::BF16 ? to_bf16(h) : h).to(Device::CUDA));
    d_w_init.push_back(host_randn({out, in}, 200 + uint64_t(g)));
  }
  for (const Tensor& t : w_dev) w.push_back(&t);

  // Forward.
  Tensor y_grouped = nan_on_device({rows, out}), y_loop = nan_on_device({rows, out});
  ops::grouped_linear_forward(x, w, off.data(), y_grouped);
  for (int64_t g = 0; g < groups; ++g) {
    if (sizes[size_t(g)] == 0) continue;
    Tensor yg = y_loop.slice_rows(off[size_t(g)], off[size_t(g) + 1]);
    ops::linear_forward(x.slice_rows(off[size_t(g)], off[size_t(g) + 1]), *w[size_t(g)], yg);
  }
  expect_all_finite(y_grouped, "y");
  // The same products on the same (BF16-rounded) values, summed in float32 in an order the
  // library picks per call: the difference is float32 rounding of sums of `in` terms.
  const Tolerance tol{2e-5, 2e-5};
  auto c = compare("y", y_grouped, y_loop, tol);
  EXPECT_TRUE(c.ok) << c.message;

  // Backward: d_x poisoned, d_w accumulated into (empty groups' must stay as they were).
  Tensor dx_grouped = nan_on_device({rows, in}), dx_loop = nan_on_device({rows, in});
  std::vector<Tensor> dw_grouped, dw_loop;
  std::vector<Tensor*> dw_ptrs;
  for (const Tensor& t : d_w_init) {
    dw_grouped.push_back(t.to(Device::CUDA));
    dw_loop.push_back(t.to(Device::CUDA));
  }
  for (Tensor& t : dw_grouped) dw_ptrs.push_back(&t);
  ops::grouped_linear_backward(x, w, d_y, off.data(), &dx_grouped, dw_ptrs);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b = off[size_t(g)], e = off[size_t(g) + 1];
    if (b == e) continue;
    Tensor dxg = dx_loop.slice_rows(b, e);
    ops::linear_backward(x.slice_rows(b, e), *w[size_t(g)], d_y.slice_rows(b, e), &dxg,
                         &dw_loop[size_t(g)]);
  }
  expect_all_finite(dx_grouped, "d_x");
  c = compare("d_x", dx_grouped, dx_loop, tol);
  EXPECT_TRUE(c.ok) << c.message;
  for (int64_t g = 0; g < groups; ++g) {
    const Tensor got = dw_grouped[size_t(g)].to(Device::CPU);
    if (sizes[size_t(g)] == 0) {
      EXPECT_EQ(std::memcmp(got.data(), d_w_init[size_t(g)].data(), got.nbytes()), 0)
          << "d_w of empty group " << g << " was written";
      continue;
    }
    c = compare("d_w", got, dw_loop[size_t(g)], tol);
    EXPECT_TRUE(c.ok) << "group " << g << ": " << c.message;
  }

  // Without d_x: only the weight gradients move.
  std::vector<Tensor> dw_again;
  std::vector<Tensor*> dw_again_ptrs;
  for (const Tensor& t : d_w_init) dw_again.push_back(t.to(Device::CUDA));
  for (Tensor& t : dw_again) dw_again_ptrs.push_back(&t);
  ops::grouped_linear_backward(x, w, d_y, off.data(), nullptr, dw_again_ptrs);
  for (int64_t g = 0; g < groups; ++g) {
    c = compare("d_w without d_x", dw_again[size_t(g)], dw_grouped[size_t(g)], {0, 0});
    EXPECT_TRUE(c.ok) << "group " << g << ": " << c.message;
  }
}

INSTANTIATE_TEST_SUITE_P(Weights, CudaGroupedLinear, ::testing::Values(DType::F32, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& i) {
                           return std::string(i.param == DType::BF16 ? "Bf16" : "F32");
                         });

}  // namespace
}  // namespace dsv3
