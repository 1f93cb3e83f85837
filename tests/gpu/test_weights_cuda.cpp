// A model's weights on the device (ModelWeights::to_device): every gradient is its own region
// of the one gradient allocation (no two overlap, each as large as its parameter), and
// scale_grads and zero_grads reach them all. A step after discard_grads (what training does)
// overwrites whatever the gradients held, on the GPU and on the CPU. The optimizer's
// one-launch update over every tensor (ops::adamw_update_all) gives what one adamw_update per
// tensor gives, bit for bit, and so does the one-launch conversion of the BF16 weight copies
// (ops::convert_all).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/device.h"
#include "kernels/ops.h"
#include "model/config.h"
#include "model/transformer.h"
#include "model/weights.h"

namespace dsv3 {
namespace {

#define REQUIRE_GPU() \
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device"

TEST(CudaWeights, GradientsAreDisjointAndZeroedTogether) {
  REQUIRE_GPU();
  const ModelConfig c =
      ModelConfig::load(std::string(DSV3_TEST_DATA) + "/reference/tiny-v3/config.json");
  ModelWeights w(c);
  w.init_random(5);
  w.to_device(Device::CUDA);
  auto& params = w.params();
  ASSERT_GT(params.size(), 10u);
  // Parameter i's gradient filled with i + 1: an overlap would leave another value in it.
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor g = params[i].param->grad;  // a view of the same memory
    ASSERT_EQ(g.device(), Device::CUDA);
    ASSERT_EQ(g.shape().numel(), params[i].param->value.numel()) << params[i].name;
    Tensor fill = Tensor::zeros(g.shape());
    for (int64_t j = 0; j < fill.numel(); ++j) fill.f32()[j] = float(i + 1);
    g.copy_from(fill);
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor back = params[i].param->grad.to(Device::CPU);
    for (int64_t j = 0; j < back.numel(); ++j)
      ASSERT_EQ(back.f32()[j], float(i + 1)) << params[i].name << " element " << j;
  }
  w.scale_grads(0.5f);  // one launch over the block
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor back = params[i].param->grad.to(Device::CPU);
    for (int64_t j = 0; j < back.numel(); ++j)
      ASSERT_EQ(back.f32()[j], 0.5f * float(i + 1)) << params[i].name << " element " << j;
  }
  w.zero_grads();
  for (const auto& np : params) {
    const Tensor back = np.param->grad.to(Device::CPU);
    for (int64_t j = 0; j < back.numel(); ++j)
      ASSERT_EQ(back.f32()[j], 0.0f) << np.name << " element " << j;
  }
}

// A copy of every gradient, on the host (in params() order).
std::vector<Tensor> host_grads(ModelWeights& w) {
  std::vector<Tensor> out;
  for (const auto& np : w.params()) out.push_back(np.param->grad.to(Device::CPU).clone());
  return out;
}

// Fills every gradient with NaN: the stale values a step after discard_grads must not read.
void make_grads_stale(ModelWeights& w) {
  for (const auto& np : w.params()) {
    Tensor nan = Tensor::zeros(np.param->grad.shape());
    std::fill(nan.f32(), nan.f32() + nan.numel(), std::nanf(""));
    np.param->grad.copy_from(nan);
  }
}

// The first writes of a step after discard_grads give the gradients that zero_grads and the
// same step give, though every gradient held NaN before: each op that writes a weight
// gradient overwrites it the first time, experts without tokens get zeros, and a second
// micro-batch then adds to them. The first step is exact on the CPU; on a GPU a product may
// take another algorithm when it does not read C, so there it agrees to float32 rounding.
TEST(CudaWeights, FirstWritesOfAStepOverwriteStaleGradients) {
  REQUIRE_GPU();
  struct Run {
    const char* fixture;
    Device device;
    DType precision;
  };
  for (const Run run :
       {Run{"tiny-v3", Device::CPU, DType::F32}, Run{"tiny-v2lite", Device::CPU, DType::F32},
        Run{"tiny-v3", Device::CUDA, DType::F32}, Run{"tiny-v3", Device::CUDA, DType::BF16},
        Run{"tiny-v2lite", Device::CUDA, DType::BF16}}) {
    SCOPED_TRACE(std::string(run.fixture) + " on " + std::string(device_name(run.device)) + ", " +
                 std::string(dtype_name(run.precision)));
    const ModelConfig c = ModelConfig::load(std::string(DSV3_TEST_DATA) + "/reference/" +
                                            run.fixture + "/config.json");
    ModelWeights w(c);
    w.init_random(9);
    w.to_device(run.device);
    w.set_compute_dtype(run.precision);
    // Three tokens: fewer routed slots than experts, so some experts get no rows.
    const int64_t batch = 1, seq = 3;
    Transformer model(w, batch, seq);
    const std::vector<int32_t> tokens = {5, 17, 2}, labels = {17, 2, 40};
    const LossWeights loss{0.3, 0.01};
    w.zero_grads();
    const StepResult zeroed = model.step(tokens.data(), labels.data(), loss, true);
    const std::vector<Tensor> want = host_grads(w);
    int empty_experts = 0;
    for (int l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers; ++l)
      if (const RouterActivations* ra = model.routing(l))
        for (int64_t e = 0; e < c.n_routed_experts; ++e) empty_experts += ra->load.f32()[e] == 0;
    ASSERT_GT(empty_experts, 0) << "the case must leave an expert without tokens";

    make_grads_stale(w);
    w.discard_grads();
    const StepResult first = model.step(tokens.data(), labels.data(), loss, true);
    EXPECT_EQ(first.total, zeroed.total);
    const std::vector<Tensor> got = host_grads(w);
    model.step(tokens.data(), labels.data(), loss, true);  // a second micro-batch adds
    const std::vector<Tensor> twice = host_grads(w);
    const auto& params = w.params();
    for (size_t i = 0; i < params.size(); ++i) {
      const float* a = want[i].f32();
      float scale = 0;
      for (int64_t j = 0; j < want[i].numel(); ++j) scale = std::max(scale, std::abs(a[j]));
      // The second micro-batch's sum is 2x to rounding: a weight written twice a step (the
      // embedding, the output head under MTP) adds its parts in another order.
      const float tol = run.device == Device::CPU ? 0.0f : 1e-6f * scale;
      for (int64_t j = 0; j < want[i].numel(); ++j) {
        ASSERT_LE(std::abs(got[i].f32()[j] - a[j]), tol) << params[i].name << " element " << j;
        ASSERT_LE(std::abs(twice[i].f32()[j] - 2 * a[j]), 2e-6f * scale)
            << params[i].name << " element " << j << " after a second micro-batch";
      }
    }
  }
}

// The end of a backward pass zeroes what no op wrote since discard_grads, and leaves what one
// wrote as it is.
TEST(CudaWeights, UnwrittenGradientsAreZeroedAtTheEnd) {
  REQUIRE_GPU();
  const ModelConfig c =
      ModelConfig::load(std::string(DSV3_TEST_DATA) + "/reference/tiny-v3/config.json");
  ModelWeights w(c);
  w.to_device(Device::CUDA);
  make_grads_stale(w);
  w.discard_grads();
  Param& written = w.lm_head;
  EXPECT_FALSE(written.accumulate_grad()) << "the first write overwrites";
  EXPECT_TRUE(written.accumulate_grad()) << "later ones add";
  w.zero_unwritten_grads();
  for (const auto& np : w.params()) {
    const Tensor back = np.param->grad.to(Device::CPU);
    for (int64_t j = 0; j < back.numel(); ++j) {
      if (np.param == &written) {
        ASSERT_TRUE(std::isnan(back.f32()[j])) << "a written gradient was zeroed";
      } else {
        ASSERT_EQ(back.f32()[j], 0.0f) << np.name << " element " << j;
      }
    }
  }
}

Tensor random_host(int64_t n, std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  Tensor t = Tensor::zeros({n});
  for (int64_t i = 0; i < n; ++i) t.f32()[i] = d(rng);
  return t;
}

TEST(CudaWeights, AdamWOverAllTensorsEqualsOneUpdatePerTensor) {
  REQUIRE_GPU();
  std::mt19937_64 rng(17);
  // Sizes across the 65,536-element chunks, and an empty tensor.
  const std::vector<int64_t> sizes = {1, 300, 65536, 65537, 0, 200000};
  struct State {
    Tensor p, g, m, v;
  };
  std::vector<State> one, all;
  for (int64_t n : sizes) {
    const Tensor p = random_host(n, rng, -1, 1), g = random_host(n, rng, -0.1f, 0.1f),
                 m = random_host(n, rng, -0.01f, 0.01f), v = random_host(n, rng, 0, 1e-4f);
    for (auto* states : {&one, &all})
      states->push_back({p.to(Device::CUDA).clone(), g.to(Device::CUDA), m.to(Device::CUDA).clone(),
                         v.to(Device::CUDA).clone()});
  }
  ops::AdamWScalars s{0.999f, 0.9f, 0.95f, 0.5f, 1e-3f, 1.3f, 1e-8f};
  std::vector<ops::AdamWTensors> ts;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const float decay = i % 2 ? 1.0f : 0.999f;
    ops::AdamWScalars k = s;
    k.decay = decay;
    ops::adamw_update(one[i].p, one[i].g, one[i].m, one[i].v, k);
    ts.push_back({&all[i].p, &all[i].g, &all[i].m, &all[i].v, decay});
  }
  s.decay = -7.0f;  // not read by adamw_update_all
  ops::adamw_update_all(ts, s);
  for (size_t i = 0; i < sizes.size(); ++i) {
    for (auto pick : {&State::p, &State::m, &State::v}) {
      const Tensor a = (one[i].*pick).to(Device::CPU), b = (all[i].*pick).to(Device::CPU);
      ASSERT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0) << "tensor " << i;
    }
  }
}

TEST(CudaWeights, ConvertAllEqualsOneConversionPerTensor) {
  REQUIRE_GPU();
  std::mt19937_64 rng(23);
  const std::vector<int64_t> sizes = {1, 65536, 65537, 0, 150001};
  std::vector<Tensor> src, one, all;
  for (int64_t n : sizes) {
    Tensor h = random_host(n, rng, -3, 3);
    if (n > 2) h.f32()[2] = std::nanf("");  // NaN stays NaN
    src.push_back(h.to(Device::CUDA));
    one.push_back(Tensor::zeros({n}, DType::BF16, Device::CUDA));
    all.push_back(Tensor::zeros({n}, DType::BF16, Device::CUDA));
  }
  // A pair that is not float32 -> BF16 takes convert's own path inside convert_all.
  Tensor back_one = Tensor::zeros({sizes[1]}, DType::F32, Device::CUDA);
  Tensor back_all = Tensor::zeros({sizes[1]}, DType::F32, Device::CUDA);
  std::vector<std::pair<const Tensor*, Tensor*>> pairs;
  for (size_t i = 0; i < sizes.size(); ++i) {
    ops::convert(src[i], one[i]);
    pairs.push_back({&src[i], &all[i]});
  }
  ops::convert(one[1], back_one);
  ops::convert_all(pairs);
  ops::convert_all({{&all[1], &back_all}});
  for (size_t i = 0; i < sizes.size(); ++i) {
    const Tensor a = one[i].to(Device::CPU), b = all[i].to(Device::CPU);
    ASSERT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0) << "tensor " << i;
  }
  const Tensor a = back_one.to(Device::CPU), b = back_all.to(Device::CPU);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0);
}

}  // namespace
}  // namespace dsv3
