#include "infer/gguf_export.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "infer/gguf_vocab.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace dsv3::infer {

namespace {

namespace fs = std::filesystem;
using gguf::TensorSink;
using gguf::TensorType;

constexpr const char* kArch = "deepseek2";
// Rows are converted and written in pieces of about this many float32 values.
constexpr int64_t kChunkValues = int64_t(1) << 21;

// Rows of a 2-D checkpoint matrix as float32: BF16/F16/F32 widened, FP8 blocks dequantized
// (e4m3 value x the float32 scale of its block in `{name}_scale_inv`). Opening checks the
// tensor's presence, shape and dtype, so a bad checkpoint is refused before anything is written.
class SourceMatrix {
 public:
  // `shape` is [rows, cols], or [cols] for a vector (one row).
  SourceMatrix(const WeightStore& store, const ModelConfig& c, const std::string& name,
               const Shape& shape)
      : name_(name),
        rows_(shape.ndim() == 2 ? shape[0] : 1),
        cols_(shape[-1]),
        br_(c.fp8_block_rows),
        bc_(c.fp8_block_cols) {
    src_ = store.get(name, shape);
    const DType t = src_.dtype();
    DSV3_CHECK(t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F8E4M3,
               "{}: tensor {} has dtype {}, not a floating type", store.where(), name,
               dtype_name(t));
    if (t == DType::F8E4M3) {
      DSV3_CHECK(shape.ndim() == 2, "{}: FP8 tensor {} is not a matrix", store.where(), name);
      const std::string scale_name = name + "_scale_inv";
      DSV3_CHECK(store.has(scale_name), "{}: FP8 tensor {} has no {}", store.where(), name,
                 scale_name);
      scale_ =
          store.get(scale_name, Shape{(rows_ + br_ - 1) / br_, (cols_ + bc_ - 1) / bc_}).to_f32();
    }
  }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }

  // Drops the mapped file pages this tensor was read from (whole pages inside it only), so an
  // export's resident memory stays at about one tensor's pieces, not the whole checkpoint.
  void release() const {
    static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const uintptr_t start = reinterpret_cast<uintptr_t>(src_.data());
    const uintptr_t begin = (start + page - 1) / page * page;
    const uintptr_t end = (start + src_.nbytes()) / page * page;
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }

  // Rows [r0, r1) into out [(r1 - r0) * cols].
  void read(int64_t r0, int64_t r1, float* out) const {
    const size_t es = dtype_size(src_.dtype());
    const char* base = static_cast<const char*>(src_.data()) + size_t(r0 * cols_) * es;
    if (src_.dtype() != DType::F8E4M3) {
      convert_to_f32(src_.dtype(), base, out, size_t((r1 - r0) * cols_));
      return;
    }
    const int64_t scale_cols = scale_.dim(1);
    for (int64_t r = r0; r < r1; ++r)
      dequantize_fp8_row(reinterpret_cast<const uint8_t*>(base) + (r - r0) * cols_,
                         scale_.f32() + (r / br_) * scale_cols, cols_, bc_, out + (r - r0) * cols_);
  }

 private:
  std::string name_;
  int64_t rows_, cols_, br_, bc_;
  Tensor src_, scale_;
};

// Converts float32 values to the file's element type and hands them to the sink.
void emit(const float* x, size_t n, TensorType type, const TensorSink& sink,
          std::vector<char>& buffer) {
  if (type == TensorType::F32) {
    sink(x, n * 4);
    return;
  }
  DSV3_CHECK(type == TensorType::BF16, "gguf export: tensor type {} is not supported",
             gguf::type_name(type));
  buffer.resize(n * 2);
  convert_from_f32(x, DType::BF16, buffer.data(), n);
  sink(buffer.data(), n * 2);
}

// Streams whole matrices, rows in order, in pieces of about kChunkValues values.
void emit_rows(const SourceMatrix& m, TensorType type, const TensorSink& sink) {
  const int64_t step = std::max<int64_t>(1, kChunkValues / m.cols());
  std::vector<float> rows(size_t(std::min(step, m.rows()) * m.cols()));
  std::vector<char> buffer;
  for (int64_t r = 0; r < m.rows(); r += step) {
    const int64_t r1 = std::min(m.rows(), r + step);
    m.read(r, r1, rows.data());
    emit(rows.data(), size_t((r1 - r) * m.cols()), type, sink, buffer);
  }
  m.release();
}

class Exporter {
 public:
  Exporter(const std::string& dir, const GgufExportOptions& o)
      : dir_(dir), o_(o), c_(ModelConfig::load(dir)), store_(WeightStore::open(dir)) {}

  GgufExportReport run(const std::string& out_path) {
    check_supported();
    hyperparameters();
    const GgufVocab vocab = o_.vocab ? read_gguf_vocab(dir_, c_) : GgufVocab{};
    add_gguf_vocab(w_, vocab);
    tensors();
    GgufExportReport report;
    report.tensors = w_.tensor_count();
    report.mtp_layers_skipped = mtp_layers_present();
    report.tokenizer = vocab.model == "none"
                           ? std::string("none")
                           : fmt::format("{} ({}), {} tokens, {} merges", vocab.model, vocab.pre,
                                         vocab.tokens.size(), vocab.merges.size());
    report.bytes = w_.write(out_path);
    return report;
  }

 private:
  std::string key(const char* suffix) const { return std::string(kArch) + "." + suffix; }

  void check_supported() const {
    const std::string where = (fs::path(dir_) / "config.json").string();
    DSV3_CHECK(c_.qk_nope_head_dim >= 1,
               "{}: qk_nope_head_dim = 0 cannot be exported (llama.cpp's deepseek2 needs a "
               "no-rope part in every head)",
               where);
    const int lead = leading_dense();
    for (int l = 0; l < c_.num_hidden_layers; ++l)
      DSV3_CHECK(c_.is_moe_layer(l) == (l >= lead),
                 "{}: layer {} is {} but llama.cpp's deepseek2 makes every layer from "
                 "first_k_dense_replace = {} on MoE (moe_layer_freq = {} is not exported)",
                 where, l, c_.is_moe_layer(l) ? "MoE" : "dense", lead, c_.moe_layer_freq);
    if (c_.n_routed_experts > 0) {
      DSV3_CHECK(c_.n_shared_experts > 0,
                 "{}: MoE without shared experts cannot be exported (llama.cpp's deepseek2 "
                 "requires them)",
                 where);
      const int per_group = c_.n_routed_experts / c_.n_group;
      DSV3_CHECK(c_.n_group == 1 || (c_.topk_method == "noaux_tc" && per_group >= 2),
                 "{}: group-limited routing with topk_method \"{}\" and {} experts per group "
                 "cannot be exported (llama.cpp scores a group by the sum of its top-2 scores, "
                 "as noaux_tc does, with at least 2 experts per group)",
                 where, c_.topk_method, per_group);
    }
    const RopeScaling& y = c_.rope_scaling;
    DSV3_CHECK(!y.yarn || (y.mscale_all_dim != 0 && y.mscale == y.mscale_all_dim),
               "{}: YaRN with mscale = {} and mscale_all_dim = {} cannot be exported (llama.cpp "
               "applies DeepSeek's magnitude scaling only when they are equal and non-zero)",
               where, y.mscale, y.mscale_all_dim);
  }

  int leading_dense() const {
    return c_.n_routed_experts > 0 ? std::min(c_.first_k_dense_replace, c_.num_hidden_layers)
                                   : c_.num_hidden_layers;
  }

  int mtp_layers_present() const {
    int n = 0;
    for (const std::string& name : store_.names()) {
      const std::string prefix = "model.layers.";
      if (name.compare(0, prefix.size(), prefix) != 0) continue;
      const int layer = std::atoi(name.c_str() + prefix.size());
      if (layer >= c_.num_hidden_layers) n = std::max(n, layer - c_.num_hidden_layers + 1);
    }
    return n;
  }

  void hyperparameters() {
    w_.add_string("general.architecture", kArch);
    w_.add_string("general.name", fs::path(dir_).lexically_normal().filename().string());
    w_.add_u32("general.file_type", o_.dtype == TensorType::F32 ? 0 : 32);  // ALL_F32, MOSTLY_BF16
    w_.add_u32(key("vocab_size"), uint32_t(c_.vocab_size));
    w_.add_u32(key("block_count"), uint32_t(c_.num_hidden_layers));
    w_.add_u32(key("context_length"), uint32_t(c_.max_position_embeddings));
    w_.add_u32(key("embedding_length"), uint32_t(c_.hidden_size));
    w_.add_u32(key("feed_forward_length"), uint32_t(c_.intermediate_size));
    w_.add_u32(key("attention.head_count"), uint32_t(c_.num_attention_heads));
    w_.add_u32(key("attention.head_count_kv"), 1);
    w_.add_u32(key("attention.key_length"), uint32_t(c_.kv_lora_rank + c_.qk_rope_head_dim));
    w_.add_u32(key("attention.value_length"), uint32_t(c_.kv_lora_rank));
    w_.add_u32(key("attention.key_length_mla"), uint32_t(c_.qk_head_dim()));
    w_.add_u32(key("attention.value_length_mla"), uint32_t(c_.v_head_dim));
    w_.add_u32(key("attention.q_lora_rank"), uint32_t(c_.q_lora_rank.value_or(0)));
    w_.add_u32(key("attention.kv_lora_rank"), uint32_t(c_.kv_lora_rank));
    w_.add_f32(key("attention.layer_norm_rms_epsilon"), float(c_.rms_norm_eps));
    w_.add_u32(key("rope.dimension_count"), uint32_t(c_.qk_rope_head_dim));
    w_.add_f32(key("rope.freq_base"), float(c_.rope_theta));
    if (c_.rope_scaling.yarn) {
      const RopeScaling& y = c_.rope_scaling;
      w_.add_string(key("rope.scaling.type"), "yarn");
      w_.add_f32(key("rope.scaling.factor"), float(y.factor));
      w_.add_u32(key("rope.scaling.original_context_length"),
                 uint32_t(y.original_max_position_embeddings));
      w_.add_f32(key("rope.scaling.yarn_beta_fast"), float(y.beta_fast));
      w_.add_f32(key("rope.scaling.yarn_beta_slow"), float(y.beta_slow));
      // llama.cpp divides this key by 0.1 when it loads a deepseek2 model.
      w_.add_f32(key("rope.scaling.yarn_log_multiplier"), float(0.1 * y.mscale_all_dim));
    }
    w_.add_u32(key("leading_dense_block_count"), uint32_t(leading_dense()));
    w_.add_u32(key("expert_feed_forward_length"), uint32_t(c_.moe_intermediate_size));
    w_.add_u32(key("expert_shared_count"), uint32_t(c_.n_shared_experts));
    if (c_.n_routed_experts > 0) {
      w_.add_u32(key("expert_count"), uint32_t(c_.n_routed_experts));
      w_.add_u32(key("expert_used_count"), uint32_t(c_.num_experts_per_tok));
      w_.add_u32(key("expert_group_count"), uint32_t(c_.n_group));
      w_.add_u32(key("expert_group_used_count"), uint32_t(c_.topk_group));
      w_.add_f32(key("expert_weights_scale"), float(c_.routed_scaling_factor));
      w_.add_bool(key("expert_weights_norm"), c_.norm_topk_prob);
      w_.add_u32(key("expert_gating_func"), c_.scoring_func == ScoringFunc::Sigmoid ? 2 : 1);
    }
  }

  std::shared_ptr<SourceMatrix> source(const std::string& name, const Shape& shape) {
    return std::make_shared<SourceMatrix>(store_, c_, name, shape);
  }

  // A matrix [rows, cols] as ne {cols, rows}.
  void matrix(const std::string& out, const std::string& name, int64_t rows, int64_t cols,
              TensorType type) {
    auto m = source(name, Shape{rows, cols});
    w_.add_tensor(out, type, {cols, rows},
                  [m, type](const TensorSink& s) { emit_rows(*m, type, s); });
  }
  void matrix(const std::string& out, const std::string& name, int64_t rows, int64_t cols) {
    matrix(out, name, rows, cols, o_.dtype);
  }

  // A vector, always float32.
  void vector(const std::string& out, const std::string& name, int64_t n) {
    auto m = source(name, Shape{n});
    w_.add_tensor(out, TensorType::F32, {n},
                  [m](const TensorSink& s) { emit_rows(*m, TensorType::F32, s); });
  }

  // The E routed experts' `proj` matrices [rows, cols] stacked as ne {cols, rows, E}.
  void experts(const std::string& out, const std::string& prefix, const std::string& proj,
               int64_t rows, int64_t cols) {
    std::vector<std::shared_ptr<SourceMatrix>> ms;
    for (int e = 0; e < c_.n_routed_experts; ++e)
      ms.push_back(source(prefix + "experts." + std::to_string(e) + "." + proj, Shape{rows, cols}));
    const TensorType type = o_.dtype;
    w_.add_tensor(out, type, {cols, rows, int64_t(ms.size())}, [ms, type](const TensorSink& s) {
      for (const auto& m : ms) emit_rows(*m, type, s);
    });
  }

  // kv_b_proj [H * (nope + v), R] -> attn_k_b {nope, R, H} (each head's key rows transposed)
  // and attn_v_b {R, v, H} (each head's value rows).
  void kv_b(const std::string& blk, const std::string& name) {
    const int64_t h = c_.num_attention_heads, nope = c_.qk_nope_head_dim, v = c_.v_head_dim;
    const int64_t r = c_.kv_lora_rank;
    auto m = source(name, Shape{h * (nope + v), r});
    const TensorType type = o_.dtype;
    w_.add_tensor(blk + "attn_k_b.weight", type, {nope, r, h}, [=](const TensorSink& s) {
      std::vector<float> rows(size_t(nope * r)), t(size_t(nope * r));
      std::vector<char> buffer;
      for (int64_t head = 0; head < h; ++head) {
        m->read(head * (nope + v), head * (nope + v) + nope, rows.data());  // [nope, R]
        for (int64_t i = 0; i < nope; ++i)
          for (int64_t j = 0; j < r; ++j) t[size_t(j * nope + i)] = rows[size_t(i * r + j)];
        emit(t.data(), t.size(), type, s, buffer);  // [R, nope]
      }
      m->release();
    });
    w_.add_tensor(blk + "attn_v_b.weight", type, {r, v, h}, [=](const TensorSink& s) {
      std::vector<float> rows(size_t(v * r));
      std::vector<char> buffer;
      for (int64_t head = 0; head < h; ++head) {
        m->read(head * (nope + v) + nope, (head + 1) * (nope + v), rows.data());  // [v, R]
        emit(rows.data(), rows.size(), type, s, buffer);
      }
      m->release();
    });
  }

  void layer(int l) {
    const int64_t d = c_.hidden_size, h = c_.num_attention_heads;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string a = p + "self_attn.", m = p + "mlp.";
    const std::string blk = "blk." + std::to_string(l) + ".";
    vector(blk + "attn_norm.weight", p + "input_layernorm.weight", d);
    if (c_.q_lora_rank) {
      const int64_t q = *c_.q_lora_rank;
      matrix(blk + "attn_q_a.weight", a + "q_a_proj.weight", q, d);
      vector(blk + "attn_q_a_norm.weight", a + "q_a_layernorm.weight", q);
      matrix(blk + "attn_q_b.weight", a + "q_b_proj.weight", h * c_.qk_head_dim(), q);
    } else {
      matrix(blk + "attn_q.weight", a + "q_proj.weight", h * c_.qk_head_dim(), d);
    }
    matrix(blk + "attn_kv_a_mqa.weight", a + "kv_a_proj_with_mqa.weight",
           c_.kv_lora_rank + c_.qk_rope_head_dim, d);
    vector(blk + "attn_kv_a_norm.weight", a + "kv_a_layernorm.weight", c_.kv_lora_rank);
    kv_b(blk, a + "kv_b_proj.weight");
    matrix(blk + "attn_output.weight", a + "o_proj.weight", d, h * c_.v_head_dim);
    vector(blk + "ffn_norm.weight", p + "post_attention_layernorm.weight", d);
    if (!c_.is_moe_layer(l)) {
      const int64_t i = c_.intermediate_size;
      matrix(blk + "ffn_gate.weight", m + "gate_proj.weight", i, d);
      matrix(blk + "ffn_up.weight", m + "up_proj.weight", i, d);
      matrix(blk + "ffn_down.weight", m + "down_proj.weight", d, i);
      return;
    }
    const int64_t e = c_.n_routed_experts, i = c_.moe_intermediate_size;
    matrix(blk + "ffn_gate_inp.weight", m + "gate.weight", e, d, TensorType::F32);
    if (c_.has_bias()) vector(blk + "exp_probs_b.bias", m + "gate.e_score_correction_bias", e);
    experts(blk + "ffn_gate_exps.weight", m, "gate_proj.weight", i, d);
    experts(blk + "ffn_up_exps.weight", m, "up_proj.weight", i, d);
    experts(blk + "ffn_down_exps.weight", m, "down_proj.weight", d, i);
    const int64_t s = int64_t(c_.n_shared_experts) * i;
    matrix(blk + "ffn_gate_shexp.weight", m + "shared_experts.gate_proj.weight", s, d);
    matrix(blk + "ffn_up_shexp.weight", m + "shared_experts.up_proj.weight", s, d);
    matrix(blk + "ffn_down_shexp.weight", m + "shared_experts.down_proj.weight", d, s);
  }

  void tensors() {
    const int64_t d = c_.hidden_size, v = c_.vocab_size;
    matrix("token_embd.weight", "model.embed_tokens.weight", v, d);
    for (int l = 0; l < c_.num_hidden_layers; ++l) layer(l);
    vector("output_norm.weight", "model.norm.weight", d);
    matrix("output.weight", "lm_head.weight", v, d);
  }

  std::string dir_;
  GgufExportOptions o_;
  ModelConfig c_;
  WeightStore store_;
  gguf::Writer w_;
};

}  // namespace

GgufExportReport export_gguf(const std::string& checkpoint_dir, const std::string& out_path,
                             const GgufExportOptions& options) {
  std::error_code ec;
  DSV3_CHECK(fs::is_directory(checkpoint_dir, ec), "export: {} is not a checkpoint folder",
             checkpoint_dir);
  DSV3_CHECK(fs::exists(fs::path(checkpoint_dir) / "config.json", ec),
             "export: {} has no config.json", checkpoint_dir);
  DSV3_CHECK(options.dtype == TensorType::BF16 || options.dtype == TensorType::F32,
             "export: tensor type {} is not supported (bf16 or f32)",
             gguf::type_name(options.dtype));
  const fs::path out_dir =
      fs::path(out_path).parent_path().empty() ? fs::path(".") : fs::path(out_path).parent_path();
  DSV3_CHECK(fs::is_directory(out_dir, ec), "export: {}: the folder {} does not exist", out_path,
             out_dir.string());
  DSV3_CHECK(!fs::is_directory(out_path, ec), "export: {} is a folder, not a file name", out_path);
  Exporter e(checkpoint_dir, options);
  return e.run(out_path);
}

}  // namespace dsv3::infer
