// The op-test table under GoogleTest (kernels/op_cases.h): every op on every backend against the
// float64 reference on random shapes (test mode), and every backward, fast and reference,
// against central differences (grad mode). Set DSV3_OPTEST_LOG=1 to print every comparison.
#include <cstdlib>
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "kernels/op_cases.h"

namespace dsv3::optest {
namespace {

bool verbose() { return std::getenv("DSV3_OPTEST_LOG") != nullptr; }

uint64_t seed_of(const std::string& name) { return std::hash<std::string>{}(name) & 0xffffffff; }

// ---- The comparison itself must fail on what it is meant to catch ----

TEST(OpCompare, PassesWithinToleranceFailsBeyond) {
  Tensor ref = Tensor::zeros({4}), fast = Tensor::zeros({4});
  for (int i = 0; i < 4; ++i) ref.f32()[i] = fast.f32()[i] = float(i + 1);
  EXPECT_TRUE(compare("x", fast, ref, {1e-6, 0}).ok);
  fast.f32()[2] = 3.001f;
  EXPECT_FALSE(compare("x", fast, ref, {1e-6, 0}).ok);
  EXPECT_TRUE(compare("x", fast, ref, {1e-3, 0}).ok);
}

TEST(OpCompare, NaNAndInfinityNeverPass) {
  Tensor ref = Tensor::zeros({3}), fast = Tensor::zeros({3});
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  fast.f32()[1] = nan;
  EXPECT_FALSE(compare("x", fast, ref, {1e9, 1e9}).ok);
  fast.f32()[1] = 0;
  ref.f32()[1] = nan;  // a NaN in the reference is no licence either
  EXPECT_FALSE(compare("x", fast, ref, {1e9, 1e9}).ok);
  fast.f32()[1] = ref.f32()[1] = inf;
  EXPECT_FALSE(compare("x", fast, ref, {1e9, 1e9}).ok);
}

TEST(OpCompare, ExactToleranceRejectsOneUlp) {
  Tensor ref = Tensor::zeros({1}), fast = Tensor::zeros({1});
  ref.f32()[0] = 1.0f;
  fast.f32()[0] = std::nextafter(1.0f, 2.0f);
  EXPECT_FALSE(compare("x", fast, ref, {0, 0}).ok);
}

// ---- Test mode ----

struct OpParam {
  size_t index;
  Backend backend;
};

void PrintTo(const OpParam& p, std::ostream* os) {
  *os << op_cases()[p.index].name << " on " << backend_name(p.backend);
}

class OpTestMode : public ::testing::TestWithParam<OpParam> {};

TEST_P(OpTestMode, FastMatchesReference) {
  if (std::string why = backend_unusable(GetParam().backend); !why.empty()) GTEST_SKIP() << why;
  const OpCase& c = op_cases()[GetParam().index];
  Rng rng(seed_of(c.name));
  uint64_t seed = seed_of(c.name);
  const auto shapes = c.shapes(rng);
  ASSERT_FALSE(shapes.empty());
  for (const Dims& dims : shapes) {
    TestResult r = run_test(c, GetParam().backend, dims, ++seed);
    EXPECT_TRUE(r.ok) << "tolerance: " << c.why << "\n" << r.log;
    if (verbose()) std::fputs(r.log.c_str(), stdout);
  }
}

std::vector<OpParam> op_params() {
  std::vector<OpParam> params;
  for (Backend b : available_backends())
    for (size_t i = 0; i < op_cases().size(); ++i) params.push_back({i, b});
  return params;
}

INSTANTIATE_TEST_SUITE_P(Ops, OpTestMode, ::testing::ValuesIn(op_params()),
                         [](const ::testing::TestParamInfo<OpParam>& info) {
                           return op_cases()[info.param.index].name + "_" +
                                  std::string(backend_name(info.param.backend));
                         });

// ---- Grad mode ----

struct GradParam {
  size_t index;
  bool reference;   // the reference backward (the oracle must be right too)
  Backend backend;  // else the fast backward on this backend
};

void PrintTo(const GradParam& p, std::ostream* os) {
  *os << grad_cases()[p.index].name << " "
      << (p.reference ? std::string("reference") : std::string(backend_name(p.backend)));
}

class OpGradMode : public ::testing::TestWithParam<GradParam> {};

TEST_P(OpGradMode, BackwardMatchesFiniteDifferences) {
  const GradCase& c = grad_cases()[GetParam().index];
  const GradParam param = GetParam();
  if (!param.reference)
    if (std::string why = backend_unusable(param.backend); !why.empty()) GTEST_SKIP() << why;
  uint64_t seed = seed_of(c.name);
  for (const Dims& dims : c.shapes) {
    Rng rng(++seed);
    Problem base = c.make(dims, rng);
    base.dims = dims;
    auto backward = [&](Problem& host) {
      if (param.reference) return c.backward(reference_ops(), host);
      // The fast backward on the backend; its gradients come back to the host.
      Problem dev = to_backend(host, param.backend);
      c.backward(fast_ops(), dev);
      for (const auto& name : c.wrt) host.tensors["d_" + name] = to_host(dev["d_" + name]);
    };
    TestResult r = check_gradients(base, c.wrt, c.loss, backward, c.tol, seed);
    std::string shape;
    for (int64_t d : dims) shape += std::to_string(d) + " ";
    EXPECT_TRUE(r.ok) << c.name << " [" << shape << "]\n" << r.log;
    if (verbose()) std::printf("%s [%s]\n%s", c.name.c_str(), shape.c_str(), r.log.c_str());
  }
}

std::vector<GradParam> grad_params() {
  std::vector<GradParam> params;
  for (size_t i = 0; i < grad_cases().size(); ++i) {
    params.push_back({i, true, Backend::CPU});
    for (Backend b : available_backends()) params.push_back({i, false, b});
  }
  return params;
}

INSTANTIATE_TEST_SUITE_P(Ops, OpGradMode, ::testing::ValuesIn(grad_params()),
                         [](const ::testing::TestParamInfo<GradParam>& info) {
                           return grad_cases()[info.param.index].name + "_" +
                                  (info.param.reference
                                       ? std::string("reference")
                                       : std::string(backend_name(info.param.backend)));
                         });

}  // namespace
}  // namespace dsv3::optest
