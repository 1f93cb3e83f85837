// What a training step on the GPU asks of the host, counted on the CUDA emulation: where it
// waits for the device and where it allocates. A step that waits needlessly leaves the GPU idle
// while the host catches up, and one that allocates is not planned. The contract (docs/cuda.md):
// inside the forward and backward pass, one wait per MoE layer (the routing counts, which size
// the expert products) and one at the end for the losses; one more in the optimizer (the
// gradient norm, which decides whether the update is taken); and no allocation once the first
// step has sized everything. Each wait also brings back the kernels' index-error record, so a
// bad token id is still raised within the step. And no product rounds a float32 operand itself:
// mixed precision's BF16 operands are written as such by the ops that make them.
//
// To see where an unexpected call comes from: DSV3_EMU_TRACE_HOST_CALLS=1 prints a backtrace at
// each one.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/ops_cuda.h"
#include "model/config.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "train/adamw.h"

namespace dsv3 {
namespace {

std::string describe(const std::map<std::string, uint64_t>& m) {
  std::string s;
  for (const auto& [api, n] : m) s += (s.empty() ? "" : ", ") + api + " x" + std::to_string(n);
  return s.empty() ? "none" : s;
}

// The calls made since `before`, by API.
dsv3emu::HostCalls since(const dsv3emu::HostCalls& before) {
  dsv3emu::HostCalls now = dsv3emu::host_calls();
  const auto subtract = [](std::map<std::string, uint64_t>& m,
                           const std::map<std::string, uint64_t>& b) {
    for (auto& [api, n] : m) n -= b.count(api) ? b.at(api) : 0;
    std::erase_if(m, [](const auto& kv) { return kv.second == 0; });
  };
  subtract(now.waits, before.waits);
  subtract(now.allocations, before.allocations);
  return now;
}

ModelConfig fixture_config(const char* name) {
  const std::string path = std::string(DSV3_TEST_DATA) + "/reference/" + name + "/config.json";
  std::ifstream f(path);
  return ModelConfig::from_json(nlohmann::json::parse(f), path);
}

TEST(CudaTrainStepHostCalls, WaitsOnlyForRoutingAndLossesAndAllocatesNothing) {
  const ModelConfig c = fixture_config("tiny-v3");  // 2 MoE layers and an MoE MTP depth
  int64_t moe_layers = 0;
  for (int l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers; ++l)
    moe_layers += c.is_moe_layer(l);
  ASSERT_EQ(moe_layers, 3);
  for (DType precision : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(std::string(dtype_name(precision)));
    ModelWeights w(c);
    w.init_random(7);
    AdamW opt(w);
    w.to_device(Device::CUDA);
    opt.to_device(Device::CUDA);
    w.set_compute_dtype(precision);
    const int64_t batch = 2, seq = 8;
    Transformer model(w, batch, seq);
    std::mt19937 rng(3);
    std::vector<int32_t> tokens(size_t(batch * seq)), labels(tokens.size());
    // Step 1 sizes the scratch and the pinned readback memory; step 2 is the steady state.
    for (int step = 1; step <= 2; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      for (auto& t : tokens) t = int32_t(rng() % uint32_t(c.vocab_size));
      for (auto& t : labels) t = int32_t(rng() % uint32_t(c.vocab_size));
      const dsv3emu::HostCalls before = dsv3emu::host_calls();
      const uint64_t conversions = cuda_ops::matmul_operand_conversions();
      w.discard_grads();  // as training does
      const StepResult r = model.step(tokens.data(), labels.data(), LossWeights{}, true);
      const dsv3emu::HostCalls pass = since(before);
      // Every BF16 operand of the step's products was written in BF16 by the op that made it.
      EXPECT_EQ(cuda_ops::matmul_operand_conversions(), conversions)
          << "a linear op rounded a float32 operand itself";
      opt.step(AdamWSettings{}, 1e-3);
      const dsv3emu::HostCalls whole = since(before);
      ASSERT_TRUE(std::isfinite(r.total));
      if (step == 1) continue;
      EXPECT_EQ(pass.total_waits(), uint64_t(moe_layers + 1))
          << "forward and backward waited: " << describe(pass.waits);
      EXPECT_EQ(whole.total_waits(), uint64_t(moe_layers + 2))
          << "the step with its update waited: " << describe(whole.waits);
      EXPECT_EQ(whole.total_allocations(), 0u)
          << "the step with its update allocated: " << describe(whole.allocations);
    }
  }
}

// The loss read back at the step's end is the one the step computed: a forward-only pass and a
// pass with backward give the same losses, bit for bit, and match a CPU step within the
// float32 tolerance of the fixtures.
TEST(CudaTrainStepHostCalls, LossesReadAtTheEndAreTheStepsOwn) {
  const ModelConfig c = fixture_config("tiny-v3");
  ModelWeights cpu(c);
  cpu.init_random(11);
  ModelWeights gpu(c);
  gpu.init_random(11);
  gpu.to_device(Device::CUDA);
  const int64_t batch = 2, seq = 8;
  Transformer on_cpu(cpu, batch, seq), on_gpu(gpu, batch, seq);
  std::mt19937 rng(5);
  std::vector<int32_t> tokens(size_t(batch * seq)), labels(tokens.size());
  for (auto& t : tokens) t = int32_t(rng() % uint32_t(c.vocab_size));
  for (auto& t : labels) t = int32_t(rng() % uint32_t(c.vocab_size));
  labels[3] = -1;  // a left-out position
  const StepResult want = on_cpu.step(tokens.data(), labels.data(), LossWeights{}, false);
  const StepResult fwd = on_gpu.step(tokens.data(), labels.data(), LossWeights{}, false);
  gpu.zero_grads();
  const StepResult both = on_gpu.step(tokens.data(), labels.data(), LossWeights{}, true);
  EXPECT_EQ(fwd.main, both.main);
  EXPECT_EQ(fwd.total, both.total);
  ASSERT_EQ(fwd.mtp.size(), 1u);
  EXPECT_EQ(fwd.mtp[0], both.mtp[0]);
  EXPECT_NEAR(fwd.main, want.main, 1e-5 * std::abs(want.main));
  EXPECT_NEAR(fwd.mtp[0], want.mtp[0], 1e-5 * std::abs(want.mtp[0]));
  EXPECT_NEAR(fwd.total, want.total, 1e-5 * std::abs(want.total));
}

}  // namespace
}  // namespace dsv3
