#pragma once
// The model configuration: a Hugging Face config.json of DeepseekV3ForCausalLM (and the
// DeepSeek-V2 keys it shares). Absent keys take Hugging Face's defaults; an invalid value is
// refused with an error naming the key; features dsv3 does not implement are refused explicitly.
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>

namespace dsv3 {

struct RopeScaling {
  bool yarn = false;  // only "yarn" is supported; null means plain RoPE
  double factor = 1.0;
  double original_max_position_embeddings = 4096;
  double beta_fast = 32;
  double beta_slow = 1;
  double mscale = 1;
  double mscale_all_dim = 0;
};

// Training hyperparameters that live beside the model (the fixtures' "train" block).
struct TrainHyper {
  double mtp_lambda = 0.3;
  double balance_alpha = 1e-4;
  double bias_gamma = 0.001;
  double lr = 2.2e-4;
  double beta1 = 0.9, beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip = 1.0;
};

enum class ScoringFunc { Sigmoid, Softmax };

struct ModelConfig {
  int vocab_size = 129280;
  int hidden_size = 7168;
  int intermediate_size = 18432;
  int moe_intermediate_size = 2048;
  int num_hidden_layers = 61;
  int num_nextn_predict_layers = 1;
  int num_attention_heads = 128;
  int num_key_value_heads = 128;
  int n_shared_experts = 1;
  int n_routed_experts = 256;
  double routed_scaling_factor = 2.5;
  int kv_lora_rank = 512;
  std::optional<int> q_lora_rank = 1536;
  int qk_rope_head_dim = 64;
  int v_head_dim = 128;
  int qk_nope_head_dim = 128;
  std::string topk_method = "noaux_tc";
  int n_group = 8;
  int topk_group = 4;
  int num_experts_per_tok = 8;
  int first_k_dense_replace = 3;
  int moe_layer_freq = 1;
  bool norm_topk_prob = true;
  ScoringFunc scoring_func = ScoringFunc::Sigmoid;
  int max_position_embeddings = 4096;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  std::optional<int> bos_token_id, eos_token_id;
  std::string torch_dtype = "bfloat16";
  // Block-scaled FP8 weights (quantization_config with fmt e4m3, weight_block_size [128,128]).
  bool fp8_weights = false;
  int fp8_block_rows = 128, fp8_block_cols = 128;
  TrainHyper train;

  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool has_bias() const { return topk_method == "noaux_tc"; }
  bool is_moe_layer(int layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // Total and active (per token) parameter counts, MTP modules included.
  long long parameter_count() const;
  long long active_parameter_count() const;

  static ModelConfig from_json(const nlohmann::json& j, const std::string& where);
  static ModelConfig load(const std::string& path);  // a config.json, or a folder holding one
  nlohmann::json to_json() const;                    // a Hugging Face config.json
};

}  // namespace dsv3
