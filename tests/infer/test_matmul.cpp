// The inference matrix products against a float64 reference: F32 and BF16 weights, every row
// count kernel (1..kSmallRows rows streamed, more rows through the GEMM), shapes with tails, the
// per-row bit-for-bit independence of the streaming kernel, and job lists.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "infer/matmul.h"

namespace {
using namespace dsv3;
using namespace dsv3::infer;

struct Weights {
  std::vector<float> f32;      // [rows, ld]
  std::vector<uint16_t> bf16;  // [rows, ld], the same values rounded
  int64_t rows, cols, ld;
  MatRef ref(DType dt) const {
    return {dt == DType::F32 ? static_cast<const void*>(f32.data()) : bf16.data(), dt, rows, cols,
            ld};
  }
};

Weights make_weights(int64_t rows, int64_t cols, int64_t ld, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  Weights w{{}, {}, rows, cols, ld};
  w.f32.resize(size_t(rows * ld));
  w.bf16.resize(size_t(rows * ld));
  for (size_t i = 0; i < w.f32.size(); ++i) {
    w.bf16[i] = f32_to_bf16(n(rng));
    w.f32[i] = bf16_to_f32(w.bf16[i]);  // the same values in both dtypes
  }
  return w;
}

std::vector<float> make_x(int64_t m, int64_t ld, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(size_t(m * ld));
  for (float& v : x) v = n(rng);
  return x;
}

// The activations a product of this kind sees: BF16 weights round them to BF16 (the streaming
// kernel with AVX512-BF16 and the GEMM) except where the kernel widens the weights instead.
float seen(float v, bool rounded) { return rounded ? bf16_to_f32(f32_to_bf16(v)) : v; }

// Largest |got - ref| / sum |x||w| over all outputs (the scale of the accumulated magnitudes).
double check_wt(const float* x, int64_t m, int64_t ldx, const Weights& w, const float* y,
                int64_t ldy, bool rounded) {
  double worst = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t r = 0; r < w.rows; ++r) {
      double ref = 0, mag = 0;
      for (int64_t c = 0; c < w.cols; ++c) {
        const double a = seen(x[i * ldx + c], rounded), b = w.f32[size_t(r * w.ld + c)];
        ref += a * b;
        mag += std::fabs(a * b);
      }
      worst = std::max(worst, std::fabs(y[i * ldy + r] - ref) / mag);
    }
  return worst;
}

bool bf16_rounds_activations(int64_t m) {
#if defined(__AVX512BF16__)
  (void)m;
  return true;
#else
  return m > kSmallRows;
#endif
}

// The many-row BF16 products both ways: oneDNN's BF16 matmul where this CPU has one (AVX-512)
// and the widened weights through the F32 GEMM (what CPUs without AVX-512 run).
class BF16GemmWay : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { force_widened_bf16_gemm(GetParam()); }
  void TearDown() override { force_widened_bf16_gemm(false); }
};
INSTANTIATE_TEST_SUITE_P(Matmul, BF16GemmWay, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Widened" : "AsTheCpuHas"; });

TEST_P(BF16GemmWay, LinearMatchesFloat64ForEveryRowKernel) {
  // cols 200: 6 full 32-wide steps and a tail of 8; rows 37: blocks of 4 and 2 and a remainder.
  // 300 outputs (with m > kSmallRows) are a whole 256-output block and a part of one widened.
  for (const int64_t rows : {37, 300}) {
    const int64_t cols = 200, ld = 208;
    const Weights w = make_weights(rows, cols, ld, 1);
    for (DType dt : {DType::F32, DType::BF16})
      for (int64_t m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 24}) {
        const int64_t ldx = cols + 5, ldy = rows + 3;
        const std::vector<float> x = make_x(m, ldx, uint32_t(10 + m));
        std::vector<float> y(size_t(m * ldy), 0.0f);
        matmul_wt(x.data(), m, ldx, w.ref(dt), y.data(), ldy);
        const bool rounded = dt == DType::BF16 && bf16_rounds_activations(m);
        EXPECT_LE(check_wt(x.data(), m, ldx, w, y.data(), ldy, rounded), 1e-6)
            << dtype_name(dt) << " m=" << m;
        // accumulate adds to what is there.
        std::vector<float> y2 = y;
        matmul_wt(x.data(), m, ldx, w.ref(dt), y2.data(), ldy, true);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t r = 0; r < rows; ++r)
            EXPECT_NEAR(y2[size_t(i * ldy + r)], 2 * y[size_t(i * ldy + r)],
                        1e-5 * (1 + std::fabs(y[size_t(i * ldy + r)])));
      }
  }
}

TEST(Matmul, StreamedRowsDoNotDependOnTheirNeighbours) {
  const Weights w = make_weights(50, 130, 130, 2);
  for (DType dt : {DType::F32, DType::BF16}) {
    const std::vector<float> x = make_x(kSmallRows, 130, 3);
    std::vector<float> all(size_t(kSmallRows * 50));
    matmul_wt(x.data(), kSmallRows, 130, w.ref(dt), all.data(), 50);
    for (int64_t m = 1; m <= kSmallRows; ++m) {
      std::vector<float> some(size_t(m * 50));
      matmul_wt(x.data(), m, 130, w.ref(dt), some.data(), 50);
      for (size_t i = 0; i < some.size(); ++i)
        ASSERT_EQ(some[i], all[i]) << dtype_name(dt) << " m=" << m << " output " << i;
    }
  }
}

TEST(Matmul, JobsEqualSeparateProducts) {
  const Weights a = make_weights(40, 96, 96, 4), b = make_weights(70, 64, 64, 5);
  for (int64_t m : {1, 3, 12}) {
    const std::vector<float> xa = make_x(m, 96, 6), xb = make_x(m, 64, 7);
    std::vector<float> ya(size_t(m * 40)), yb(size_t(m * 70)), ja(ya.size()), jb(yb.size());
    matmul_wt(xa.data(), m, 96, a.ref(DType::BF16), ya.data(), 40);
    matmul_wt(xb.data(), m, 64, b.ref(DType::F32), yb.data(), 70);
    // Enough jobs to take the one-job-per-thread path of many-row products too.
    std::vector<GemvJob> jobs;
    jobs.push_back({xa.data(), m, 96, a.ref(DType::BF16), ja.data(), 40});
    jobs.push_back({xb.data(), m, 64, b.ref(DType::F32), jb.data(), 70});
    // 2 + 2 * threads jobs: at least twice the threads, whatever their number.
    std::vector<std::vector<float>> extra(size_t(2 * omp_get_max_threads()),
                                          std::vector<float>(size_t(m * 40)));
    for (auto& e : extra) jobs.push_back({xa.data(), m, 96, a.ref(DType::BF16), e.data(), 40});
    matmul_wt_jobs(jobs);
    EXPECT_EQ(ja, ya) << "m=" << m;
    EXPECT_EQ(jb, yb) << "m=" << m;
    for (auto& e : extra) EXPECT_EQ(e, ya) << "m=" << m;
  }
}

TEST_P(BF16GemmWay, PlainProductMatchesFloat64) {
  // y = x . w with w [rows, cols] (the query absorption): cols 160 is one 128-wide register
  // block and a remainder of 32; 300 (with m > kSmallRows) a whole 256-output block and a part
  // of one widened.
  for (const int64_t cols : {160, 300}) {
    const int64_t rows = 48;
    const Weights w = make_weights(rows, cols, cols + 16, 8);
    for (DType dt : {DType::F32, DType::BF16})
      for (int64_t m : {1, 2, 8, 9, 20}) {
        const int64_t ldx = rows + 2, ldy = cols + 4;
        const std::vector<float> x = make_x(m, ldx, uint32_t(20 + m));
        std::vector<float> y(size_t(m * ldy));
        matmul_w(x.data(), m, ldx, w.ref(dt), y.data(), ldy);
        const bool rounded = dt == DType::BF16 && m > kSmallRows;  // the GEMM rounds them
        double worst = 0;
        for (int64_t i = 0; i < m; ++i)
          for (int64_t c = 0; c < cols; ++c) {
            double ref = 0, mag = 0;
            for (int64_t r = 0; r < rows; ++r) {
              const double p =
                  double(seen(x[size_t(i * ldx + r)], rounded)) * w.f32[size_t(r * w.ld + c)];
              ref += p;
              mag += std::fabs(p);
            }
            worst = std::max(worst, std::fabs(y[size_t(i * ldy + c)] - ref) / mag);
          }
        EXPECT_LE(worst, 1e-6) << dtype_name(dt) << " m=" << m;
      }
  }
}

}  // namespace
