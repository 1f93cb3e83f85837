// The inference router kernel (infer::gpu::route, one warp per token) against the serial rule it
// must reproduce: the scores, select_experts (model/expert_selection.h) and the gates, computed
// here on the host. The chosen experts must be the same tie for tie, so besides continuous
// logits the cases draw logits and biases from a few values (many exact ties among experts and
// among groups) and put NaNs among them (the serial scan keeps a NaN only where it is the first
// candidate of a round; the warp's pick must do the same).
//
// A GPU's expf may differ from the host's in the last bit, which could flip a choice only where
// two continuous selection scores lie within about 1e-7 of each other (ties drawn from a few
// values stay exact ties on both).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/device.h"
#include "infer/cuda/decode_kernels.h"
#include "device_vectors.h"
#include "model/expert_selection.h"

namespace dsv3::infer {
namespace {

#define REQUIRE_GPU() \
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device"

struct RouterCase {
  std::string name;
  ExpertSelection select;
  bool sigmoid, norm_topk;
  float scaling;
};

enum class Draw { Continuous, FewValues, WithNaNs };

// The kernel's rule, serially: scores, the selection, and the normalised, scaled gates.
void route_on_host(const RouterCase& c, const std::vector<float>& logits,
                   const std::vector<float>& bias, int64_t rows, std::vector<int32_t>& chosen,
                   std::vector<float>& gates) {
  const int e_count = c.select.experts, k = c.select.k;
  chosen.assign(size_t(rows * k), -1);
  gates.assign(size_t(rows * k), 0.0f);
  for (int64_t t = 0; t < rows; ++t) {
    const float* lg = logits.data() + t * e_count;
    float mx = 0.0f, sum = 1.0f;
    if (!c.sigmoid) {
      mx = lg[0];
      for (int e = 1; e < e_count; ++e) mx = std::fmax(mx, lg[e]);
      sum = 0.0f;
      for (int e = 0; e < e_count; ++e) sum += std::exp(lg[e] - mx);
    }
    auto score = [&](int e) {
      return c.sigmoid ? 1.0f / (1.0f + std::exp(-lg[e])) : std::exp(lg[e] - mx) / sum;
    };
    std::vector<float> sel(static_cast<size_t>(e_count)), group_scores(64);
    for (int e = 0; e < e_count; ++e) sel[size_t(e)] = score(e) + bias[size_t(e)];
    int32_t* ch = chosen.data() + t * k;
    select_experts(c.select, sel.data(), group_scores.data(), ch);
    float* g = gates.data() + t * k;
    float total = 0.0f;
    for (int j = 0; j < k; ++j) total += (g[j] = score(ch[j]));
    float scale = c.scaling;
    if (c.norm_topk) scale /= (total + 1e-20f);
    for (int j = 0; j < k; ++j) g[j] *= scale;
  }
}

float draw(Draw how, std::mt19937_64& rng, float stddev) {
  std::normal_distribution<float> normal(0.0f, stddev);
  if (how == Draw::Continuous) return normal(rng);
  std::uniform_int_distribution<int> level(-2, 2);
  if (how == Draw::WithNaNs && std::uniform_int_distribution<int>(0, 5)(rng) == 0) return NAN;
  return float(level(rng)) * stddev;
}

using test::to_device;
using test::to_host;

TEST(CudaDecodeRouter, ChoosesTheSerialRulesExpertsTieForTie) {
  REQUIRE_GPU();
  const std::vector<RouterCase> cases = {
      {"v3-like", {64, 8, 4, 8, true}, true, true, 2.5f},
      {"256 experts", {256, 8, 4, 8, true}, true, true, 2.5f},
      {"v2-lite-like softmax", {64, 1, 1, 6, false}, false, false, 1.0f},
      {"groups by max, softmax", {32, 4, 2, 4, false}, false, true, 1.0f},
      {"one expert", {16, 1, 1, 1, true}, true, true, 1.0f},
      {"many groups", {128, 64, 5, 3, true}, true, true, 1.0f},
      {"k above one lane's candidates", {512, 2, 1, 40, true}, true, false, 1.5f},
  };
  std::mt19937_64 rng(11);
  for (const RouterCase& c : cases) {
    for (Draw how : {Draw::Continuous, Draw::FewValues, Draw::WithNaNs}) {
      for (int64_t rows : {1, 5, 37}) {
        SCOPED_TRACE(c.name + ", draw " + std::to_string(int(how)) + ", rows " +
                     std::to_string(rows));
        const int e_count = c.select.experts, k = c.select.k;
        std::vector<float> logits(static_cast<size_t>(rows * e_count));
        std::vector<float> bias(static_cast<size_t>(e_count));
        for (float& x : logits) x = draw(how, rng, 1.0f);
        for (float& x : bias) x = draw(how == Draw::WithNaNs ? Draw::FewValues : how, rng, 0.1f);
        std::vector<int32_t> want_chosen;
        std::vector<float> want_gates;
        route_on_host(c, logits, bias, rows, want_chosen, want_gates);

        gpu::Route r;
        r.logits = to_device(logits);
        r.bias = to_device(bias);
        r.rows = rows;
        r.select = c.select;
        r.sigmoid = c.sigmoid;
        r.norm_topk = c.norm_topk;
        r.scaling = c.scaling;
        r.chosen = to_device(std::vector<int32_t>(size_t(rows * k), -7));
        r.gates = to_device(std::vector<float>(size_t(rows * k), NAN));
        ASSERT_EQ(gpu::route(r, nullptr), cudaSuccess);
        const std::vector<int32_t> chosen = to_host(r.chosen, size_t(rows * k));
        const std::vector<float> gates = to_host(r.gates, size_t(rows * k));
        for (size_t i = 0; i < chosen.size(); ++i) {
          ASSERT_EQ(chosen[i], want_chosen[i]) << "token " << i / size_t(k) << " pick " << i % size_t(k);
          const float want = want_gates[i];
          if (std::isnan(want)) {
            EXPECT_TRUE(std::isnan(gates[i])) << "gate " << i;
          } else {
            EXPECT_LE(std::fabs(gates[i] - want), 1e-6f * std::fmax(1.0f, std::fabs(want)))
                << "gate " << i;
          }
        }
        for (void* p : {static_cast<void*>(const_cast<float*>(r.logits)),
                        static_cast<void*>(const_cast<float*>(r.bias)), static_cast<void*>(r.chosen),
                        static_cast<void*>(r.gates)})
          cudaFree(p);
      }
    }
  }
}

TEST(CudaDecodeRouter, RejectsSelectionsItCannotHold) {
  REQUIRE_GPU();
  gpu::Route r;
  r.rows = 1;
  r.select = {gpu::kMaxRouterExperts + 1, 1, 1, 2, true};
  EXPECT_EQ(gpu::route(r, nullptr), cudaErrorInvalidValue);
  r.select = {64, 65, 1, 2, true};
  EXPECT_EQ(gpu::route(r, nullptr), cudaErrorInvalidValue);
  cudaGetLastError();
}

}  // namespace
}  // namespace dsv3::infer
