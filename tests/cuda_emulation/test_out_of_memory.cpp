// What an out-of-memory error leaves behind in the GPU inference engine, on the CUDA emulation
// (whose device memory a test can cap): the pass that could not get its buffers fails with an
// error that names them and their size, and the engine afterwards runs as if it had never
// tried, not on freed buffers.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "infer/engine.h"

namespace dsv3::infer {
namespace {

// Caps the emulated device memory for the scope.
struct DeviceMemoryLimit {
  explicit DeviceMemoryLimit(size_t bytes) { dsv3emu::set_device_memory_limit(bytes); }
  ~DeviceMemoryLimit() { dsv3emu::set_device_memory_limit(std::numeric_limits<size_t>::max()); }
};

// The last row's logits of a decode step of token t on cache.
std::vector<float> decode_step(Engine& eng, LatentCache& cache, int32_t t) {
  Chunk ch{&cache, &t, 1};
  eng.forward({&ch, 1}, LogitsFor::Last);
  const int64_t v = eng.config().vocab_size;
  return std::vector<float>(eng.logits(), eng.logits() + v);
}

std::vector<int32_t> long_prompt() {
  std::vector<int32_t> ids(40);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(3 + i);
  return ids;
}

// A 3-token prompt and two decode steps, on an engine that never ran out of memory: the logits
// of the two steps.
std::vector<std::vector<float>> reference_steps(const std::shared_ptr<InferWeights>& w) {
  const int32_t prompt[3] = {5, 6, 7};
  Engine ref(w, Device::CUDA);
  LatentCache cache = ref.make_cache(16, DType::F32);
  Chunk pre{&cache, prompt, 3};
  ref.forward({&pre, 1}, LogitsFor::Last);
  std::vector<std::vector<float>> steps;
  steps.push_back(decode_step(ref, cache, 8));
  steps.push_back(decode_step(ref, cache, 9));
  return steps;
}

// Runs the reference's prompt and first step on eng (its buffers then have the smallest
// capacity, kSmallRows rows), then `fail` (which must throw for lack of device memory, with an
// error that names the buffer, `what`, and its size), then the second step, which fits the old
// capacity: it must not run on buffers the failed pass freed.
template <typename Fail>
void step_fail_step(const std::shared_ptr<InferWeights>& w, Engine& eng, const std::string& what,
                    Fail fail) {
  const std::vector<std::vector<float>> want = reference_steps(w);
  const int32_t prompt[3] = {5, 6, 7};
  LatentCache cache = eng.make_cache(16, DType::F32);
  Chunk pre{&cache, prompt, 3};
  eng.forward({&pre, 1}, LogitsFor::Last);
  EXPECT_EQ(decode_step(eng, cache, 8), want[0]);
  {
    DeviceMemoryLimit cap(dsv3emu::device_bytes_in_use() + 1024);
    try {
      fail();
      ADD_FAILURE() << "no error past the device's memory";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("inference on cuda: " + what + ": cannot allocate "),
                std::string::npos)
          << message;
      EXPECT_NE(message.find("MiB free (cudaErrorMemoryAllocation)"), std::string::npos) << message;
    }
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // an allocation's failure is not left behind
  EXPECT_EQ(decode_step(eng, cache, 9), want[1]);
}

TEST(CudaOutOfMemory, AFailedLongerPassLeavesTheEngineUsable) {
  auto w = InferWeights::load(std::string(DSV3_TEST_DATA) + "/reference/tiny-v3", Precision::F32);
  Engine eng(w, Device::CUDA);
  // A 40-token prompt needs larger working buffers than the device has left.
  LatentCache long_cache = eng.make_cache(48, DType::F32);
  const std::vector<int32_t> ids = long_prompt();
  step_fail_step(w, eng, "the working buffers of a pass of 40 rows", [&] {
    Chunk big{&long_cache, ids.data(), int(ids.size())};
    eng.forward({&big, 1}, LogitsFor::Last);
  });
}

TEST(CudaOutOfMemory, AFailedLogitsBufferLeavesTheEngineUsable) {
  auto w = InferWeights::load(std::string(DSV3_TEST_DATA) + "/reference/tiny-v3", Precision::F32);
  Engine eng(w, Device::CUDA);
  // The working buffers grow for 40 rows first; then a pass that wants all 40 rows' logits
  // needs a larger logits buffer than the device has left.
  const std::vector<int32_t> ids = long_prompt();
  LatentCache first = eng.make_cache(48, DType::F32), second = eng.make_cache(48, DType::F32);
  Chunk grow{&first, ids.data(), int(ids.size())};
  eng.forward({&grow, 1}, LogitsFor::Last);
  step_fail_step(w, eng, "the logits of a pass of 40 rows", [&] {
    Chunk all{&second, ids.data(), int(ids.size())};
    eng.forward({&all, 1}, LogitsFor::All);
  });
}

}  // namespace
}  // namespace dsv3::infer
