#include "model/weights.h"

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "kernels/ops.h"
#include "model/safetensors.h"

namespace dsv3 {

namespace {
const std::string kGateUp = "gate_up_proj.weight";
}

std::pair<std::string, std::string> split_gate_up_name(const std::string& fused) {
  std::string prefix = fused.substr(0, fused.size() - kGateUp.size());
  return {prefix + "gate_proj.weight", prefix + "up_proj.weight"};
}

ModelWeights::ModelWeights(const ModelConfig& config) : config_(config) { register_all(); }

void ModelWeights::add(const std::string& name, Param& p, const Shape& shape) {
  p.value = Tensor::zeros(shape);
  p.grad = Tensor::zeros(shape);
  params_.push_back({name, &p, shape.ndim() >= 2});
}

void ModelWeights::add_swiglu(const std::string& prefix, SwigluWeights& w, int width) {
  const int64_t d = config_.hidden_size;
  w.width = width;
  add(prefix + kGateUp, w.gate_up, {2LL * width, d});
  add(prefix + "down_proj.weight", w.down, {d, width});
}

void ModelWeights::add_block(const std::string& prefix, BlockWeights& b, int layer) {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, h = c.num_attention_heads;
  add(prefix + "input_layernorm.weight", b.input_layernorm, {d});
  add(prefix + "post_attention_layernorm.weight", b.post_attention_layernorm, {d});
  const std::string a = prefix + "self_attn.";
  if (c.q_lora_rank) {
    add(a + "q_a_proj.weight", b.attn.q_a_proj, {*c.q_lora_rank, d});
    add(a + "q_a_layernorm.weight", b.attn.q_a_layernorm, {*c.q_lora_rank});
    add(a + "q_b_proj.weight", b.attn.q_b_proj, {h * c.qk_head_dim(), *c.q_lora_rank});
  } else {
    add(a + "q_proj.weight", b.attn.q_proj, {h * c.qk_head_dim(), d});
  }
  add(a + "kv_a_proj_with_mqa.weight", b.attn.kv_a_proj_with_mqa,
      {c.kv_lora_rank + c.qk_rope_head_dim, d});
  add(a + "kv_a_layernorm.weight", b.attn.kv_a_layernorm, {c.kv_lora_rank});
  add(a + "kv_b_proj.weight", b.attn.kv_b_proj,
      {h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
  add(a + "o_proj.weight", b.attn.o_proj, {d, h * c.v_head_dim});
  b.moe = c.is_moe_layer(layer);
  const std::string m = prefix + "mlp.";
  if (!b.moe) {
    add_swiglu(m, b.dense, c.intermediate_size);
    return;
  }
  add(m + "gate.weight", b.experts.gate, {c.n_routed_experts, d});
  b.experts.bias = Tensor::zeros({c.n_routed_experts});
  if (c.has_bias()) biases_.emplace_back(m + "gate.e_score_correction_bias", &b.experts.bias);
  b.experts.experts.resize(size_t(c.n_routed_experts));
  for (int e = 0; e < c.n_routed_experts; ++e)
    add_swiglu(m + "experts." + std::to_string(e) + ".", b.experts.experts[size_t(e)],
               c.moe_intermediate_size);
  if (c.n_shared_experts > 0)
    add_swiglu(m + "shared_experts.", b.experts.shared,
               c.n_shared_experts * c.moe_intermediate_size);
}

void ModelWeights::register_all() {
  const ModelConfig& c = config_;
  // Blocks and MTP modules are sized before registering so that the Param addresses are stable.
  layers.resize(size_t(c.num_hidden_layers));
  mtp.resize(size_t(c.num_nextn_predict_layers));
  add("model.embed_tokens.weight", embed, {c.vocab_size, c.hidden_size});
  for (int i = 0; i < c.num_hidden_layers; ++i)
    add_block("model.layers." + std::to_string(i) + ".", layers[size_t(i)], i);
  add("model.norm.weight", norm, {c.hidden_size});
  add("lm_head.weight", lm_head, {c.vocab_size, c.hidden_size});
  for (int k = 0; k < c.num_nextn_predict_layers; ++k) {
    int layer = c.num_hidden_layers + k;
    std::string p = "model.layers." + std::to_string(layer) + ".";
    MtpWeights& m = mtp[size_t(k)];
    add(p + "enorm.weight", m.enorm, {c.hidden_size});
    add(p + "hnorm.weight", m.hnorm, {c.hidden_size});
    add(p + "eh_proj.weight", m.eh_proj, {c.hidden_size, 2LL * c.hidden_size});
    add_block(p, m.block, layer);
    add(p + "shared_head.norm.weight", m.shared_head_norm, {c.hidden_size});
  }
}

void ModelWeights::to_device(Device device) {
  if (device == this->device()) return;
  // The gradients: views into one zeroed block, each at a 256-byte boundary.
  std::vector<size_t> offsets;
  size_t total = 0;
  for (auto& np : params_) {
    offsets.push_back(total);
    total += (size_t(np.param->value.numel()) * sizeof(float) + 255) / 256 * 256;
  }
  grad_block_ = Tensor::zeros({int64_t(total / sizeof(float))}, DType::F32, device);
  const auto keep = std::make_shared<Tensor>(grad_block_);
  for (size_t i = 0; i < params_.size(); ++i) {
    Param& p = *params_[i].param;
    p.value = p.value.to(device);
    p.grad = Tensor::view(static_cast<char*>(grad_block_.data()) + offsets[i], p.value.shape(),
                          DType::F32, device, keep);
    p.grad_written = true;  // zeros
  }
  if (compute_dtype_ != DType::F32) set_compute_dtype(compute_dtype_);  // copies on the device
}

void ModelWeights::set_compute_dtype(DType dtype) {
  DSV3_CHECK(dtype == DType::F32 || dtype == DType::BF16,
             "compute precision {}: dsv3 trains in F32 or BF16", dtype_name(dtype));
  DSV3_CHECK(dtype == DType::F32 || device() == Device::CUDA,
             "BF16 mixed precision runs on the GPU (--device cuda); the CPU trains in float32");
  compute_dtype_ = dtype;
  for (auto& np : params_) {
    const bool lookup_or_routing =
        &np.param->value == &embed.value || np.name.ends_with("mlp.gate.weight");
    if (dtype == DType::BF16 && np.param->value.ndim() == 2 && !lookup_or_routing)
      np.param->compute = Tensor::zeros(np.param->value.shape(), DType::BF16, device());
    else
      np.param->compute = Tensor();
  }
  refresh_compute();
}

void ModelWeights::to_float64() {
  DSV3_CHECK(device() == Device::CPU && compute_dtype_ == DType::F32,
             "a float64 model runs on the CPU without a lower-precision compute copy");
  for (auto& np : params_) {
    Tensor& v = np.param->value;
    if (v.dtype() == DType::F64) continue;
    Tensor wide = Tensor::zeros(v.shape(), DType::F64);
    convert_from_f32(v.f32(), DType::F64, wide.data(), size_t(v.numel()));
    v = wide;
    np.param->grad = Tensor::zeros(v.shape(), DType::F64);
    np.param->grad_written = true;
  }
  grad_block_ = Tensor();  // the gradients are their own tensors again
}

void ModelWeights::refresh_compute() {
  std::vector<std::pair<const Tensor*, Tensor*>> copies;  // one launch on a GPU
  for (auto& np : params_)
    if (np.param->compute.defined()) copies.push_back({&np.param->value, &np.param->compute});
  ops::convert_all(copies);
}

void ModelWeights::init_random(uint64_t seed, float std) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, std);
  for (auto& np : params_) {
    Tensor& v = np.param->value;
    float* p = v.f32();
    if (v.ndim() == 1) {
      for (int64_t i = 0; i < v.numel(); ++i) p[i] = 1.0f;  // norm weights
    } else {
      for (int64_t i = 0; i < v.numel(); ++i) p[i] = normal(rng);
    }
  }
  for (auto& b : biases_) b.second->zero_();
}

namespace {
// Reads one stored tensor into a float32 destination, dequantizing block-scaled FP8 with its
// `<name>_scale_inv` (one float32 per block_rows x block_cols block; edge blocks partial).
void read_into(const WeightStore& store, const std::string& name, float* dst, const Shape& shape,
               const ModelConfig& c) {
  Tensor src = store.get(name, shape);
  if (src.dtype() == DType::F8E4M3) {
    const std::string scale_name = name + "_scale_inv";
    DSV3_CHECK(store.has(scale_name), "{}: FP8 tensor {} has no {}", store.where(), name,
               scale_name);
    DSV3_CHECK(shape.ndim() == 2, "{}: FP8 tensor {} must be 2-D, got {}", store.where(), name,
               shape.str());
    const int64_t rows = shape[0], cols = shape[1];
    const int64_t br = c.fp8_block_rows, bc = c.fp8_block_cols;
    Shape scale_shape{(rows + br - 1) / br, (cols + bc - 1) / bc};
    Tensor scale = store.get(scale_name, scale_shape).to_f32();
    const uint8_t* q = static_cast<const uint8_t*>(src.data());
    for (int64_t r = 0; r < rows; ++r)
      dequantize_fp8_row(q + r * cols, scale.f32() + (r / br) * scale_shape[1], cols, bc,
                         dst + r * cols);
    return;
  }
  DSV3_CHECK(src.dtype() == DType::F32 || src.dtype() == DType::BF16 || src.dtype() == DType::F16 ||
                 src.dtype() == DType::F64,
             "{}: tensor {} has dtype {}, not a floating type", store.where(), name,
             dtype_name(src.dtype()));
  convert_to_f32(src.dtype(), src.data(), dst, size_t(shape.numel()));
}
}  // namespace

void ModelWeights::load(const WeightStore& store) {
  DSV3_CHECK(device() == Device::CPU, "ModelWeights::load: load on the host, then to_device");
  for (auto& np : params_) {
    Tensor& v = np.param->value;
    if (np.name.size() >= kGateUp.size() &&
        np.name.compare(np.name.size() - kGateUp.size(), kGateUp.size(), kGateUp) == 0) {
      auto [gate, up] = split_gate_up_name(np.name);
      const int64_t half = v.dim(0) / 2, d = v.dim(1);
      read_into(store, gate, v.f32(), {half, d}, config_);
      read_into(store, up, v.f32() + half * d, {half, d}, config_);
    } else {
      read_into(store, np.name, v.f32(), v.shape(), config_);
    }
  }
  for (auto& [name, t] : biases_) read_into(store, name, t->f32(), t->shape(), config_);
}

namespace {
std::vector<std::pair<std::string, Tensor>> split_named(
    const std::vector<ModelWeights::NamedParam>& params, bool grads) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& np : params) {
    const Tensor& t = grads ? np.param->grad : np.param->value;
    if (np.name.size() >= kGateUp.size() &&
        np.name.compare(np.name.size() - kGateUp.size(), kGateUp.size(), kGateUp) == 0) {
      auto [gate, up] = split_gate_up_name(np.name);
      const int64_t half = t.dim(0) / 2;
      out.emplace_back(gate, t.slice_rows(0, half));
      out.emplace_back(up, t.slice_rows(half, 2 * half));
    } else {
      out.emplace_back(np.name, t);
    }
  }
  return out;
}
}  // namespace

std::vector<std::pair<std::string, Tensor>> ModelWeights::named_tensors() const {
  auto out = split_named(params_, false);
  for (const auto& [name, t] : biases_) out.emplace_back(name, *t);
  return out;
}

std::vector<std::pair<std::string, Tensor>> ModelWeights::named_grads() const {
  return split_named(params_, true);
}

void ModelWeights::scale_grads(float factor) {
  if (factor == 1.0f) return;  // x * 1 is x
  if (grad_block_.defined()) {  // the padding between gradients is zeros, and stays so
    ops::scale_inplace(grad_block_, factor);
    return;
  }
  for (auto& np : params_) ops::scale_inplace(np.param->grad, factor);
}

void ModelWeights::zero_grads() {
  for (auto& np : params_) np.param->grad_written = true;
  if (grad_block_.defined()) {  // every gradient in one allocation
    grad_block_.zero_();
    return;
  }
  for (auto& np : params_) np.param->grad.zero_();
}

void ModelWeights::discard_grads() {
  for (auto& np : params_) np.param->grad_written = false;
}

void ModelWeights::zero_unwritten_grads() {
  for (auto& np : params_)
    if (!np.param->accumulate_grad()) np.param->grad.zero_();
}

}  // namespace dsv3
