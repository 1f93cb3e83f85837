// A decode step as one launch (DSV3_CUDA_PERSISTENT=1, infer/cuda/decode_kernels.h): the
// step's kernels recorded into a DecodeProgram and run as units of one cooperative grid, each
// unit waiting on the count of the stage before instead of on a kernel boundary. Each unit is
// the very body of the kernel it stands for, so every step's logits must equal the separate
// launches' bit for bit: with BF16 and float32 weights and caches, replayed from a graph and
// launched directly. A unit that read an activation before its wait, a count left non-zero for
// the next launch, or a stage out of order shows as different logits. A model whose step the
// program cannot hold runs the launches (and gives their logits). Part of dsv3_gpu_tests and of
// the emulated tests (where the grid's blocks take turns, so the waits really wait).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core/device.h"
#include "scoped_env.h"
#include "infer/cuda/decode_kernels.h"
#include "infer/convert.h"
#include "infer/engine.h"
#include "model/weights.h"

namespace dsv3::infer {
namespace {

#define REQUIRE_GPU() \
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device"

using test::ScopedEnv;

// A 12-token prompt (the cuBLAS prefill), then `steps` one-token steps; each pass's logits.
std::vector<std::vector<float>> decode(Engine& eng, DType cache_dtype, int steps) {
  const ModelConfig& c = eng.config();
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> id(0, c.vocab_size - 1);
  std::vector<int32_t> prompt(12);
  for (auto& t : prompt) t = id(rng);
  LatentCache cache = eng.make_cache(int(prompt.size()) + steps, cache_dtype);
  std::vector<std::vector<float>> out;
  Chunk ch{&cache, prompt.data(), int(prompt.size())};
  eng.forward({&ch, 1}, LogitsFor::Last);
  out.emplace_back(eng.logits(), eng.logits() + c.vocab_size);
  for (int i = 0; i < steps; ++i) {
    const int32_t t = id(rng);
    Chunk step{&cache, &t, 1};
    eng.forward({&step, 1}, LogitsFor::Last);
    out.emplace_back(eng.logits(), eng.logits() + c.vocab_size);
  }
  return out;
}

// The default model's shapes (every dimension a multiple of 8: the vector path the program
// holds), or with another hidden size, random weights, as a checkpoint in a temporary directory.
std::string default_shapes_checkpoint(int64_t hidden = 0) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("dsv3-decode-program-" + std::to_string(hidden) + "-" + std::to_string(getpid()));
  fs::remove_all(dir);
  nlohmann::json j =
      ModelConfig::load(std::string(DSV3_TEST_DATA) + "/../../bench/configs/default-small.json")
          .to_json();
  if (hidden > 0) j["hidden_size"] = hidden;
  const ModelConfig c = ModelConfig::from_json(j, "test config");
  ModelWeights w(c);
  w.init_random(17, 0.05f);
  write_checkpoint(dir.string(), c.to_json(), w.named_tensors(), CheckpointFormat::F32);
  return dir.string();
}

TEST(CudaDecodeProgram, EqualsTheLaunchesBitForBit) {
  REQUIRE_GPU();
  const std::string dir = default_shapes_checkpoint();
  constexpr int kSteps = 6;
  for (Precision precision : {Precision::BF16, Precision::F32}) {
    auto w = InferWeights::load(dir, precision);
    Engine launches(w, Device::CUDA);
    std::unique_ptr<Engine> program, program_no_graphs;
    {
      const ScopedEnv persistent("DSV3_CUDA_PERSISTENT", "1");
      program = std::make_unique<Engine>(w, Device::CUDA);
      const ScopedEnv no_graphs("DSV3_CUDA_GRAPHS", "0");
      program_no_graphs = std::make_unique<Engine>(w, Device::CUDA);
    }
    for (DType cache : {DType::BF16, DType::F32}) {
      const char* what = precision == Precision::BF16 ? "bf16 weights" : "f32 weights";
      const auto want = decode(launches, cache, kSteps);
      // Graphs: the first step runs the program directly, the second captures it (the rest
      // replay the capture, which launches nothing from the host).
      const uint64_t before = gpu::decode_programs_launched();
      const auto got = decode(*program, cache, kSteps);
      EXPECT_EQ(gpu::decode_programs_launched() - before, 2u) << what;
      // Without graphs every step is one launch of the program.
      const uint64_t before_direct = gpu::decode_programs_launched();
      const auto direct = decode(*program_no_graphs, cache, kSteps);
      EXPECT_EQ(gpu::decode_programs_launched() - before_direct, uint64_t(kSteps)) << what;
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(got[i], want[i]) << what << ", cache " << (cache == DType::BF16 ? "bf16" : "f32")
                                   << ", pass " << i << " (graph replay)";
        EXPECT_EQ(direct[i], want[i]) << what << ", pass " << i << " (direct)";
      }
    }
  }
  std::filesystem::remove_all(dir);
}

// A hidden size that is not a multiple of 8 takes the GEMV's scalar path, which the program
// does not hold: the steps run as launches, with their logits.
TEST(CudaDecodeProgram, AStepItCannotHoldRunsAsLaunches) {
  REQUIRE_GPU();
  const std::string dir = default_shapes_checkpoint(260);
  auto w = InferWeights::load(dir, Precision::F32);
  Engine launches(w, Device::CUDA);
  const ScopedEnv persistent("DSV3_CUDA_PERSISTENT", "1");
  Engine program(w, Device::CUDA);
  const auto want = decode(launches, DType::F32, 3);
  const uint64_t before = gpu::decode_programs_launched();
  const auto got = decode(program, DType::F32, 3);
  EXPECT_EQ(gpu::decode_programs_launched(), before);
  EXPECT_EQ(got, want);
  std::filesystem::remove_all(dir);
}

// A recorded program refuses what it cannot run, naming it.
TEST(CudaDecodeProgram, RecordingRefusesKernelsItCannotRun) {
  gpu::DecodeProgram p;
  {
    const gpu::DecodeRecording recording(&p);
    ASSERT_EQ(gpu::swiglu_rows(nullptr, nullptr, 8, nullptr), cudaSuccess);  // recorded, not run
  }
  EXPECT_FALSE(p.runnable());
  EXPECT_NE(p.why().find("SwiGLU"), std::string::npos) << p.why();
  gpu::DecodeProgram mixed;
  mixed.weights(true);
  mixed.weights(false);
  EXPECT_NE(mixed.why().find("two dtypes"), std::string::npos) << mixed.why();
  EXPECT_FALSE(gpu::DecodeProgram().runnable()) << "an empty program";
}

}  // namespace
}  // namespace dsv3::infer
