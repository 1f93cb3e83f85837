// Config loading: Hugging Face defaults, validation with the key named, explicit refusals.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"

namespace {

using json = nlohmann::json;

std::string error_of(const json& j) {
  try {
    dsv3::ModelConfig::from_json(j, "cfg.json");
  } catch (const dsv3::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Config, DefaultsAreDeepSeekV3s) {
  auto c = dsv3::ModelConfig::from_json(json::object(), "x");
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(*c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_TRUE(c.has_bias());
  // The published V3 sizes: 671.0B in the main model, 37.5B of them active per token; the MTP
  // module adds 11.6B of its own (the release's 685B also counts MTP's copies of the embedding
  // and head, which dsv3 shares as DESIGN.md prescribes). Both with MTP:
  EXPECT_NEAR(c.parameter_count() / 1e9, 671.03 + 11.61, 0.01);
  dsv3::ModelConfig main_only = c;
  main_only.num_nextn_predict_layers = 0;
  EXPECT_NEAR(main_only.parameter_count() / 1e9, 671.03, 0.01);
  EXPECT_NEAR(main_only.active_parameter_count() / 1e9, 37.55, 0.01);
}

TEST(Config, LoadsTheFixtures) {
  auto c = dsv3::ModelConfig::load(std::string(DSV3_TEST_DATA) + "/reference/tiny-v2lite");
  EXPECT_FALSE(c.q_lora_rank.has_value());
  EXPECT_EQ(c.scoring_func, dsv3::ScoringFunc::Softmax);
  EXPECT_FALSE(c.has_bias());
  EXPECT_TRUE(c.rope_scaling.yarn);
  EXPECT_DOUBLE_EQ(c.rope_scaling.mscale, 0.707);
  auto fp8 = dsv3::ModelConfig::load(std::string(DSV3_TEST_DATA) + "/reference/wide-v3-fp8");
  EXPECT_TRUE(fp8.fp8_weights);
  EXPECT_EQ(fp8.fp8_block_rows, 128);
}

TEST(Config, RoundTripsThroughJson) {
  auto c = dsv3::ModelConfig::load(std::string(DSV3_TEST_DATA) + "/reference/tiny-v3");
  auto again = dsv3::ModelConfig::from_json(c.to_json(), "round-trip");
  EXPECT_EQ(again.to_json(), c.to_json());
  EXPECT_EQ(c.to_json()["architectures"][0], "DeepseekV3ForCausalLM");
}

// Hugging Face's DeepseekV3 class always routes with sigmoid + noaux_tc: a model routed otherwise
// is written as the DeepSeek-V2 architecture, which reads scoring_func and topk_method.
TEST(Config, OtherRoutingIsWrittenAsDeepseekV2) {
  auto v2 = dsv3::ModelConfig::load(std::string(DSV3_TEST_DATA) + "/reference/tiny-v2lite");
  ASSERT_NE(v2.scoring_func, dsv3::ScoringFunc::Sigmoid);
  json j = v2.to_json();
  EXPECT_EQ(j["architectures"][0], "DeepseekV2ForCausalLM");
  EXPECT_EQ(j["model_type"], "deepseek_v2");
  EXPECT_EQ(dsv3::ModelConfig::from_json(j, "round-trip").to_json(), j);
  auto v3 = dsv3::ModelConfig::load(std::string(DSV3_TEST_DATA) + "/reference/tiny-v3");
  v3.topk_method = "greedy";
  EXPECT_EQ(v3.to_json()["architectures"][0], "DeepseekV2ForCausalLM");
}

TEST(Config, InvalidValuesNameTheKey) {
  struct Case {
    json config;
    const char* must_mention;
  };
  const Case cases[] = {
      {{{"hidden_size", "big"}}, "\"hidden_size\" must be an integer"},
      {{{"hidden_size", 0}}, "\"hidden_size\" = 0"},
      {{{"num_hidden_layers", -2}}, "\"num_hidden_layers\""},
      {{{"rms_norm_eps", -1.0}}, "\"rms_norm_eps\""},
      {{{"norm_topk_prob", 3}}, "\"norm_topk_prob\" must be true or false"},
      {{{"scoring_func", "relu"}}, "\"scoring_func\" = \"relu\""},
      {{{"n_routed_experts", 10}, {"n_group", 4}}, "\"n_group\" = 4 must divide"},
      {{{"topk_group", 9}}, "\"topk_group\" = 9 exceeds"},
      {{{"qk_rope_head_dim", 7}}, "\"qk_rope_head_dim\" = 7 must be even"},
      {{{"q_lora_rank", 0}}, "\"q_lora_rank\""},
      {{{"rope_scaling", {{"type", "linear"}, {"factor", 2}}}}, "only yarn"},
      {{{"rope_scaling", {{"type", "yarn"}, {"factor", -2}}}}, "\"factor\""},
  };
  for (const Case& c : cases) {
    std::string err = error_of(c.config);
    EXPECT_NE(err.find(c.must_mention), std::string::npos) << c.config.dump() << " gave: " << err;
    EXPECT_EQ(err.rfind("cfg.json", 0), 0u) << err;  // names the file first
  }
}

TEST(Config, RefusesUnsupportedFeaturesExplicitly) {
  EXPECT_NE(error_of({{"hidden_act", "gelu"}}).find("not supported"), std::string::npos);
  EXPECT_NE(error_of({{"attention_bias", true}}).find("not supported"), std::string::npos);
  EXPECT_NE(error_of({{"tie_word_embeddings", true}}).find("not supported"), std::string::npos);
  EXPECT_NE(error_of({{"topk_method", "magic"}}).find("not supported"), std::string::npos);
  EXPECT_NE(error_of({{"architectures", {"LlamaForCausalLM"}}}).find("LlamaForCausalLM"),
            std::string::npos);
  EXPECT_NE(error_of({{"quantization_config", {{"quant_method", "gptq"}}}}).find("not supported"),
            std::string::npos);
}

TEST(Config, MissingOrMalformedFile) {
  namespace fs = std::filesystem;
  EXPECT_THROW(dsv3::ModelConfig::load("/nonexistent/config.json"), dsv3::Error);
  fs::path p = fs::temp_directory_path() / "dsv3_bad_config.json";
  std::ofstream(p) << "{\"hidden_size\": 64,";
  try {
    dsv3::ModelConfig::load(p.string());
    FAIL() << "malformed JSON accepted";
  } catch (const dsv3::Error& e) {
    EXPECT_NE(std::string(e.what()).find("malformed JSON"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << e.what();
  }
  fs::remove(p);
}

}  // namespace
