// `dsv3 export --gguf`, read back with the test-only GGUF reader: llama.cpp's deepseek2 keys,
// tensor names, dimension order and contents (kv_b_proj split and transposed, experts stacked,
// BF16 rounding, FP8 dequantized), the vocabulary of a trained tokenizer, and bad input refused.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "../gguf_reader.h"
#include "core/dtype.h"
#include "core/error.h"
#include "infer/convert.h"
#include "infer/gguf_export.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tokenizer/trainer.h"

namespace {
using namespace dsv3;
using namespace dsv3::infer;
namespace fs = std::filesystem;

std::string fixture(const char* name) { return std::string(DSV3_TEST_DATA) + "/reference/" + name; }

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "dsv3-export-XXXXXX").string();
    path = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

test::GgufFile export_and_read(const std::string& dir, const fs::path& out,
                               gguf::TensorType dtype = gguf::TensorType::F32) {
  GgufExportOptions o;
  o.dtype = dtype;
  const GgufExportReport r = export_gguf(dir, out.string(), o);
  EXPECT_EQ(r.bytes, fs::file_size(out));
  return test::GgufReader::read(out.string());
}

std::vector<float> f32_of(const WeightStore& s, const std::string& name) {
  Tensor t = s.get(name).to_f32();
  return std::vector<float>(t.f32(), t.f32() + t.numel());
}

TEST(GgufExport, HyperparametersOfTinyV3) {
  TempDir tmp;
  const test::GgufFile f = export_and_read(fixture("tiny-v3"), tmp.path / "m.gguf");
  auto u = [&](const std::string& k) { return f.kv.at(k).u; };
  auto fl = [&](const std::string& k) { return f.kv.at(k).f; };
  EXPECT_EQ(f.kv.at("general.architecture").s, "deepseek2");
  EXPECT_EQ(u("general.file_type"), 0u);
  EXPECT_EQ(u("deepseek2.vocab_size"), 512u);
  EXPECT_EQ(u("deepseek2.block_count"), 3u);  // the MTP layer (model.layers.3) is left out
  EXPECT_EQ(u("deepseek2.context_length"), 64u);
  EXPECT_EQ(u("deepseek2.embedding_length"), 64u);
  EXPECT_EQ(u("deepseek2.feed_forward_length"), 128u);
  EXPECT_EQ(u("deepseek2.attention.head_count"), 4u);
  EXPECT_EQ(u("deepseek2.attention.head_count_kv"), 1u);
  EXPECT_EQ(u("deepseek2.attention.key_length"), 32u + 8u);
  EXPECT_EQ(u("deepseek2.attention.value_length"), 32u);
  EXPECT_EQ(u("deepseek2.attention.key_length_mla"), 16u + 8u);
  EXPECT_EQ(u("deepseek2.attention.value_length_mla"), 16u);
  EXPECT_EQ(u("deepseek2.attention.q_lora_rank"), 48u);
  EXPECT_EQ(u("deepseek2.attention.kv_lora_rank"), 32u);
  EXPECT_FLOAT_EQ(fl("deepseek2.attention.layer_norm_rms_epsilon"), 1e-6f);
  EXPECT_EQ(u("deepseek2.rope.dimension_count"), 8u);
  EXPECT_EQ(fl("deepseek2.rope.freq_base"), 10000.0);
  EXPECT_EQ(f.kv.at("deepseek2.rope.scaling.type").s, "yarn");
  EXPECT_EQ(fl("deepseek2.rope.scaling.factor"), 4.0);
  EXPECT_EQ(u("deepseek2.rope.scaling.original_context_length"), 16u);
  EXPECT_EQ(fl("deepseek2.rope.scaling.yarn_beta_fast"), 32.0);
  EXPECT_EQ(fl("deepseek2.rope.scaling.yarn_beta_slow"), 1.0);
  EXPECT_FLOAT_EQ(fl("deepseek2.rope.scaling.yarn_log_multiplier"), 0.1f);
  EXPECT_EQ(u("deepseek2.leading_dense_block_count"), 1u);
  EXPECT_EQ(u("deepseek2.expert_feed_forward_length"), 32u);
  EXPECT_EQ(u("deepseek2.expert_shared_count"), 1u);
  EXPECT_EQ(u("deepseek2.expert_count"), 16u);
  EXPECT_EQ(u("deepseek2.expert_used_count"), 4u);
  EXPECT_EQ(u("deepseek2.expert_group_count"), 4u);
  EXPECT_EQ(u("deepseek2.expert_group_used_count"), 2u);
  EXPECT_EQ(fl("deepseek2.expert_weights_scale"), 2.5);
  EXPECT_EQ(u("deepseek2.expert_weights_norm"), 1u);
  EXPECT_EQ(u("deepseek2.expert_gating_func"), 2u);  // sigmoid
  EXPECT_EQ(f.kv.at("tokenizer.ggml.model").s, "none");
  EXPECT_EQ(f.kv.count("tokenizer.ggml.tokens"), 0u);
}

TEST(GgufExport, TensorsOfTinyV3) {
  TempDir tmp;
  const std::string dir = fixture("tiny-v3");
  const test::GgufFile f = export_and_read(dir, tmp.path / "m.gguf");
  const WeightStore s = WeightStore::open(dir);
  // 1 embedding + 1 norm + 1 head; dense layer 0: 2 norms + 8 attention (q_a, q_a_norm, q_b,
  // kv_a_mqa, kv_a_norm, k_b, v_b, output) + 3 FFN; MoE layers 1-2: 2 norms + 8 attention + gate
  // + bias + 3 stacked experts + 3 shared.
  EXPECT_EQ(f.tensors.size(), 3u + 13u + 2u * 18u);
  for (const auto& t : f.tensors) EXPECT_EQ(t.name.rfind("blk.3.", 0), std::string::npos) << t.name;

  EXPECT_EQ(f.tensor("token_embd.weight").ne, (std::vector<uint64_t>{64, 512}));
  EXPECT_EQ(f.data<float>("token_embd.weight"), f32_of(s, "model.embed_tokens.weight"));
  EXPECT_EQ(f.data<float>("output.weight"), f32_of(s, "lm_head.weight"));
  EXPECT_EQ(f.data<float>("output_norm.weight"), f32_of(s, "model.norm.weight"));
  EXPECT_EQ(f.tensor("blk.0.attn_q_a.weight").ne, (std::vector<uint64_t>{64, 48}));
  EXPECT_EQ(f.tensor("blk.0.attn_q_b.weight").ne, (std::vector<uint64_t>{48, 4 * 24}));
  EXPECT_EQ(f.tensor("blk.0.attn_kv_a_mqa.weight").ne, (std::vector<uint64_t>{64, 40}));
  EXPECT_EQ(f.tensor("blk.0.attn_output.weight").ne, (std::vector<uint64_t>{64, 64}));
  EXPECT_EQ(f.tensor("blk.0.ffn_gate.weight").ne, (std::vector<uint64_t>{64, 128}));
  EXPECT_EQ(f.tensor("blk.0.ffn_down.weight").ne, (std::vector<uint64_t>{128, 64}));
  EXPECT_EQ(f.data<float>("blk.0.ffn_down.weight"),
            f32_of(s, "model.layers.0.mlp.down_proj.weight"));
  EXPECT_EQ(f.data<float>("blk.2.attn_q_a_norm.weight"),
            f32_of(s, "model.layers.2.self_attn.q_a_layernorm.weight"));
  EXPECT_FALSE(f.has_tensor("blk.0.ffn_gate_inp.weight"));

  // kv_b_proj [H * (nope + v), R]: per head the key rows transposed, then the value rows.
  const std::vector<float> kv_b = f32_of(s, "model.layers.1.self_attn.kv_b_proj.weight");
  const int64_t h = 4, nope = 16, v = 16, r = 32;
  ASSERT_EQ(f.tensor("blk.1.attn_k_b.weight").ne, (std::vector<uint64_t>{16, 32, 4}));
  ASSERT_EQ(f.tensor("blk.1.attn_v_b.weight").ne, (std::vector<uint64_t>{32, 16, 4}));
  const std::vector<float> k_b = f.data<float>("blk.1.attn_k_b.weight");
  const std::vector<float> v_b = f.data<float>("blk.1.attn_v_b.weight");
  for (int64_t head = 0; head < h; ++head)
    for (int64_t j = 0; j < r; ++j) {
      for (int64_t i = 0; i < nope; ++i)
        ASSERT_EQ(k_b[size_t((head * r + j) * nope + i)],
                  kv_b[size_t((head * (nope + v) + i) * r + j)]);
      for (int64_t i = 0; i < v; ++i)
        ASSERT_EQ(v_b[size_t((head * v + i) * r + j)],
                  kv_b[size_t((head * (nope + v) + nope + i) * r + j)]);
    }

  // Experts stacked in expert order: ne {cols, rows, E}.
  ASSERT_EQ(f.tensor("blk.2.ffn_gate_exps.weight").ne, (std::vector<uint64_t>{64, 32, 16}));
  ASSERT_EQ(f.tensor("blk.2.ffn_down_exps.weight").ne, (std::vector<uint64_t>{32, 64, 16}));
  const std::vector<float> up = f.data<float>("blk.2.ffn_up_exps.weight");
  for (int e = 0; e < 16; ++e) {
    const std::vector<float> want =
        f32_of(s, "model.layers.2.mlp.experts." + std::to_string(e) + ".up_proj.weight");
    EXPECT_TRUE(std::equal(want.begin(), want.end(), up.begin() + e * 32 * 64)) << "expert " << e;
  }
  EXPECT_EQ(f.tensor("blk.1.ffn_gate_inp.weight").ne, (std::vector<uint64_t>{64, 16}));
  EXPECT_EQ(f.data<float>("blk.1.exp_probs_b.bias"),
            f32_of(s, "model.layers.1.mlp.gate.e_score_correction_bias"));
  EXPECT_EQ(f.tensor("blk.1.ffn_gate_shexp.weight").ne, (std::vector<uint64_t>{64, 32}));
  EXPECT_EQ(f.data<float>("blk.1.ffn_down_shexp.weight"),
            f32_of(s, "model.layers.1.mlp.shared_experts.down_proj.weight"));
}

// BF16: matrices rounded to nearest even; norms, router gate and bias stay F32.
TEST(GgufExport, Bf16MatricesFloat32Vectors) {
  TempDir tmp;
  const std::string dir = fixture("tiny-v3");
  const test::GgufFile f = export_and_read(dir, tmp.path / "m.gguf", gguf::TensorType::BF16);
  const WeightStore s = WeightStore::open(dir);
  EXPECT_EQ(f.kv.at("general.file_type").u, 32u);
  EXPECT_EQ(f.tensor("blk.1.attn_q_b.weight").type, 30u);
  EXPECT_EQ(f.tensor("blk.1.ffn_gate_exps.weight").type, 30u);
  EXPECT_EQ(f.tensor("blk.1.attn_norm.weight").type, 0u);
  EXPECT_EQ(f.tensor("blk.1.ffn_gate_inp.weight").type, 0u);
  EXPECT_EQ(f.tensor("blk.1.exp_probs_b.bias").type, 0u);
  const std::vector<float> src = f32_of(s, "model.layers.1.self_attn.q_b_proj.weight");
  const std::vector<uint16_t> got = f.data<uint16_t>("blk.1.attn_q_b.weight");
  ASSERT_EQ(got.size(), src.size());
  for (size_t i = 0; i < src.size(); ++i) ASSERT_EQ(got[i], f32_to_bf16(src[i])) << i;
  EXPECT_EQ(f.data<float>("blk.1.ffn_gate_inp.weight"),
            f32_of(s, "model.layers.1.mlp.gate.weight"));
}

// FP8 weights: e4m3 value x the 128x128 block's scale (edge blocks partial), exact in F32.
TEST(GgufExport, Fp8IsDequantized) {
  TempDir tmp;
  const std::string dir = fixture("wide-v3-fp8");
  const test::GgufFile f = export_and_read(dir, tmp.path / "m.gguf");
  const WeightStore s = WeightStore::open(dir);
  const ModelConfig c = ModelConfig::load(dir);
  const std::string name = "model.layers.1.self_attn.q_b_proj.weight";
  const Tensor q = s.get(name);
  ASSERT_EQ(q.dtype(), DType::F8E4M3);
  const Tensor scale = s.get(name + "_scale_inv").to_f32();
  const int64_t rows = q.dim(0), cols = q.dim(1);
  const std::vector<float> got = f.data<float>("blk.1.attn_q_b.weight");
  ASSERT_EQ(int64_t(got.size()), rows * cols);
  const uint8_t* qp = static_cast<const uint8_t*>(q.data());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      ASSERT_EQ(got[size_t(i * cols + j)],
                f8e4m3_to_f32(qp[i * cols + j]) *
                    scale.f32()[(i / c.fp8_block_rows) * scale.dim(1) + j / c.fp8_block_cols]);
}

// A tokenizer trained by dsv3 becomes llama.cpp's gpt2 vocabulary with the deepseek-v3
// pre-tokenizer; ids the tokenizer does not use are unused "[PAD<id>]" tokens.
TEST(GgufExport, TrainedTokenizerBecomesTheVocabulary) {
  TempDir tmp;
  const fs::path corpus = tmp.path / "corpus.txt";
  {
    std::ofstream out(corpus);
    for (int i = 0; i < 200; ++i)
      out << "The quick brown fox jumps over the lazy dog " << i << ". 今天天气很好。\n";
  }
  tok::TrainerOptions to;
  to.vocab_size = 300;
  const tok::TrainedTokenizer trained = tok::train_bpe({corpus.string()}, to);
  const fs::path model_dir = tmp.path / "model";
  ModelConfig c = ModelConfig::load(fixture("tiny-v2lite"));
  c.vocab_size = 320;
  ModelWeights w(c);
  w.init_random(5, 0.02f);
  write_checkpoint(model_dir.string(), c.to_json(), w.named_tensors(), CheckpointFormat::F32);
  tok::write_trained(trained, (model_dir / "tokenizer.json").string());

  const test::GgufFile f = export_and_read(model_dir.string(), tmp.path / "m.gguf");
  EXPECT_EQ(f.kv.at("tokenizer.ggml.model").s, "gpt2");
  EXPECT_EQ(f.kv.at("tokenizer.ggml.pre").s, "deepseek-v3");
  const auto& tokens = f.kv.at("tokenizer.ggml.tokens").items;
  const auto& types = f.kv.at("tokenizer.ggml.token_type").items;
  ASSERT_EQ(tokens.size(), 320u);
  ASSERT_EQ(types.size(), 320u);
  const auto& specials = tok::default_special_tokens();
  for (size_t i = 0; i < specials.size(); ++i) {
    EXPECT_EQ(tokens[i].s, specials[i]);
    EXPECT_EQ(types[i].i, 3) << specials[i];  // control
  }
  EXPECT_EQ(types[specials.size()].i, 1);  // the first byte token: normal
  EXPECT_EQ(tokens[319].s, "[PAD319]");
  EXPECT_EQ(types[319].i, 5);  // unused
  EXPECT_EQ(f.kv.at("tokenizer.ggml.merges").items.size(), trained.merges);
  EXPECT_EQ(f.kv.at("tokenizer.ggml.merges").items[0].s.find(' ') != std::string::npos, true);
  EXPECT_EQ(f.kv.at("tokenizer.ggml.bos_token_id").u, 0u);
  EXPECT_EQ(f.kv.at("tokenizer.ggml.eos_token_id").u, 1u);
  EXPECT_EQ(f.kv.at("tokenizer.ggml.add_bos_token").u, 1u);
  EXPECT_EQ(f.kv.at("tokenizer.ggml.add_eos_token").u, 0u);

  // Without the vocabulary (--no-vocab): ids only.
  GgufExportOptions o;
  o.vocab = false;
  export_gguf(model_dir.string(), (tmp.path / "bare.gguf").string(), o);
  const test::GgufFile bare = test::GgufReader::read((tmp.path / "bare.gguf").string());
  EXPECT_EQ(bare.kv.at("tokenizer.ggml.model").s, "none");
  EXPECT_EQ(bare.kv.at("deepseek2.vocab_size").u, 320u);
}

// A copy of a fixture folder with its config edited.
fs::path edited_copy(const fs::path& root, const char* name,
                     const std::function<void(nlohmann::json&)>& edit) {
  const fs::path dir = root / name;
  fs::create_directories(dir);
  fs::copy_file(fixture("tiny-v3") + "/model.safetensors", dir / "model.safetensors");
  nlohmann::json j;
  std::ifstream(fixture("tiny-v3") + "/config.json") >> j;
  edit(j);
  std::ofstream(dir / "config.json") << j.dump(2);
  return dir;
}

void expect_error(const std::string& dir, const std::string& out, const std::string& needle,
                  bool out_exists = false) {
  try {
    export_gguf(dir, out);
    ADD_FAILURE() << "exporting " << dir << " did not fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  std::error_code ec;
  if (!out_exists) {
    EXPECT_FALSE(fs::exists(out, ec)) << out << " was written";
  }
}

TEST(GgufExport, RefusesBadInput) {
  TempDir tmp;
  const std::string out = (tmp.path / "out.gguf").string();
  expect_error((tmp.path / "nowhere").string(), out, "not a checkpoint folder");
  fs::create_directories(tmp.path / "empty");
  expect_error((tmp.path / "empty").string(), out, "has no config.json");
  expect_error(fixture("tiny-v3"), (tmp.path / "no-such-folder" / "m.gguf").string(),
               "does not exist");
  expect_error(fixture("tiny-v3"), tmp.path.string(), "is a folder", true);
  auto freq = edited_copy(tmp.path, "freq", [](nlohmann::json& j) { j["moe_layer_freq"] = 2; });
  expect_error(freq.string(), out, "moe_layer_freq");
  auto mscale = edited_copy(tmp.path, "mscale",
                            [](nlohmann::json& j) { j["rope_scaling"]["mscale"] = 0.707; });
  expect_error(mscale.string(), out, "mscale");
  auto groups = edited_copy(tmp.path, "groups",
                            [](nlohmann::json& j) { j["topk_method"] = "group_limited_greedy"; });
  expect_error(groups.string(), out, "group-limited");
  auto shared =
      edited_copy(tmp.path, "shared", [](nlohmann::json& j) { j["n_shared_experts"] = 0; });
  expect_error(shared.string(), out, "shared experts");
  auto layers = edited_copy(tmp.path, "layers", [](nlohmann::json& j) {
    j["num_hidden_layers"] = 5;
    j["num_nextn_predict_layers"] = 0;
  });
  expect_error(layers.string(), out, "model.layers.4.");
  auto wide = edited_copy(tmp.path, "wide", [](nlohmann::json& j) { j["hidden_size"] = 80; });
  expect_error(wide.string(), out, "shape");
}

}  // namespace
