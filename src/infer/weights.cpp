#include "infer/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "model/safetensors.h"

namespace dsv3::infer {

Precision parse_precision(const std::string& name) {
  if (name == "f32" || name == "F32" || name == "float32") return Precision::F32;
  if (name == "bf16" || name == "BF16" || name == "bfloat16") return Precision::BF16;
  fail("precision '{}' is not supported (f32 or bf16)", name);
}

void check_token_ids(const ModelConfig& c, const int32_t* ids, size_t n, const char* what) {
  for (size_t i = 0; i < n; ++i)
    DSV3_CHECK(ids[i] >= 0 && ids[i] < c.vocab_size,
               "{}: token id {} at position {} is outside the vocabulary [0, {})", what, ids[i],
               i, c.vocab_size);
}

namespace {
// Drops the resident pages of a mapped tensor whose contents were converted into another
// buffer (only whole pages inside the tensor: neighbours keep theirs).
void release_pages(const Tensor& t) {
  static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data()) + page - 1) / page * page;
  uintptr_t end = (reinterpret_cast<uintptr_t>(t.data()) + t.nbytes()) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}
}  // namespace

struct InferWeights::Loader {
  InferWeights& w;
  const WeightStore& store;
  const ModelConfig& c;

  // A matrix in the compute precision: a view when the file already holds it so, else an owned
  // conversion (FP8 blocks dequantized with their scales).
  MatRef matrix(const std::string& name, const Shape& shape) {
    Tensor src = store.get(name, shape);
    const DType want = w.precision_ == Precision::F32 ? DType::F32 : DType::BF16;
    if (src.dtype() == want) {
      w.weight_bytes_ += src.nbytes();
      return MatRef::of(src);
    }
    Tensor dst = Tensor::zeros(shape, want);
    const int64_t rows = shape[0], cols = shape[1];
    if (src.dtype() == DType::F8E4M3) {
      const std::string scale_name = name + "_scale_inv";
      DSV3_CHECK(store.has(scale_name), "{}: FP8 tensor {} has no {}", store.where(), name,
                 scale_name);
      const int64_t br = c.fp8_block_rows, bc = c.fp8_block_cols;
      Shape scale_shape{(rows + br - 1) / br, (cols + bc - 1) / bc};
      Tensor scale = store.get(scale_name, scale_shape).to_f32();
      const uint8_t* q = static_cast<const uint8_t*>(src.data());
#pragma omp parallel
      {
        std::vector<float> row(static_cast<size_t>(cols));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
          dequantize_fp8_row(q + r * cols, scale.f32() + (r / br) * scale_shape[1], cols, bc,
                             row.data());
          convert_from_f32(row.data(), want, static_cast<char*>(dst.data()) +
                                                 size_t(r * cols) * dtype_size(want),
                           size_t(cols));
        }
      }
    } else {
      DSV3_CHECK(src.dtype() == DType::F32 || src.dtype() == DType::BF16 ||
                     src.dtype() == DType::F16,
                 "{}: tensor {} has dtype {}, not a floating type", store.where(), name,
                 dtype_name(src.dtype()));
      std::vector<float> row(static_cast<size_t>(cols));
      for (int64_t r = 0; r < rows; ++r) {
        convert_to_f32(src.dtype(), static_cast<const char*>(src.data()) +
                                        size_t(r * cols) * dtype_size(src.dtype()),
                       row.data(), size_t(cols));
        convert_from_f32(row.data(), want,
                         static_cast<char*>(dst.data()) + size_t(r * cols) * dtype_size(want),
                         size_t(cols));
      }
    }
    release_pages(src);
    w.weight_bytes_ += dst.nbytes();
    w.owned_.push_back(dst);
    return MatRef::of(dst);
  }

  Tensor vector_f32(const std::string& name, int64_t n) {
    Tensor src = store.get(name, Shape{n});
    DSV3_CHECK(src.dtype() == DType::F32 || src.dtype() == DType::BF16 ||
                   src.dtype() == DType::F16,
               "{}: tensor {} has dtype {}, not a floating type", store.where(), name,
               dtype_name(src.dtype()));
    w.weight_bytes_ += size_t(n) * 4;
    return src.dtype() == DType::F32 ? src : src.to_f32();
  }

  FfnWeights ffn(const std::string& p, int64_t width) {
    const int64_t d = c.hidden_size;
    return {matrix(p + "gate_proj.weight", {width, d}), matrix(p + "up_proj.weight", {width, d}),
            matrix(p + "down_proj.weight", {d, width})};
  }

  LayerWeights layer(const std::string& p, int index) {
    const int64_t d = c.hidden_size, h = c.num_attention_heads, dq = c.qk_head_dim();
    LayerWeights l;
    l.input_norm = vector_f32(p + "input_layernorm.weight", d);
    l.post_attention_norm = vector_f32(p + "post_attention_layernorm.weight", d);
    const std::string a = p + "self_attn.";
    if (c.q_lora_rank) {
      l.attn.q_a = matrix(a + "q_a_proj.weight", {*c.q_lora_rank, d});
      l.attn.q_a_norm = vector_f32(a + "q_a_layernorm.weight", *c.q_lora_rank);
      l.attn.q_b = matrix(a + "q_b_proj.weight", {h * dq, *c.q_lora_rank});
    } else {
      l.attn.q_proj = matrix(a + "q_proj.weight", {h * dq, d});
    }
    l.attn.kv_a = matrix(a + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, d});
    l.attn.kv_a_norm = vector_f32(a + "kv_a_layernorm.weight", c.kv_lora_rank);
    l.attn.kv_b = matrix(a + "kv_b_proj.weight",
                         {h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
    l.attn.o = matrix(a + "o_proj.weight", {d, h * c.v_head_dim});
    l.moe = c.is_moe_layer(index);
    const std::string m = p + "mlp.";
    if (!l.moe) {
      l.dense = ffn(m, c.intermediate_size);
      return l;
    }
    l.router = matrix(m + "gate.weight", {c.n_routed_experts, d});
    const std::string bias = m + "gate.e_score_correction_bias";
    l.router_bias = c.has_bias() ? vector_f32(bias, c.n_routed_experts)
                                 : Tensor::zeros({c.n_routed_experts});
    for (int e = 0; e < c.n_routed_experts; ++e)
      l.experts.push_back(ffn(m + "experts." + std::to_string(e) + ".", c.moe_intermediate_size));
    l.has_shared = c.n_shared_experts > 0;
    if (l.has_shared)
      l.shared = ffn(m + "shared_experts.", int64_t(c.n_shared_experts) * c.moe_intermediate_size);
    return l;
  }
};

std::shared_ptr<InferWeights> InferWeights::load(const std::string& path, Precision precision) {
  namespace fs = std::filesystem;
  std::error_code ec;
  DSV3_CHECK(fs::exists(path, ec), "{}: no such model folder or file", path);
  const fs::path dir = fs::is_directory(path, ec) ? fs::path(path) : fs::path(path).parent_path();
  DSV3_CHECK(fs::exists(dir / "config.json", ec), "{}: missing config.json", dir.string());
  auto w = std::make_shared<InferWeights>();
  w->config_ = ModelConfig::load((dir / "config.json").string());
  w->precision_ = precision;
  w->where_ = dir.string();
  w->store_ = std::make_shared<WeightStore>(WeightStore::open(dir.string()));
  const ModelConfig& c = w->config_;
  Loader ld{*w, *w->store_, c};
  const int64_t d = c.hidden_size, v = c.vocab_size;
  w->embed = ld.matrix("model.embed_tokens.weight", {v, d});
  w->norm = ld.vector_f32("model.norm.weight", d);
  if (w->store_->has("lm_head.weight") || !c.tie_word_embeddings)
    w->lm_head = ld.matrix("lm_head.weight", {v, d});
  else
    w->lm_head = w->embed;
  for (int i = 0; i < c.num_hidden_layers; ++i)
    w->layers.push_back(ld.layer("model.layers." + std::to_string(i) + ".", i));
  for (int k = 0; k < c.num_nextn_predict_layers; ++k) {
    const int layer = c.num_hidden_layers + k;
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    if (!w->store_->has(p + "eh_proj.weight")) break;  // a checkpoint shipped without MTP
    MtpModuleWeights m;
    m.enorm = ld.vector_f32(p + "enorm.weight", d);
    m.hnorm = ld.vector_f32(p + "hnorm.weight", d);
    m.eh_proj = ld.matrix(p + "eh_proj.weight", {d, 2 * d});
    m.block = ld.layer(p, layer);
    m.head_norm = ld.vector_f32(p + "shared_head.norm.weight", d);
    w->mtp.push_back(std::move(m));
  }
  return w;
}

size_t InferWeights::active_bytes_per_token() const {
  const ModelConfig& c = config_;
  auto bytes = [](const MatRef& m) { return size_t(m.rows * m.cols) * dtype_size(m.dtype); };
  auto ffn_bytes = [&](const FfnWeights& f) { return bytes(f.gate) + bytes(f.up) + bytes(f.down); };
  size_t total = bytes(lm_head) + size_t(c.hidden_size) * dtype_size(embed.dtype);
  for (const LayerWeights& l : layers) {
    const AttentionWeights& a = l.attn;
    total += a.q_a.empty() ? bytes(a.q_proj) : bytes(a.q_a) + bytes(a.q_b);
    total += bytes(a.kv_a) + bytes(a.kv_b) + bytes(a.o);
    if (!l.moe) {
      total += ffn_bytes(l.dense);
    } else {
      total += bytes(l.router) + size_t(c.num_experts_per_tok) * ffn_bytes(l.experts[0]);
      if (l.has_shared) total += ffn_bytes(l.shared);
    }
  }
  return total;
}

}  // namespace dsv3::infer
