// The training loop end to end on a tiny model: exact resume, refusals, the NaN guard,
// checkpoints loadable as models, and the schedules.
#include <cmath>
#include <fstream>

#include <gtest/gtest.h>

#include "data_test_util.h"
#include "model/safetensors.h"
#include "train/checkpoint.h"
#include "train/data/prepare.h"
#include "train/schedule.h"
#include "train/default_run.h"
#include "train/trainer.h"

namespace dsv3 {
namespace {

ModelConfig tiny_model(int vocab) {
  nlohmann::json j = {{"vocab_size", vocab}, {"hidden_size", 32}, {"intermediate_size", 64},
                      {"moe_intermediate_size", 16}, {"num_hidden_layers", 2},
                      {"first_k_dense_replace", 1}, {"num_attention_heads", 2},
                      {"q_lora_rank", 16}, {"kv_lora_rank", 16}, {"qk_nope_head_dim", 8},
                      {"qk_rope_head_dim", 4}, {"v_head_dim", 8}, {"n_routed_experts", 8},
                      {"n_shared_experts", 1}, {"num_experts_per_tok", 2}, {"n_group", 2},
                      {"topk_group", 1}, {"num_nextn_predict_layers", 1},
                      {"max_position_embeddings", 64}};
  return ModelConfig::from_json(j, "tiny");
}

// A prepared corpus of a few dozen short English-like documents and its tokenizer.
struct TinyRun {
  testing::ScratchDir dir;
  std::string tokenizer_dir, data_dir;
  TinyRun() {
    tokenizer_dir = dir / "tok";
    std::string tokenizer = testing::write_tiny_tokenizer(tokenizer_dir);
    const char* words[] = {"the ", "state ", "of ", "union ", "is ", "strong ", "and ", "we "};
    for (int d = 0; d < 40; ++d) {
      std::string text;
      for (int w = 0; w < 60; ++w) text += words[(d * 7 + w * w) % 8];
      testing::write_file(dir / ("corpus/doc" + std::to_string(d) + ".txt"), text);
    }
    data_dir = dir / "data";
    PrepareOptions p;
    p.tokenizer_path = tokenizer;
    p.out_dir = data_dir;
    p.inputs = {dir / "corpus"};
    p.val_fraction = 0.1;
    prepare_dataset(p);
  }
  TrainSettings settings(const std::string& run) const {
    TrainSettings s;
    s.run_dir = run;
    s.data_dir = data_dir;
    s.tokenizer_dir = tokenizer_dir;
    s.model = tiny_model(testing::TinyTokenizerIds::vocab);
    s.seq = 32;
    s.micro_batch = 2;
    s.start_micro_batches = 1;
    s.micro_batches = 2;
    s.steps = 8;
    s.warmup_steps = 2;
    s.lr = 3e-3;
    s.eval_every = 4;
    s.eval_batches = 2;
    s.save_every = 3;
    s.balance_alpha = 0.01;
    s.bias_gamma = 0.01;
    s.threads = 2;
    return s;
  }
};

std::vector<nlohmann::json> read_metrics(const std::string& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(Trainer, ResumedRunReproducesTheLossesBitForBit) {
  TinyRun t;
  train(t.settings(t.dir / "straight"));
  TrainSettings first = t.settings(t.dir / "interrupted");
  first.stop_after = 5;  // stops between checkpoints' regular cadence, with its own save
  train(first);
  TrainSettings second = t.settings(t.dir / "interrupted");
  second.resume = true;
  train(second);

  auto a = read_metrics(t.dir / "straight"), b = read_metrics(t.dir / "interrupted");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    // Exact equality: doubles are logged with round-trip precision.
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>());
    EXPECT_EQ(a[i].value("val_loss", -1.0), b[i].value("val_loss", -1.0));
  }
  EXPECT_LT(a.back()["loss_main"].get<double>(), a.front()["loss_main"].get<double>());
}

TEST(Trainer, CheckpointIsAModelFolderWithTrainingStateBeside) {
  TinyRun t;
  TrainOutcome out = train(t.settings(t.dir / "run"));
  const std::string ckpt = out.last_checkpoint;
  ASSERT_FALSE(ckpt.empty());
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json",
                        "tokenizer_config.json", "trainer_state/optimizer.safetensors",
                        "trainer_state/state.json"})
    EXPECT_TRUE(std::filesystem::exists(ckpt + "/" + f)) << f;
  // Hugging Face names, gate and up projections separate, MTP at layer num_hidden_layers.
  WeightStore store = WeightStore::open(ckpt);
  EXPECT_TRUE(store.has("model.layers.1.mlp.experts.3.gate_proj.weight"));
  EXPECT_TRUE(store.has("model.layers.1.mlp.experts.3.up_proj.weight"));
  EXPECT_TRUE(store.has("model.layers.1.mlp.gate.e_score_correction_bias"));
  EXPECT_TRUE(store.has("model.layers.2.eh_proj.weight"));
  EXPECT_TRUE(store.has("lm_head.weight"));
  // The biases moved (loss-free balancing is on).
  Tensor bias = store.get("model.layers.1.mlp.gate.e_score_correction_bias");
  double moved = 0;
  for (int64_t i = 0; i < bias.numel(); ++i) moved += std::fabs(bias.f32()[i]);
  EXPECT_GT(moved, 0.0);
  // keep_last = 3 of the saves at steps 3, 6 and 8 (plus none older).
  EXPECT_EQ(latest_checkpoint(t.dir / "run"), ckpt);
}

TEST(Trainer, RefusesMismatchedResumes) {
  TinyRun t;
  TrainSettings s = t.settings(t.dir / "run");
  s.steps = 3;
  train(s);
  // Starting over in a folder with checkpoints needs --resume.
  EXPECT_THROW(train(s), Error);
  // A checkpoint from a different model config.
  TrainSettings other = s;
  other.resume = true;
  other.model.hidden_size = 48;
  try {
    train(other);
    FAIL() << "resumed into a different config";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("different model config"), std::string::npos) << e.what();
  }
  // Different run settings: the error names each one, with the value the run started with.
  TrainSettings longer = s;
  longer.resume = true;
  longer.steps = 5;
  longer.lr = s.lr * 2;
  try {
    train(longer);
    FAIL() << "resumed with different settings";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("steps 3 (now 5)"), std::string::npos) << what;
    EXPECT_NE(what.find("lr "), std::string::npos) << what;
  }
  // Resume with nothing to resume from.
  TrainSettings fresh = t.settings(t.dir / "empty");
  fresh.resume = true;
  EXPECT_THROW(train(fresh), Error);
}

TEST(Trainer, NonFiniteStepsAreSkippedThenStopTheRun) {
  TinyRun t;
  TrainSettings s = t.settings(t.dir / "run");
  s.lr = 1e30;  // the first update sends the weights to overflow
  s.warmup_steps = 0;
  s.clip = 0;
  s.max_bad_steps = 2;
  try {
    train(s);
    FAIL() << "a diverged run did not stop";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite steps in a row"), std::string::npos) << e.what();
  }
  auto m = read_metrics(t.dir / "run");
  ASSERT_GE(m.size(), 3u);
  EXPECT_TRUE(m.back().value("skipped", false));
  EXPECT_TRUE(latest_checkpoint(t.dir / "run").has_value());  // a usable checkpoint is left
}

TEST(Trainer, ResumingACompleteRunTrainsNothing) {
  TinyRun t;
  TrainSettings s = t.settings(t.dir / "run");
  s.steps = 2;
  TrainOutcome first = train(s);
  s.resume = true;
  TrainOutcome again = train(s);
  EXPECT_TRUE(again.already_complete);
  EXPECT_EQ(again.steps_done, 2);
  EXPECT_EQ(again.last_checkpoint, first.last_checkpoint);
  EXPECT_EQ(read_metrics(t.dir / "run").size(), 2u);
}

TEST(Trainer, MissingDataIsAClearError) {
  TinyRun t;
  TrainSettings s = t.settings(t.dir / "run");
  s.data_dir = t.dir / "nowhere";
  EXPECT_THROW(train(s), Error);
}

TEST(Schedule, FollowsTheReportsShapeScaledToTheRun) {
  ScheduleSettings s;
  s.total_steps = 1000;
  s.warmup_steps = 100;
  s.peak_lr = 1.0;
  s.start_micro_batches = 1;
  s.full_micro_batches = 5;
  EXPECT_NEAR(schedule_at(s, 0).lr, 0.01, 1e-12);         // warmup
  EXPECT_NEAR(schedule_at(s, 99).lr, 1.0, 1e-12);
  EXPECT_NEAR(schedule_at(s, 500).lr, 1.0, 1e-12);        // constant
  double mid = (10.0 / 14.8 + 14.3 / 14.8) / 2 * 1000;
  EXPECT_NEAR(schedule_at(s, int64_t(mid)).lr, 0.55, 0.01);  // half-way down the cosine
  EXPECT_NEAR(schedule_at(s, 999).lr, 0.1, 1e-12);        // tail at 10%
  EXPECT_EQ(schedule_at(s, 0).micro_batches, 1);          // batch ramp
  EXPECT_EQ(schedule_at(s, 500).micro_batches, 5);
  EXPECT_DOUBLE_EQ(schedule_at(s, 100).mtp_lambda, 0.3);  // 0.1 for the last third
  EXPECT_DOUBLE_EQ(schedule_at(s, 900).mtp_lambda, 0.1);
  EXPECT_DOUBLE_EQ(schedule_at(s, 900).bias_gamma, 0.001);
  EXPECT_DOUBLE_EQ(schedule_at(s, 990).bias_gamma, 0.0);  // cut off for the last ~3%
}

TEST(Balance, MaxViolationIsWorstLoadOverMeanMinusOne) {
  float even[4] = {5, 5, 5, 5}, skewed[4] = {10, 2, 2, 2};
  EXPECT_DOUBLE_EQ(max_violation(even, 4), 0.0);
  EXPECT_DOUBLE_EQ(max_violation(skewed, 4), 10.0 / 4.0 - 1.0);
}

}  // namespace
}  // namespace dsv3

namespace dsv3 {
namespace {
// bench/configs/default-small.json is the built-in default model (benchmarks run it by file).
TEST(DefaultRun, BenchConfigFileIsTheBuiltInModel) {
  ModelConfig file = ModelConfig::load(std::string(DSV3_SOURCE_DIR) + "/bench/configs/default-small.json");
  EXPECT_EQ(file.to_json(), default_model_config().to_json());
}
}  // namespace
}  // namespace dsv3
