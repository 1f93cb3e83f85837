// A model's weights on the device (ModelWeights::to_device): every gradient is its own region
// of the one gradient allocation (no two overlap, each as large as its parameter), and
// scale_grads and zero_grads reach them all. The optimizer's one-launch update over every tensor
// (ops::adamw_update_all) gives what one adamw_update per tensor gives, bit for bit, and so
// does the one-launch conversion of the BF16 weight copies (ops::convert_all).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/device.h"
#include "kernels/ops.h"
#include "model/config.h"
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
