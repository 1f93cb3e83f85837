// Generation loops: speculative (MTP) greedy equals plain greedy, batches equal single runs,
// limits and end-of-sequence, bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "core/error.h"
#include "infer/convert.h"
#include "infer/generator.h"
#include "infer/matmul.h"
#include "model/safetensors.h"

namespace {
using namespace dsv3;
using namespace dsv3::infer;

std::string fixture(const char* name) { return std::string(DSV3_TEST_DATA) + "/reference/" + name; }

class Speculative : public ::testing::TestWithParam<std::tuple<const char*, Precision>> {};

TEST_P(Speculative, GreedyOutputEqualsPlainGreedy) {
  auto [name, precision] = GetParam();
  Engine eng(InferWeights::load(fixture(name), precision));
  ASSERT_GE(eng.mtp_depths(), 1);
  Generator gen(eng);
  int total_accepted = 0;
  for (int32_t start : {3, 17, 99, 250}) {
    std::vector<int32_t> prompt = {start, start + 1, 7, 11};
    GenerateOptions o;
    o.max_new_tokens = 30;
    o.cache_dtype = precision == Precision::F32 ? DType::F32 : DType::BF16;
    GenerateStats plain_st, spec_st;
    auto plain = gen.generate(prompt, o, nullptr, &plain_st);
    o.speculative_mtp = true;
    auto spec = gen.generate(prompt, o, nullptr, &spec_st);
    EXPECT_EQ(plain, spec) << "prompt starting " << start;
    EXPECT_EQ(spec.size(), 30u);
    EXPECT_GT(spec_st.drafted, 0);
    EXPECT_LE(spec_st.accepted, spec_st.drafted);
    // Each verification pass yields one token, two when the draft is kept (the last pass may
    // be cut short by the limit).
    EXPECT_EQ(spec_st.passes, spec_st.drafted);
    EXPECT_LE(int(spec.size()), 1 + spec_st.drafted + spec_st.accepted);
    EXPECT_GE(int(spec.size()), spec_st.drafted + spec_st.accepted);
    total_accepted += spec_st.accepted;
  }
  RecordProperty("accepted", total_accepted);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Speculative,
                         ::testing::Combine(::testing::Values("tiny-v3", "wide-v3-fp8"),
                                            ::testing::Values(Precision::F32, Precision::BF16)));

TEST(Speculative, SamplingIsSeededAndRespectsLimits) {
  Engine eng(InferWeights::load(fixture("tiny-v3"), Precision::BF16));
  Generator gen(eng);
  GenerateOptions o;
  o.max_new_tokens = 25;
  o.speculative_mtp = true;
  o.sampling.temperature = 0.8f;
  o.sampling.top_k = 50;
  o.sampling.seed = 5;
  std::vector<int32_t> prompt = {1, 2, 3};
  auto a = gen.generate(prompt, o);
  auto b = gen.generate(prompt, o);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.size(), 25u);
  for (int32_t t : a) EXPECT_TRUE(t >= 0 && t < eng.config().vocab_size);
}

TEST(Generate, BatchEqualsIndividual) {
  Engine eng(InferWeights::load(fixture("tiny-v3"), Precision::BF16));
  Generator gen(eng);
  // 13 prompt tokens in all, more than kSmallRows: each prompt is still prefilled on its own, and
  // the decode passes (3 rows) run the row kernel, so batch and single runs agree bit for bit.
  std::vector<std::vector<int32_t>> prompts = {{5, 6, 7}, {300}, {9, 8, 7, 6, 5, 4, 3, 2, 1}};
  ASSERT_GT(int64_t(3 + 1 + 9), kSmallRows);
  for (float temperature : {0.0f, 0.9f}) {
    GenerateOptions o;
    o.max_new_tokens = 12;
    o.sampling.temperature = temperature;
    o.sampling.seed = 77;
    auto batch = gen.generate_batch(prompts, o);
    ASSERT_EQ(batch.size(), prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      GenerateOptions oi = o;
      oi.sampling.seed = o.sampling.seed + i;
      EXPECT_EQ(batch[i], gen.generate(prompts[i], oi)) << "sequence " << i << " T=" << temperature;
    }
  }
}

TEST(Generate, StopsAtEosAndLimit) {
  Engine eng(InferWeights::load(fixture("tiny-v3"), Precision::F32));
  Generator gen(eng);
  GenerateOptions o;
  o.max_new_tokens = 10;
  std::vector<int32_t> prompt = {4, 5};
  GenerateStats st;
  auto free_run = gen.generate(prompt, o, nullptr, &st);
  EXPECT_EQ(free_run.size(), 10u);
  EXPECT_EQ(st.finish_reason, "length");
  o.eos_ids = {free_run[3]};
  auto stopped = gen.generate(prompt, o, nullptr, &st);
  // Stops at the first occurrence of that id.
  size_t first = 0;
  while (free_run[first] != free_run[3]) ++first;
  EXPECT_EQ(stopped.size(), first + 1);
  EXPECT_EQ(st.finish_reason, "eos");
  // The callback can stop generation (Ctrl-C, stop strings).
  int seen = 0;
  auto cut = gen.generate(prompt, GenerateOptions{.max_new_tokens = 10},
                          [&](int32_t) { return ++seen < 4; }, &st);
  EXPECT_EQ(cut.size(), 4u);
  EXPECT_EQ(st.finish_reason, "stop");
}

TEST(BadInput, ClearErrors) {
  EXPECT_THROW(InferWeights::load("/nonexistent/model", Precision::BF16), Error);
  Engine eng(InferWeights::load(fixture("tiny-v2lite"), Precision::F32));
  Generator gen(eng);
  const ModelConfig& c = eng.config();
  GenerateOptions o;
  o.max_new_tokens = 4;
  // Prompt longer than the context.
  std::vector<int32_t> long_prompt(size_t(c.max_position_embeddings) + 1, 1);
  try {
    gen.generate(long_prompt, o);
    FAIL() << "no error for a prompt longer than the context";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context"), std::string::npos) << e.what();
  }
  // Prompt plus new tokens past the context.
  std::vector<int32_t> near(size_t(c.max_position_embeddings) - 2, 1);
  EXPECT_THROW(gen.generate(near, o), Error);
  // Out-of-vocabulary ids, empty prompt, bad limits.
  std::vector<int32_t> bad = {1, c.vocab_size};
  EXPECT_THROW(gen.generate(bad, o), Error);
  std::vector<int32_t> negative = {-1};
  EXPECT_THROW(gen.generate(negative, o), Error);
  EXPECT_THROW(gen.generate({}, o), Error);
  std::vector<int32_t> ok = {1, 2};
  EXPECT_THROW(gen.generate(ok, GenerateOptions{.max_new_tokens = 0}), Error);
  // A model without MTP weights cannot decode speculatively.
  o.speculative_mtp = true;
  EXPECT_THROW(gen.generate(ok, o), Error);
  // A cache that is full refuses more tokens.
  LatentCache cache = eng.make_cache(2, DType::BF16);
  std::vector<int32_t> three = {1, 2, 3};
  Chunk ch{&cache, three.data(), 3};
  EXPECT_THROW(eng.forward({&ch, 1}, LogitsFor::Last), Error);
}

TEST(BadInput, UnsupportedWeightDtypeAndMissingTensor) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "dsv3_infer_bad_dtype";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(fixture("tiny-v2lite") + "/config.json", dir / "config.json");
  // Every tensor as in the fixture, but the embedding stored as int32.
  WeightStore src = WeightStore::open(fixture("tiny-v2lite") + "/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& name : src.names()) {
    Tensor t = src.get(name);
    if (name == "model.embed_tokens.weight") t = Tensor::zeros(t.shape(), DType::I32);
    tensors.emplace_back(name, t);
  }
  write_safetensors((dir / "model.safetensors").string(), tensors);
  try {
    InferWeights::load(dir.string(), Precision::BF16);
    FAIL() << "int32 weights were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.embed_tokens.weight"), std::string::npos) << e.what();
  }
  tensors.erase(tensors.begin());
  write_safetensors((dir / "model.safetensors").string(), tensors);
  EXPECT_THROW(InferWeights::load(dir.string(), Precision::BF16), Error);
  fs::remove(dir / "model.safetensors");
  EXPECT_THROW(InferWeights::load(dir.string(), Precision::BF16), Error);
  fs::remove_all(dir);
}

TEST(Convert, Fp8RoundTripKeepsTheModel) {
  namespace fs = std::filesystem;
  const fs::path tmp = fs::temp_directory_path() / "dsv3_infer_convert";
  fs::remove_all(tmp);
  // BF16 -> FP8: projections become E4M3 with 128x128 scales; the model still decodes close to
  // the original (FP8 keeps 4 significant bits: logits move by a few percent at most).
  convert_checkpoint(fixture("tiny-v3-bf16"), (tmp / "fp8").string(), CheckpointFormat::FP8);
  WeightStore fp8 = WeightStore::open((tmp / "fp8").string());
  EXPECT_EQ(fp8.info("model.layers.0.self_attn.q_b_proj.weight").dtype, DType::F8E4M3);
  EXPECT_TRUE(fp8.has("model.layers.0.self_attn.q_b_proj.weight_scale_inv"));
  EXPECT_EQ(fp8.info("lm_head.weight").dtype, DType::BF16);
  EXPECT_EQ(ModelConfig::load((tmp / "fp8").string()).fp8_weights, true);
  // FP8 -> BF16 of the release-format fixture: dequantized weights rounded to BF16.
  convert_checkpoint(fixture("wide-v3-fp8"), (tmp / "bf16").string(), CheckpointFormat::BF16);
  WeightStore bf16 = WeightStore::open((tmp / "bf16").string());
  EXPECT_EQ(bf16.info("model.layers.0.self_attn.q_b_proj.weight").dtype, DType::BF16);
  EXPECT_FALSE(bf16.has("model.layers.0.self_attn.q_b_proj.weight_scale_inv"));
  EXPECT_FALSE(ModelConfig::load((tmp / "bf16").string()).fp8_weights);
  // Both decode the fixture prompt to logits near the expected ones.
  for (auto [dir, expected, tol] :
       {std::tuple{tmp / "bf16", fixture("wide-v3-fp8"), 2e-2},
        std::tuple{tmp / "fp8", fixture("tiny-v3-bf16"), 1e-1}}) {
    Engine eng(InferWeights::load(dir.string(), Precision::F32));
    WeightStore batch = WeightStore::open(expected + "/batch.safetensors");
    WeightStore exp = WeightStore::open(expected + "/expected.safetensors");
    Tensor tokens = batch.get("tokens");
    const int64_t t = tokens.dim(1), v = eng.config().vocab_size;
    LatentCache cache = eng.make_cache(int(t), DType::F32);
    Chunk ch{&cache, tokens.i32(), int(t)};
    eng.forward({&ch, 1}, LogitsFor::All);
    const float* ref = exp.get("logits").f32();
    double md = 0, mr = 0;
    for (int64_t i = 0; i < t * v; ++i) {
      md = std::max(md, double(std::fabs(eng.logits()[i] - ref[i])));
      mr = std::max(mr, double(std::fabs(ref[i])));
    }
    EXPECT_LE(md / mr, tol) << dir;
    EXPECT_GT(md, 0.0) << dir;  // the conversion did change the weights
  }
  fs::remove_all(tmp);
}

}  // namespace

namespace {
// Speculative sampling keeps the main model's distribution: the empirical distribution of the
// first two generated tokens over many seeds matches plain sampling's (top-k 3 keeps 9 cells).
TEST(Speculative, SamplingKeepsTheDistribution) {
  using namespace dsv3;
  using namespace dsv3::infer;
  Engine eng(InferWeights::load(std::string(DSV3_TEST_DATA) + "/reference/tiny-v3", Precision::BF16));
  Generator gen(eng);
  std::vector<int32_t> prompt = {11, 12, 13};
  const int runs = 600;
  std::map<std::pair<int32_t, int32_t>, int> plain, spec;
  int drafted = 0, accepted = 0;
  for (int s = 0; s < runs; ++s) {
    GenerateOptions o;
    o.max_new_tokens = 2;
    o.sampling.temperature = 3.0f;
    o.sampling.top_k = 3;
    o.sampling.seed = uint64_t(s);
    auto a = gen.generate(prompt, o);
    plain[{a[0], a[1]}]++;
    o.speculative_mtp = true;
    o.sampling.seed = uint64_t(s) + 100000;
    GenerateStats st;
    auto b = gen.generate(prompt, o, nullptr, &st);
    spec[{b[0], b[1]}]++;
    drafted += st.drafted;
    accepted += st.accepted;
  }
  std::set<std::pair<int32_t, int32_t>> cells;
  for (auto& [k, v] : plain) cells.insert(k);
  for (auto& [k, v] : spec) cells.insert(k);
  EXPECT_LE(cells.size(), 9u);
  for (const auto& cell : cells) {
    const double p = double(plain[cell]) / runs, q = double(spec[cell]) / runs;
    // 4 standard deviations of the difference of two frequencies.
    const double sd = std::sqrt(2 * std::max(p, 1.0 / runs) * (1 - p) / runs);
    EXPECT_LE(std::fabs(p - q), 4 * sd + 1e-9) << cell.first << "," << cell.second;
  }
  std::printf("speculative sampling: %d of %d drafts accepted\n", accepted, drafted);
  EXPECT_GT(drafted, 0);
}
}  // namespace
