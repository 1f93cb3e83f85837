// Inference forward pass: token-by-token decode through the latent cache against the fixtures
// and against the float32 training forward, BF16 within its documented tolerance, batches.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "infer/convert.h"
#include "infer/decode_parity.h"
#include "infer/engine.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "model/weights.h"

namespace {
using namespace dsv3;
using namespace dsv3::infer;

std::string fixture(const char* name) { return std::string(DSV3_TEST_DATA) + "/reference/" + name; }

class DecodeFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(DecodeFixture, TokenByTokenMatchesExpectedLogits) {
  ParityReport r;
  add_decode_parity(fixture(GetParam()), r);
  ASSERT_GE(r.checks.size(), 5u) << r.table();
  EXPECT_TRUE(r.all_pass()) << r.table(true);
  // The checks really are the F32 1e-5 and the documented BF16 bound.
  for (const auto& c : r.checks)
    EXPECT_EQ(c.tolerance, c.quantity.find("[f32]") != std::string::npos ? kDecodeF32Tol
                                                                          : kBf16DecodeTol);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DecodeFixture,
                         ::testing::Values("tiny-v3", "tiny-v2lite", "tiny-v3-bf16", "wide-v3-fp8"));

// Random token windows (not the fixture's): the decode path equals the training forward pass.
void compare_with_training_forward_in(const std::string& dir, uint32_t seed, int64_t seq) {
  ModelConfig c = ModelConfig::load(dir);
  ModelWeights tw(c);
  tw.load(WeightStore::open(dir + "/model.safetensors"));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> id(0, c.vocab_size - 1);
  std::vector<int32_t> tokens(static_cast<size_t>(seq)), labels(static_cast<size_t>(seq), 0);
  for (auto& t : tokens) t = id(rng);
  Transformer model(tw, 1, seq);
  model.step(tokens.data(), labels.data(), LossWeights{}, false);
  const float* ref = model.logits().f32();

  Engine eng(InferWeights::load(dir, Precision::F32));
  LatentCache cache = eng.make_cache(int(seq), DType::F32);
  std::vector<float> got(size_t(seq * c.vocab_size));
  for (int64_t i = 0; i < seq; ++i) {
    Chunk ch{&cache, &tokens[size_t(i)], 1};
    eng.forward({&ch, 1}, LogitsFor::All);
    std::memcpy(&got[size_t(i * c.vocab_size)], eng.logits(), size_t(c.vocab_size) * 4);
  }
  EXPECT_EQ(cache.len(), seq);
  EXPECT_EQ(cache.width(), c.kv_lora_rank + c.qk_rope_head_dim);
  EXPECT_LE(max_rel(got.data(), ref, got.size()), 1e-5) << dir;
}

void compare_with_training_forward(const char* name, uint32_t seed, int64_t seq) {
  compare_with_training_forward_in(fixture(name), seed, seq);
}

TEST(Decode, EqualsTrainingForwardTinyV3) { compare_with_training_forward("tiny-v3", 7, 30); }

// A latent rank of 160 and a cache row of 184 values: the attention kernels' 128-value register
// blocks, their scalar remainder and the masked 16-lane tail all run (the fixtures' ranks are
// below one block).
TEST(Decode, EqualsTrainingForwardWideLatent) {
  nlohmann::json raw;
  {
    std::ifstream f(fixture("tiny-v3") + "/config.json");
    raw = nlohmann::json::parse(f);
  }
  raw["kv_lora_rank"] = 160;
  raw["qk_rope_head_dim"] = 24;
  raw["num_nextn_predict_layers"] = 0;
  const std::string dir = ::testing::TempDir() + "dsv3_wide_latent";
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir + "/config.json");
    f << raw.dump(2);
  }
  ModelConfig c = ModelConfig::load(dir);
  ModelWeights w(c);
  w.init_random(5, 0.05f);
  write_checkpoint(dir, raw, w.named_tensors(), CheckpointFormat::F32);
  compare_with_training_forward_in(dir, 9, 40);
}
TEST(Decode, EqualsTrainingForwardV2Lite) { compare_with_training_forward("tiny-v2lite", 8, 17); }

TEST(Decode, CacheHoldsOnlyTheLatent) {
  Engine eng(InferWeights::load(fixture("tiny-v3"), Precision::BF16));
  const ModelConfig& c = eng.config();
  LatentCache cache = eng.make_cache(40, DType::BF16);
  EXPECT_EQ(cache.bytes(), size_t(c.num_hidden_layers) * 40 *
                               size_t(c.kv_lora_rank + c.qk_rope_head_dim) * 2);
}

TEST(Decode, BatchRowsMatchSingleRowsBitForBit) {
  // Sequences of different lengths run together give the same logits as alone.
  Engine eng(InferWeights::load(fixture("tiny-v3"), Precision::BF16));
  const int v = eng.config().vocab_size;
  std::vector<std::vector<int32_t>> seqs = {{1, 5, 9}, {7, 3}, {100, 101, 102}};
  std::vector<std::vector<float>> alone;
  for (const auto& s : seqs) {
    LatentCache cache = eng.make_cache(10, DType::BF16);
    Chunk ch{&cache, s.data(), int(s.size())};
    eng.forward({&ch, 1}, LogitsFor::Last);
    alone.emplace_back(eng.logits(), eng.logits() + v);
    int32_t next = 42;
    Chunk step{&cache, &next, 1};
    eng.forward({&step, 1}, LogitsFor::Last);
    alone.emplace_back(eng.logits(), eng.logits() + v);
  }
  std::vector<LatentCache> caches;
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < seqs.size(); ++i) caches.push_back(eng.make_cache(10, DType::BF16));
  for (size_t i = 0; i < seqs.size(); ++i) chunks.push_back({&caches[i], seqs[i].data(), int(seqs[i].size())});
  eng.forward(chunks, LogitsFor::Last);
  std::vector<float> first(eng.logits(), eng.logits() + seqs.size() * v);
  int32_t next[3] = {42, 42, 42};
  for (size_t i = 0; i < seqs.size(); ++i) chunks[i] = {&caches[i], &next[i], 1};
  eng.forward(chunks, LogitsFor::Last);
  for (size_t i = 0; i < seqs.size(); ++i) {
    // Passes of up to kSmallRows (8) rows in all run the same per-row kernels as a single row.
    EXPECT_EQ(0, std::memcmp(&first[i * v], alone[2 * i].data(), size_t(v) * 4)) << i;
    EXPECT_EQ(0, std::memcmp(eng.logits() + i * v, alone[2 * i + 1].data(), size_t(v) * 4)) << i;
  }
}

}  // namespace
