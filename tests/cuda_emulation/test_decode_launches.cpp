// How many kernels one decode step launches on the GPU engine, counted on the CUDA emulation.
// At batch 1 a small model's decode step is bound by launches, not bytes (about a microsecond
// per kernel even from a CUDA graph), so the count is a property worth pinning: a change that
// adds launches to the step has to change the formula below, on purpose.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>

#include "infer/engine.h"

namespace dsv3::infer {
namespace {

// Per layer, attention: norm with q_a and kv_a, q norm with q_b, latent write with query
// absorption, latent attention, value up-projection, output projection with the residual add
// (6; without q_lora_rank: norm with q_proj and kv_a, 5). The FFN half, dense: norm with
// gate/up/SwiGLU, down with the residual (2); MoE: norm with the router and the expert choice,
// routed gate/up/SwiGLU, routed down with the combination and the residual (3), and a shared
// expert wider than a routed one adds its own gate/up/SwiGLU and down (5; one of a routed
// expert's width is a slot of the routed launches). Around the layers: embedding, final norm,
// lm_head.
int64_t expected_launches(const ModelConfig& c) {
  const int64_t layers = c.num_hidden_layers, dense = c.first_k_dense_replace;
  const int64_t attention = c.q_lora_rank ? 6 : 5;
  const int64_t moe = c.n_shared_experts > 1 ? 5 : 3;
  return 1 + layers * attention + dense * 2 + (layers - dense) * moe + 2;
}

TEST(CudaDecodeLaunches, OneStepIsTheFusedSequence) {
  for (const char* name : {"tiny-v3", "tiny-v2lite"}) {
    SCOPED_TRACE(name);
    auto w = InferWeights::load(std::string(DSV3_TEST_DATA) + "/reference/" + name, Precision::F32);
    Engine eng(w, Device::CUDA);
    LatentCache cache = eng.make_cache(16, DType::F32);
    const int32_t prompt[3] = {5, 6, 7};
    Chunk pre{&cache, prompt, 3};
    eng.forward({&pre, 1}, LogitsFor::Last);
    // Step 1 runs directly, step 2 is captured and replayed, step 3 replays.
    for (int step = 1; step <= 3; ++step) {
      const int32_t t = 8;
      Chunk ch{&cache, &t, 1};
      const uint64_t before = dsv3emu::kernels_run();
      eng.forward({&ch, 1}, LogitsFor::Last);
      EXPECT_EQ(int64_t(dsv3emu::kernels_run() - before), expected_launches(eng.config()))
          << "step " << step;
    }
  }
}

}  // namespace
}  // namespace dsv3::infer
