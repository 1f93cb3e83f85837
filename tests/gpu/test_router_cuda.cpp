// The MoE router on a GPU (ops::route_forward, route_backward, moe_permute with CUDA tensors)
// against the CPU's loops (kernels/cpu/router.cpp), on random logits at several shapes and
// every routing variant: the same experts for every token, the same counts and permutation,
// and scores, gating weights, sequence sums and logit gradients to float32 rounding.
//
// The chosen experts are compared exactly. A GPU's expf may differ from the host's in the last
// bit, which could flip a choice only where two selection scores lie within about 1e-7 of each
// other: with continuous random logits, about one token in a million.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

#include "core/device.h"
#include "kernels/ops.h"

namespace dsv3 {
namespace {

#define REQUIRE_GPU() \
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device"

struct RouteCase {
  std::string name;
  ExpertSelection select;
  bool sigmoid, norm_topk, bias;
  double scaling, alpha;
  int64_t batch, seq;
  bool balance_only = false;  // d_weights zero: d_logits is the balance term's gradient alone
};

Tensor random(const Shape& shape, std::mt19937_64& rng, double stddev) {
  Tensor t = Tensor::zeros(shape);
  std::normal_distribution<float> dist(0.0f, float(stddev));
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
  return t;
}

double max_rel(const Tensor& got_anywhere, const Tensor& ref) {
  const Tensor got = got_anywhere.to(Device::CPU);
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double r = ref.dtype() == DType::F64 ? ref.f64()[i] : ref.f32()[i];
    const double g = got.dtype() == DType::F64 ? got.f64()[i] : got.f32()[i];
    diff = std::max(diff, std::isnan(g) ? INFINITY : std::fabs(g - r));
    scale = std::max(scale, std::fabs(r));
  }
  return scale > 0 ? diff / scale : diff;
}

int64_t mismatches(const Tensor& got_anywhere, const Tensor& ref) {
  const Tensor got = got_anywhere.to(Device::CPU);
  int64_t bad = 0;
  for (int64_t i = 0; i < ref.numel(); ++i)
    bad += ref.dtype() == DType::I32 ? got.i32()[i] != ref.i32()[i] : got.f32()[i] != ref.f32()[i];
  return bad;
}

// The outputs of one routing, on one device.
struct Routed {
  Tensor scores, indices, weights, score_sum, seq_counts, seq_prob, d_logits, offsets, token, row;
};

Routed route_on(Device device, const RouteCase& c, const Tensor& logits, const Tensor& bias,
                const Tensor& d_weights) {
  const int64_t n = c.batch * c.seq, e = c.select.experts, k = c.select.k;
  Routed r;
  auto make = [&](const Shape& s, DType d) { return Tensor::zeros(s, d).to(device); };
  r.scores = make({n, e}, DType::F32);
  r.indices = make({n, k}, DType::I32);
  r.weights = make({n, k}, DType::F32);
  r.score_sum = make({n}, DType::F32);
  r.seq_counts = make({c.batch, e}, DType::F32);
  r.seq_prob = make({c.batch, e}, DType::F64);
  r.d_logits = make({n, e}, DType::F32);
  const ops::RouteSpec spec{c.select, c.sigmoid, c.norm_topk, c.scaling, c.seq};
  const Tensor on_logits = logits.to(device), on_bias = bias.to(device);
  ops::route_forward(spec, on_logits, c.bias ? &on_bias : nullptr, r.scores, r.indices, r.weights,
                     r.score_sum, r.seq_counts, r.seq_prob);
  ops::route_backward(spec, c.alpha, r.scores, r.indices, r.score_sum, r.seq_counts,
                      d_weights.to(device), r.d_logits);
  // Expert offsets from the counts (on the host, as the MoE layer does), then the permutation.
  const Tensor counts = r.seq_counts.to(Device::CPU);
  Tensor off = Tensor::zeros({e + 1}, DType::I64);
  for (int64_t x = 0; x < e; ++x) {
    int64_t total = 0;
    for (int64_t b = 0; b < c.batch; ++b) total += int64_t(counts.f32()[b * e + x]);
    off.i64()[x + 1] = off.i64()[x] + total;
  }
  r.offsets = off;
  r.token = make({n * k}, DType::I32);
  r.row = make({n * k}, DType::I32);
  ops::moe_permute(r.indices, off.to(device), r.token, r.row);
  return r;
}

TEST(CudaRouter, MatchesTheCpu) {
  REQUIRE_GPU();
  const std::vector<RouteCase> cases = {
      // V3: sigmoid, 8 groups keep 4, bias, normalised, scaled.
      {"v3-like", {64, 8, 4, 8, true}, true, true, true, 2.5, 1e-4, 3, 67},
      {"v2-lite-like", {64, 1, 1, 6, false}, false, false, false, 1.0, 1e-3, 2, 100},
      {"groups by max", {32, 4, 2, 4, false}, true, true, true, 1.0, 0.0, 1, 300},
      {"one expert", {16, 1, 1, 1, true}, true, true, false, 1.0, 1e-2, 4, 1},
      {"256 experts", {256, 8, 4, 8, true}, true, true, true, 2.5, 1e-4, 2, 130},
      {"160 experts, seq of whole chunks", {160, 1, 1, 6, true}, true, true, true, 1.0, 1e-3, 2,
       128},
      // The balance gradient is alpha / (B T) of the gating weights' one: alone, it is seen.
      {"balance gradient alone", {64, 8, 4, 8, true}, true, true, true, 2.5, 1.0, 3, 130, true},
      {"balance gradient alone, softmax", {32, 1, 1, 4, false}, false, true, false, 1.0, 1.0, 4,
       70, true},
  };
  std::mt19937_64 rng(5);
  for (const RouteCase& c : cases) {
    SCOPED_TRACE(c.name);
    const int64_t n = c.batch * c.seq, e = c.select.experts, k = c.select.k;
    const Tensor logits = random({n, e}, rng, 2.0);
    const Tensor bias = random({e}, rng, 0.1);
    const Tensor d_weights = c.balance_only ? Tensor::zeros({n, k}) : random({n, k}, rng, 1.0);
    const Routed cpu = route_on(Device::CPU, c, logits, bias, d_weights);
    const Routed gpu = route_on(Device::CUDA, c, logits, bias, d_weights);
    EXPECT_EQ(mismatches(gpu.indices, cpu.indices), 0);
    EXPECT_EQ(mismatches(gpu.seq_counts, cpu.seq_counts), 0);
    EXPECT_LE(max_rel(gpu.scores, cpu.scores), 1e-6);
    EXPECT_LE(max_rel(gpu.weights, cpu.weights), 1e-6);
    EXPECT_LE(max_rel(gpu.score_sum, cpu.score_sum), 1e-6);
    EXPECT_LE(max_rel(gpu.seq_prob, cpu.seq_prob), 1e-6);
    EXPECT_LE(max_rel(gpu.d_logits, cpu.d_logits), 1e-5);
    EXPECT_EQ(mismatches(gpu.token, cpu.token), 0);
    EXPECT_EQ(mismatches(gpu.row, cpu.row), 0);
    // The permutation is one: every permuted row named once, each expert's rows in token order.
    const Tensor row = cpu.row.to(Device::CPU), idx = cpu.indices.to(Device::CPU);
    std::vector<int> seen(size_t(n * k), 0);
    for (int64_t a = 0; a < n * k; ++a) {
      const int64_t r = row.i32()[a], x = idx.i32()[a];
      ASSERT_TRUE(r >= cpu.offsets.i64()[x] && r < cpu.offsets.i64()[x + 1]) << "assignment " << a;
      ++seen[size_t(r)];
    }
    for (int s : seen) ASSERT_EQ(s, 1);
  }
}

}  // namespace
}  // namespace dsv3
