#pragma once
// The model's parameters as named structs (Hugging Face names), each trainable tensor paired
// with its gradient. Every weight lives in float32 here (the training/reference precision);
// inference keeps lower-precision copies of its own.
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace dsv3 {

class WeightStore;

// A trainable tensor and its gradient buffer (same shape; zeroed before each step).
struct Param {
  Tensor value;
  Tensor grad;
  // Mixed precision: a BF16 copy of value that the GEMMs read (refreshed after each update);
  // undefined when the model computes in float32.
  Tensor compute;
  const Tensor& for_matmul() const { return compute.defined() ? compute : value; }
  // Whether grad holds this step's gradient so far. ModelWeights::discard_grads clears it, so
  // that the step's first write overwrites grad rather than adding to zeros: no pass to zero
  // the gradients, and no read of those zeros in the weight-gradient GEMMs.
  bool grad_written = true;
  // For a backward op about to write grad: whether it adds to grad (true) or overwrites it.
  // Either way grad is written after, so later writes add.
  bool accumulate_grad() { return std::exchange(grad_written, true); }
  // For ops that can only add into grad (the embedding's scatter): zeroed first if unwritten.
  Tensor& grad_to_add_into() {
    if (!accumulate_grad()) grad.zero_();
    return grad;
  }
};

struct MlaWeights {
  // With q LoRA: q = q_b(RMSNorm_qa(q_a(x))); without: q = q_proj(x).
  Param q_a_proj;            // [q_lora_rank, hidden]
  Param q_a_layernorm;       // [q_lora_rank]
  Param q_b_proj;            // [heads * qk_head_dim, q_lora_rank]
  Param q_proj;              // [heads * qk_head_dim, hidden]
  Param kv_a_proj_with_mqa;  // [kv_lora_rank + rope_dim, hidden]
  Param kv_a_layernorm;      // [kv_lora_rank]
  Param kv_b_proj;           // [heads * (nope + v), kv_lora_rank]
  Param o_proj;              // [hidden, heads * v]
};

// SwiGLU: down(silu(gate(x)) * up(x)). gate and up are stored as one [2*width, hidden] tensor
// (gate rows first) so one GEMM computes both; their Hugging Face names are views of its halves.
struct SwigluWeights {
  Param gate_up;  // [2 * width, hidden]
  Param down;     // [hidden, width]
  int width = 0;
};

struct MoeWeights {
  Param gate;   // router [n_routed_experts, hidden]
  Tensor bias;  // e_score_correction_bias [n_routed_experts]; not trained by gradients
  std::vector<SwigluWeights> experts;
  SwigluWeights shared;  // width n_shared_experts * moe_intermediate_size (absent when 0)
};

struct BlockWeights {
  Param input_layernorm;           // [hidden]
  Param post_attention_layernorm;  // [hidden]
  MlaWeights attn;
  bool moe = false;
  SwigluWeights dense;  // when !moe
  MoeWeights experts;   // when moe
};

struct MtpWeights {
  Param enorm, hnorm;      // [hidden]
  Param eh_proj;           // [hidden, 2 * hidden]
  Param shared_head_norm;  // [hidden]
  BlockWeights block;
};

class ModelWeights {
 public:
  explicit ModelWeights(const ModelConfig& config);
  // Parameters are registered by address: a ModelWeights never moves.
  ModelWeights(const ModelWeights&) = delete;
  ModelWeights& operator=(const ModelWeights&) = delete;

  // Random init: normal(0, std) for matrices, ones for norms, zero biases.
  void init_random(uint64_t seed, float std = 0.006f);
  // Loads every tensor (converting BF16/F16/FP8-with-scales to float32); refuses a missing
  // tensor or a wrong shape with an error naming it.
  void load(const WeightStore& store);
  // Hugging Face name -> float32 tensor (views into this model's storage). Gate and up
  // projections appear as separate views.
  std::vector<std::pair<std::string, Tensor>> named_tensors() const;
  // The same names mapped to the gradients of the trainable tensors.
  std::vector<std::pair<std::string, Tensor>> named_grads() const;

  // Every trainable parameter under its Hugging Face name (gate_up under a fused name
  // "...gate_up_proj.weight", split on export), and the correction biases.
  struct NamedParam {
    std::string name;
    Param* param;
    bool decay;  // decoupled weight decay applies (2+ dimensions)
  };
  std::vector<NamedParam>& params() { return params_; }
  std::vector<std::pair<std::string, Tensor*>>& biases() { return biases_; }
  // Every gradient = 0 (written: the next backward pass adds to it).
  void zero_grads();
  // Every gradient marked unwritten without touching it: the next backward pass overwrites
  // them (Param::accumulate_grad), what zero_grads then a pass would give, with less memory
  // traffic. Until that pass ends the gradients hold stale values.
  void discard_grads();
  // Zeroes the gradients no op wrote since discard_grads (parameters the step did not reach),
  // so that every gradient is this step's. Transformer::step calls it after its backward pass.
  void zero_unwritten_grads();
  // Every gradient *= factor (nothing to do for 1; one launch over the block on a device).
  void scale_grads(float factor);
  // Moves every parameter and its gradient to `device` (the correction biases stay on the host,
  // where routing runs); nothing happens when they are there already. The Param objects stay
  // where they are; their tensors are replaced (gradients start at zero, in one allocation).
  void to_device(Device device);
  Device device() const { return embed.value.device(); }
  // F32 (default): every GEMM reads the float32 weights. BF16 (GPU only): the matrices that
  // feed GEMMs get BF16 copies (the embedding table and the router's gate stay float32: a
  // lookup, and the routing decision); call refresh_compute() after each optimizer update.
  void set_compute_dtype(DType dtype);
  DType compute_dtype() const { return compute_dtype_; }
  void refresh_compute();
  // F64: every parameter and gradient becomes float64 (exactly; CPU only; the correction
  // biases stay float32, as routing reads them), so that the step runs through the float64
  // reference kernels: `dsv3 parity --precision f64`. Call after load, before building a
  // Transformer. Nothing else runs a float64 model.
  void to_float64();
  DType real_dtype() const { return embed.value.dtype(); }

  const ModelConfig& config() const { return config_; }
  Param embed;    // [vocab, hidden]
  Param norm;     // [hidden]
  Param lm_head;  // [vocab, hidden]
  std::vector<BlockWeights> layers;
  std::vector<MtpWeights> mtp;

 private:
  void register_all();
  void add(const std::string& name, Param& p, const Shape& shape);
  void add_swiglu(const std::string& prefix, SwigluWeights& w, int width);
  void add_block(const std::string& prefix, BlockWeights& b, int layer);

  ModelConfig config_;
  DType compute_dtype_ = DType::F32;
  std::vector<NamedParam> params_;
  // After to_device: the gradients are views into this one allocation, so zero_grads is one
  // memset instead of one per tensor (over a thousand a step on a MoE model, each a launch on a
  // GPU).
  Tensor grad_block_;
  std::vector<std::pair<std::string, Tensor*>> biases_;
};

// The Hugging Face names of a fused gate_up parameter's two halves.
std::pair<std::string, std::string> split_gate_up_name(const std::string& fused);

}  // namespace dsv3
