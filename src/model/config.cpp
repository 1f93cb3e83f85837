#include "model/config.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv3 {
namespace {

using json = nlohmann::json;

// Reads keys from one JSON object, each with its type checked and its name in any error.
class KeyReader {
 public:
  KeyReader(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  void integer(const char* key, int* out, int min_value = 0) {
    if (!present(key)) return;
    const json& v = j_.at(key);
    DSV3_CHECK(v.is_number_integer(), "{}: key \"{}\" must be an integer, got {}", where_, key,
               v.dump());
    long long x = v.get<long long>();
    DSV3_CHECK(x >= min_value && x <= (1ll << 31) - 1, "{}: key \"{}\" = {} must be >= {}", where_,
               key, x, min_value);
    *out = int(x);
  }
  void optional_integer(const char* key, std::optional<int>* out, int min_value = 1) {
    if (!j_.contains(key)) return;
    if (j_.at(key).is_null()) {
      out->reset();
      return;
    }
    int x = 0;
    integer(key, &x, min_value);
    *out = x;
  }
  void number(const char* key, double* out, bool positive = false) {
    if (!present(key)) return;
    const json& v = j_.at(key);
    DSV3_CHECK(v.is_number(), "{}: key \"{}\" must be a number, got {}", where_, key, v.dump());
    double x = v.get<double>();
    DSV3_CHECK(std::isfinite(x) && (!positive || x > 0), "{}: key \"{}\" = {} must be {}", where_,
               key, v.dump(), positive ? "a positive number" : "finite");
    *out = x;
  }
  void boolean(const char* key, bool* out) {
    if (!present(key)) return;
    const json& v = j_.at(key);
    DSV3_CHECK(v.is_boolean(), "{}: key \"{}\" must be true or false, got {}", where_, key,
               v.dump());
    *out = v.get<bool>();
  }
  void string(const char* key, std::string* out) {
    if (!present(key)) return;
    const json& v = j_.at(key);
    DSV3_CHECK(v.is_string(), "{}: key \"{}\" must be a string, got {}", where_, key, v.dump());
    *out = v.get<std::string>();
  }

 private:
  bool present(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const json& j_;
  std::string where_;
};

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& where) {
  DSV3_CHECK(j.is_object(), "{}: a config must be a JSON object", where);
  ModelConfig c;
  if (j.contains("architectures") && j["architectures"].is_array()) {
    for (const auto& a : j["architectures"]) {
      std::string arch = a.is_string() ? a.get<std::string>() : a.dump();
      DSV3_CHECK(arch == "DeepseekV3ForCausalLM" || arch == "DeepseekV2ForCausalLM",
                 "{}: architecture \"{}\" is not supported (dsv3 runs DeepseekV3ForCausalLM and "
                 "DeepseekV2ForCausalLM)",
                 where, arch);
    }
  }
  if (j.contains("model_type") && j["model_type"].is_string()) {
    std::string type = j["model_type"];
    DSV3_CHECK(type == "deepseek_v3" || type == "deepseek_v2",
               "{}: model_type \"{}\" is not supported", where, type);
    if (type == "deepseek_v2") {
      // DeepSeek-V2's defaults where they differ from V3's.
      c.topk_method = "greedy";
      c.scoring_func = ScoringFunc::Softmax;
      c.norm_topk_prob = false;
      c.num_nextn_predict_layers = 0;
      c.routed_scaling_factor = 1.0;
    }
  }
  KeyReader r(j, where);
  r.integer("vocab_size", &c.vocab_size, 1);
  r.integer("hidden_size", &c.hidden_size, 1);
  r.integer("intermediate_size", &c.intermediate_size, 1);
  r.integer("moe_intermediate_size", &c.moe_intermediate_size, 1);
  r.integer("num_hidden_layers", &c.num_hidden_layers, 1);
  r.integer("num_nextn_predict_layers", &c.num_nextn_predict_layers, 0);
  r.integer("num_attention_heads", &c.num_attention_heads, 1);
  r.integer("num_key_value_heads", &c.num_key_value_heads, 1);
  r.integer("n_shared_experts", &c.n_shared_experts, 0);
  r.integer("n_routed_experts", &c.n_routed_experts, 0);
  r.number("routed_scaling_factor", &c.routed_scaling_factor, true);
  r.integer("kv_lora_rank", &c.kv_lora_rank, 1);
  r.optional_integer("q_lora_rank", &c.q_lora_rank);
  r.integer("qk_rope_head_dim", &c.qk_rope_head_dim, 2);
  r.integer("v_head_dim", &c.v_head_dim, 1);
  r.integer("qk_nope_head_dim", &c.qk_nope_head_dim, 0);
  r.string("topk_method", &c.topk_method);
  r.integer("n_group", &c.n_group, 1);
  r.integer("topk_group", &c.topk_group, 1);
  r.integer("num_experts_per_tok", &c.num_experts_per_tok, 1);
  r.integer("first_k_dense_replace", &c.first_k_dense_replace, 0);
  r.integer("moe_layer_freq", &c.moe_layer_freq, 1);
  r.boolean("norm_topk_prob", &c.norm_topk_prob);
  std::string scoring = c.scoring_func == ScoringFunc::Sigmoid ? "sigmoid" : "softmax";
  r.string("scoring_func", &scoring);
  DSV3_CHECK(scoring == "sigmoid" || scoring == "softmax",
             "{}: key \"scoring_func\" = \"{}\" must be \"sigmoid\" or \"softmax\"", where,
             scoring);
  c.scoring_func = scoring == "sigmoid" ? ScoringFunc::Sigmoid : ScoringFunc::Softmax;
  r.integer("max_position_embeddings", &c.max_position_embeddings, 1);
  r.number("rms_norm_eps", &c.rms_norm_eps, true);
  r.number("rope_theta", &c.rope_theta, true);
  r.boolean("tie_word_embeddings", &c.tie_word_embeddings);
  r.optional_integer("bos_token_id", &c.bos_token_id, 0);
  r.optional_integer("eos_token_id", &c.eos_token_id, 0);
  r.string("torch_dtype", &c.torch_dtype);

  std::string act = "silu";
  r.string("hidden_act", &act);
  DSV3_CHECK(act == "silu", "{}: key \"hidden_act\" = \"{}\" is not supported (only silu)", where,
             act);
  bool attention_bias = false;
  r.boolean("attention_bias", &attention_bias);
  DSV3_CHECK(!attention_bias, "{}: key \"attention_bias\" = true is not supported", where);
  DSV3_CHECK(!c.tie_word_embeddings,
             "{}: key \"tie_word_embeddings\" = true is not supported (DeepSeek-V3 unties them)",
             where);
  DSV3_CHECK(c.topk_method == "noaux_tc" || c.topk_method == "greedy" ||
                 c.topk_method == "group_limited_greedy",
             "{}: key \"topk_method\" = \"{}\" is not supported (noaux_tc, greedy, "
             "group_limited_greedy)",
             where, c.topk_method);
  DSV3_CHECK(c.qk_rope_head_dim % 2 == 0, "{}: key \"qk_rope_head_dim\" = {} must be even", where,
             c.qk_rope_head_dim);
  if (c.n_routed_experts > 0) {
    DSV3_CHECK(c.n_routed_experts % c.n_group == 0,
               "{}: key \"n_group\" = {} must divide n_routed_experts = {}", where, c.n_group,
               c.n_routed_experts);
    DSV3_CHECK(c.topk_group <= c.n_group, "{}: key \"topk_group\" = {} exceeds n_group = {}", where,
               c.topk_group, c.n_group);
    DSV3_CHECK(c.num_experts_per_tok <= c.n_routed_experts / c.n_group * c.topk_group,
               "{}: key \"num_experts_per_tok\" = {} exceeds the experts of the {} kept groups",
               where, c.num_experts_per_tok, c.topk_group);
  }

  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& rs = j["rope_scaling"];
    std::string rs_where = where + ": rope_scaling";
    DSV3_CHECK(rs.is_object(), "{} must be an object or null", rs_where);
    std::string type;
    KeyReader rr(rs, rs_where);
    if (rs.contains("type"))
      rr.string("type", &type);
    else
      rr.string("rope_type", &type);
    DSV3_CHECK(type == "yarn", "{}: type \"{}\" is not supported (only yarn)", rs_where, type);
    c.rope_scaling.yarn = true;
    c.rope_scaling.original_max_position_embeddings = c.max_position_embeddings;
    rr.number("factor", &c.rope_scaling.factor, true);
    rr.number("original_max_position_embeddings", &c.rope_scaling.original_max_position_embeddings,
              true);
    rr.number("beta_fast", &c.rope_scaling.beta_fast, true);
    rr.number("beta_slow", &c.rope_scaling.beta_slow, true);
    rr.number("mscale", &c.rope_scaling.mscale);
    rr.number("mscale_all_dim", &c.rope_scaling.mscale_all_dim);
  }

  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    const json& q = j["quantization_config"];
    std::string q_where = where + ": quantization_config";
    DSV3_CHECK(q.is_object(), "{} must be an object", q_where);
    std::string method, fmt = "e4m3";
    KeyReader qr(q, q_where);
    qr.string("quant_method", &method);
    qr.string("fmt", &fmt);
    DSV3_CHECK(method == "fp8" && fmt == "e4m3",
               "{}: quant_method \"{}\" fmt \"{}\" is not supported (only fp8 e4m3)", q_where,
               method, fmt);
    if (q.contains("weight_block_size")) {
      const json& b = q["weight_block_size"];
      DSV3_CHECK(b.is_array() && b.size() == 2 && b[0].is_number_integer() &&
                     b[1].is_number_integer() && b[0].get<int>() > 0 && b[1].get<int>() > 0,
                 "{}: weight_block_size must be two positive integers", q_where);
      c.fp8_block_rows = b[0];
      c.fp8_block_cols = b[1];
    }
    c.fp8_weights = true;
  }

  if (j.contains("train") && j["train"].is_object()) {
    const json& t = j["train"];
    KeyReader tr(t, where + ": train");
    tr.number("mtp_lambda", &c.train.mtp_lambda);
    tr.number("balance_alpha", &c.train.balance_alpha);
    tr.number("bias_gamma", &c.train.bias_gamma);
    tr.number("lr", &c.train.lr);
    tr.number("eps", &c.train.eps, true);
    tr.number("weight_decay", &c.train.weight_decay);
    tr.number("clip", &c.train.clip);
    if (t.contains("betas")) {
      const json& b = t["betas"];
      DSV3_CHECK(b.is_array() && b.size() == 2 && b[0].is_number() && b[1].is_number(),
                 "{}: train: key \"betas\" must be two numbers", where);
      c.train.beta1 = b[0];
      c.train.beta2 = b[1];
    }
  }
  return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
  std::filesystem::path p(path);
  if (std::filesystem::is_directory(p)) p /= "config.json";
  std::ifstream in(p);
  DSV3_CHECK(in.good(), "{}: cannot open the model config", p.string());
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: malformed JSON: {}", p.string(), e.what());
  }
  return from_json(j, p.string());
}

json ModelConfig::to_json() const {
  json j;
  // Hugging Face's DeepseekV3 always routes with sigmoid scores and the noaux_tc selection; a
  // model routed otherwise (softmax scores, greedy or group-limited selection) is a DeepSeek-V2
  // model there, whose class reads scoring_func and topk_method.
  const bool v3_routing = scoring_func == ScoringFunc::Sigmoid && topk_method == "noaux_tc";
  j["architectures"] = {v3_routing ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"};
  j["model_type"] = v3_routing ? "deepseek_v3" : "deepseek_v2";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_nextn_predict_layers"] = num_nextn_predict_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["n_shared_experts"] = n_shared_experts;
  j["n_routed_experts"] = n_routed_experts;
  j["routed_scaling_factor"] = routed_scaling_factor;
  j["kv_lora_rank"] = kv_lora_rank;
  j["q_lora_rank"] = q_lora_rank ? json(*q_lora_rank) : json(nullptr);
  j["qk_rope_head_dim"] = qk_rope_head_dim;
  j["v_head_dim"] = v_head_dim;
  j["qk_nope_head_dim"] = qk_nope_head_dim;
  j["topk_method"] = topk_method;
  j["n_group"] = n_group;
  j["topk_group"] = topk_group;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["first_k_dense_replace"] = first_k_dense_replace;
  j["moe_layer_freq"] = moe_layer_freq;
  j["norm_topk_prob"] = norm_topk_prob;
  j["scoring_func"] = scoring_func == ScoringFunc::Sigmoid ? "sigmoid" : "softmax";
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["attention_bias"] = false;
  j["tie_word_embeddings"] = false;
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (eos_token_id) j["eos_token_id"] = *eos_token_id;
  j["torch_dtype"] = torch_dtype;
  if (rope_scaling.yarn) {
    j["rope_scaling"] = {
        {"type", "yarn"},
        {"factor", rope_scaling.factor},
        {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
        {"beta_fast", rope_scaling.beta_fast},
        {"beta_slow", rope_scaling.beta_slow},
        {"mscale", rope_scaling.mscale},
        {"mscale_all_dim", rope_scaling.mscale_all_dim}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (fp8_weights) {
    j["quantization_config"] = {{"quant_method", "fp8"},
                                {"fmt", "e4m3"},
                                {"activation_scheme", "dynamic"},
                                {"weight_block_size", {fp8_block_rows, fp8_block_cols}}};
  }
  return j;
}

namespace {
long long swiglu_params(long long d, long long width) { return 3 * d * width; }

long long block_params(const ModelConfig& c, int layer, bool active_only) {
  long long d = c.hidden_size, h = c.num_attention_heads;
  long long attn = 0;
  if (c.q_lora_rank) {
    attn += d * *c.q_lora_rank + *c.q_lora_rank + *c.q_lora_rank * h * c.qk_head_dim();
  } else {
    attn += d * h * c.qk_head_dim();
  }
  attn += d * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank;
  attn += c.kv_lora_rank * h * (c.qk_nope_head_dim + c.v_head_dim);
  attn += h * c.v_head_dim * d;
  long long ffn;
  if (c.is_moe_layer(layer)) {
    long long experts = active_only ? c.num_experts_per_tok : c.n_routed_experts;
    ffn = experts * swiglu_params(d, c.moe_intermediate_size) +
          swiglu_params(d, (long long)c.n_shared_experts * c.moe_intermediate_size) +
          (long long)c.n_routed_experts * d;
  } else {
    ffn = swiglu_params(d, c.intermediate_size);
  }
  return attn + ffn + 2 * d;
}

long long count(const ModelConfig& c, bool active_only) {
  long long d = c.hidden_size;
  long long n = 2LL * c.vocab_size * d + d;  // embedding, head, final norm
  for (int i = 0; i < c.num_hidden_layers; ++i) n += block_params(c, i, active_only);
  for (int k = 0; k < c.num_nextn_predict_layers; ++k)
    n += block_params(c, c.num_hidden_layers + k, active_only) + 2 * d * d + 3 * d;
  return n;
}
}  // namespace

long long ModelConfig::parameter_count() const { return count(*this, false); }
long long ModelConfig::active_parameter_count() const { return count(*this, true); }

}  // namespace dsv3
