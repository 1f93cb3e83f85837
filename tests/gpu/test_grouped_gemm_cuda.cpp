// dsv3's grouped BF16 GEMM (kernels/cuda/grouped_gemm.cu, through cuda::blas_grouped_gemm_kernel)
// against a float64 product of the same BF16 values, in the three layouts the routed experts
// use: the forward (x W^T), the input gradient (d_y W) and the weight gradient (d_y^T x,
// accumulated into the existing gradient), with groups whose rows are not multiples of the
// 64-row tile, an empty group, and K not a multiple of the 32-wide step.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {

#define REQUIRE_GPU() \
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device"

// A [rows, cols] matrix of BF16 values, on the host (as float) and on the device (as BF16).
struct Matrix {
  int64_t rows = 0, cols = 0;
  std::vector<float> host;
  Tensor device;
  Matrix(int64_t r, int64_t c, std::mt19937_64& rng) : rows(r), cols(c), host(size_t(r * c)) {
    std::normal_distribution<float> dist;
    Tensor t = Tensor::zeros({r, c});
    for (size_t i = 0; i < host.size(); ++i) t.f32()[i] = dist(rng);
    Tensor b = Tensor::zeros({r, c}, DType::BF16, Device::CUDA);
    ops::convert(t.to(Device::CUDA), b);
    device = b;
    const Tensor back = [&] {
      Tensor f = Tensor::zeros({r, c}, DType::F32, Device::CUDA);
      ops::convert(b, f);
      return f.to(Device::CPU);
    }();
    for (size_t i = 0; i < host.size(); ++i) host[i] = back.f32()[i];
  }
  const void* row(int64_t r) const {
    return static_cast<const char*>(device.data()) + size_t(r * cols) * 2;
  }
  double at(int64_t r, int64_t c) const { return host[size_t(r * cols + c)]; }
};

// The routed experts' three products over groups of `rows` (x [R, in], weights [out, in] each,
// d_y [R, out]), run by the kernel and checked against float64.
void check_products(const std::vector<int64_t>& rows, int64_t in, int64_t out, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> off{0};
  for (int64_t r : rows) off.push_back(off.back() + r);
  const int64_t total = off.back(), groups = int64_t(rows.size());
  const Matrix x(total, in, rng), d_y(total, out, rng);
  std::vector<Matrix> w;
  for (int64_t g = 0; g < groups; ++g) w.emplace_back(out, in, rng);

  // Forward: y_g [r_g, out] = x_g W_g^T (A k-major, B [n][k]).
  {
    Tensor y = Tensor::zeros({total, out}, DType::F32, Device::CUDA);
    cuda::BlasGroupedGemm p;
    p.trans_b = true;
    p.lda = in, p.ldb = in, p.ldc = out;
    p.ab_type = CUDA_R_16BF;
    for (int64_t g = 0; g < groups; ++g) {
      p.m.push_back(rows[size_t(g)]), p.n.push_back(out), p.k.push_back(in);
      p.a.push_back(x.row(off[size_t(g)]));
      p.b.push_back(w[size_t(g)].device.data());
      p.c.push_back(y.f32() + off[size_t(g)] * out);
    }
    ASSERT_TRUE(cuda::blas_grouped_gemm_kernel(p, "forward"));
    const Tensor got = y.to(Device::CPU);
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t r = off[size_t(g)]; r < off[size_t(g) + 1]; ++r)
        for (int64_t o = 0; o < out; ++o) {
          double want = 0, mag = 0;
          for (int64_t i = 0; i < in; ++i) {
            want += x.at(r, i) * w[size_t(g)].at(o, i);
            mag += std::fabs(x.at(r, i) * w[size_t(g)].at(o, i));
          }
          ASSERT_NEAR(got.f32()[r * out + o], want, 1e-5 * mag + 1e-6)
              << "forward, group " << g << ", row " << r << ", column " << o;
        }
  }
  // Input gradient: d_x_g [r_g, in] = d_y_g W_g (A k-major, B [k][n]).
  {
    Tensor d_x = Tensor::zeros({total, in}, DType::F32, Device::CUDA);
    cuda::BlasGroupedGemm p;
    p.lda = out, p.ldb = in, p.ldc = in;
    p.ab_type = CUDA_R_16BF;
    for (int64_t g = 0; g < groups; ++g) {
      p.m.push_back(rows[size_t(g)]), p.n.push_back(in), p.k.push_back(out);
      p.a.push_back(d_y.row(off[size_t(g)]));
      p.b.push_back(w[size_t(g)].device.data());
      p.c.push_back(d_x.f32() + off[size_t(g)] * in);
    }
    ASSERT_TRUE(cuda::blas_grouped_gemm_kernel(p, "input gradient"));
    const Tensor got = d_x.to(Device::CPU);
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t r = off[size_t(g)]; r < off[size_t(g) + 1]; ++r)
        for (int64_t i = 0; i < in; ++i) {
          double want = 0, mag = 0;
          for (int64_t o = 0; o < out; ++o) {
            want += d_y.at(r, o) * w[size_t(g)].at(o, i);
            mag += std::fabs(d_y.at(r, o) * w[size_t(g)].at(o, i));
          }
          ASSERT_NEAR(got.f32()[r * in + i], want, 1e-5 * mag + 1e-6)
              << "input gradient, group " << g << ", row " << r << ", column " << i;
        }
  }
  // Weight gradient: d_w_g [out, in] += d_y_g^T x_g (A stored [k][m], B [k][n]), onto a
  // gradient that already holds values.
  {
    std::vector<Tensor> d_w;
    std::vector<std::vector<float>> before;
    cuda::BlasGroupedGemm p;
    p.trans_a = true;
    p.beta = 1.0f;
    p.lda = out, p.ldb = in, p.ldc = in;
    p.ab_type = CUDA_R_16BF;
    std::normal_distribution<float> dist;
    for (int64_t g = 0; g < groups; ++g) {
      Tensor init = Tensor::zeros({out, in});
      before.emplace_back(size_t(out * in));
      for (int64_t i = 0; i < out * in; ++i) init.f32()[i] = before.back()[size_t(i)] = dist(rng);
      d_w.push_back(init.to(Device::CUDA));
    }
    for (int64_t g = 0; g < groups; ++g) {
      if (rows[size_t(g)] == 0) continue;  // the callers skip empty groups (k 0)
      p.m.push_back(out), p.n.push_back(in), p.k.push_back(rows[size_t(g)]);
      p.a.push_back(d_y.row(off[size_t(g)]));
      p.b.push_back(x.row(off[size_t(g)]));
      p.c.push_back(d_w[size_t(g)].data());
    }
    ASSERT_TRUE(cuda::blas_grouped_gemm_kernel(p, "weight gradient"));
    for (int64_t g = 0; g < groups; ++g) {
      const Tensor got = d_w[size_t(g)].to(Device::CPU);
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) {
          double want = before[size_t(g)][size_t(o * in + i)], mag = std::fabs(want);
          for (int64_t r = off[size_t(g)]; r < off[size_t(g) + 1]; ++r) {
            want += d_y.at(r, o) * x.at(r, i);
            mag += std::fabs(d_y.at(r, o) * x.at(r, i));
          }
          ASSERT_NEAR(got.f32()[o * in + i], want, 1e-5 * mag + 1e-6)
              << "weight gradient, group " << g << ", " << o << ", " << i;
        }
    }
  }
}

TEST(CudaGroupedGemm, MatchesFloat64InEveryLayout) {
  REQUIRE_GPU();
  // Edge tiles in every direction, an empty group, K of 40 (two steps, the second partial).
  check_products({70, 0, 5, 64}, 40, 72, 1);
  // One group, sizes at the tile and step edges.
  check_products({129}, 64, 8, 2);
  // Several tiles along every dimension of every layout, the last of each partial.
  check_products({300, 130}, 136, 264, 3);
}

TEST(CudaGroupedGemm, DeclinesProductsItCannotRun) {
  REQUIRE_GPU();
  std::mt19937_64 rng(3);
  const Matrix a(16, 16, rng), b(16, 16, rng), narrow_a(16, 12, rng), narrow_b(16, 12, rng);
  Tensor c = Tensor::zeros({16, 16}, DType::F32, Device::CUDA);
  const auto product = [&] {  // one the kernel runs; each case below breaks one condition
    cuda::BlasGroupedGemm p;
    p.trans_b = true;
    p.lda = 16, p.ldb = 16, p.ldc = 16;
    p.ab_type = CUDA_R_16BF;
    p.m = {16}, p.n = {16}, p.k = {16};
    p.a = {a.device.data()}, p.b = {b.device.data()}, p.c = {c.data()};
    return p;
  };
  cuda::BlasGroupedGemm p = product();
  ASSERT_TRUE(cuda::blas_grouped_gemm_kernel(p, "test"));
  p.lda = 12, p.ldb = 12, p.k = {12};
  p.a = {narrow_a.device.data()}, p.b = {narrow_b.device.data()};
  EXPECT_FALSE(cuda::blas_grouped_gemm_kernel(p, "test")) << "rows of 12 are not 16-byte chunks";
  p = product();
  p.ab_type = CUDA_R_32F;
  EXPECT_FALSE(cuda::blas_grouped_gemm_kernel(p, "test")) << "float32 operands";
  p = product();
  p.alpha = 2.0f;
  EXPECT_FALSE(cuda::blas_grouped_gemm_kernel(p, "test")) << "alpha other than 1";
  p = product();
  p.c_type = CUDA_R_16BF;
  p.beta = 1.0f;
  EXPECT_FALSE(cuda::blas_grouped_gemm_kernel(p, "test")) << "a BF16 output accumulated into";
}

}  // namespace
}  // namespace dsv3
