#pragma once
// Inference weights: the model's matrices in one compute precision, loaded from a dsv3 or
// Hugging Face DeepSeek-V3-family checkpoint (config.json + one safetensors file or shards with
// model.safetensors.index.json).
//
// Memory: a matrix already stored in the compute precision is a view into the memory-mapped
// file (never copied). A matrix that must change precision is converted once at load into an
// owned buffer and the file pages it was read from are released (madvise), so the process holds
// one copy of every weight. Block-scaled FP8 (F8_E4M3 + `weight_scale_inv`, one float32 per
// 128x128 block) is dequantized at load: to BF16 in BF16 precision (the products then run on the
// CPU's BF16 path; the dequantized value is rounded to BF16), to F32 in F32 precision (exact).
// Norm weights and router correction biases are always float32 (they are tiny).
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "infer/matmul.h"
#include "model/config.h"

namespace dsv3 {
class WeightStore;
}

namespace dsv3::infer {

enum class Precision { F32, BF16 };
Precision parse_precision(const std::string& name);  // "f32" | "bf16"

struct AttentionWeights {
  MatRef q_a, q_b, q_proj;  // q LoRA (q_a [Q, D], q_b [H*dq, Q]) or q_proj [H*dq, D]
  Tensor q_a_norm;          // [Q] f32
  MatRef kv_a;              // [R + rope, D]
  Tensor kv_a_norm;         // [R] f32
  MatRef kv_b;              // [H * (nope + v), R]: per head W_uk [nope, R] then W_uv [v, R]
  MatRef o;                 // [D, H * v]
};

struct FfnWeights {
  MatRef gate, up, down;  // [I, D], [I, D], [D, I]
};

struct LayerWeights {
  Tensor input_norm, post_attention_norm;  // [D] f32
  AttentionWeights attn;
  bool moe = false;
  FfnWeights dense;                 // !moe
  MatRef router;                    // [E, D]
  Tensor router_bias;               // [E] f32 (zeros when the config has no bias)
  std::vector<FfnWeights> experts;  // E
  bool has_shared = false;
  FfnWeights shared;
};

struct MtpModuleWeights {
  Tensor enorm, hnorm, head_norm;  // [D] f32
  MatRef eh_proj;                  // [D, 2D]
  LayerWeights block;
};

class InferWeights {
 public:
  // `path`: a checkpoint folder (config.json + safetensors) or a config.json beside one
  // model.safetensors.
  static std::shared_ptr<InferWeights> load(const std::string& path, Precision precision);

  const ModelConfig& config() const { return config_; }
  Precision precision() const { return precision_; }
  const std::string& where() const { return where_; }

  MatRef embed;    // [V, D] (rows read one at a time)
  Tensor norm;     // [D] f32
  MatRef lm_head;  // [V, D]
  std::vector<LayerWeights> layers;
  std::vector<MtpModuleWeights> mtp;

  // Bytes of weights held: mapped views plus converted copies.
  size_t weight_bytes() const { return weight_bytes_; }
  // Bytes read for one token by a batch-1 decode (the active weights, one row of embedding).
  size_t active_bytes_per_token() const;

 private:
  struct Loader;
  ModelConfig config_;
  Precision precision_ = Precision::BF16;
  std::string where_;
  std::shared_ptr<WeightStore> store_;  // keeps the mappings alive
  std::vector<Tensor> owned_;           // converted matrices
  size_t weight_bytes_ = 0;
};

// Ids in a prompt or a generated text must be inside the vocabulary.
void check_token_ids(const ModelConfig& c, const int32_t* ids, size_t n, const char* what);

}  // namespace dsv3::infer
