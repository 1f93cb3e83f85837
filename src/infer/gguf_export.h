#pragma once
// Export of a checkpoint (config.json + safetensors, BF16, F32 or block-scaled FP8) to a GGUF
// file for llama.cpp's `deepseek2` architecture, the one llama.cpp runs DeepSeek-V3 as.
//
// Hyperparameters (`deepseek2.*`): block_count, context_length, embedding_length,
// feed_forward_length, attention.head_count, attention.head_count_kv = 1 (MLA runs as
// multi-query attention over the latent: attention.key_length = kv_lora_rank + rope dims,
// attention.value_length = kv_lora_rank), attention.key_length_mla / value_length_mla (the
// per-head q/k and v widths), q_lora_rank (0 without q LoRA), kv_lora_rank, rms epsilon,
// rope.dimension_count and freq_base, YaRN (rope.scaling.*: type, factor, original context,
// beta fast/slow, yarn_log_multiplier = 0.1 * mscale_all_dim), leading_dense_block_count,
// expert counts (routed, used, shared, groups, groups used), expert_feed_forward_length,
// expert_weights_scale / _norm, expert_gating_func (1 softmax, 2 sigmoid), vocab_size.
//
// Tensors (Hugging Face name -> GGUF name, ne innermost first):
//   model.embed_tokens [V, D] -> token_embd {D, V}; lm_head -> output; model.norm -> output_norm
//   input_layernorm -> blk.N.attn_norm; post_attention_layernorm -> blk.N.ffn_norm
//   q_a_proj, q_a_layernorm, q_b_proj (or q_proj) -> attn_q_a, attn_q_a_norm, attn_q_b (attn_q)
//   kv_a_proj_with_mqa, kv_a_layernorm -> attn_kv_a_mqa, attn_kv_a_norm
//   kv_b_proj [H * (nope + v), R] split per head into
//     attn_k_b {nope, R, H}: the key rows, transposed per head (W_uk^T, for absorbing q_nope)
//     attn_v_b {R, v, H}: the value rows as they are (W_uv)
//   o_proj -> attn_output; dense mlp gate/up/down_proj -> ffn_gate/up/down
//   mlp.gate -> ffn_gate_inp; mlp.gate.e_score_correction_bias -> exp_probs_b.bias
//   mlp.experts.{e}.{gate,up,down}_proj -> ffn_{gate,up,down}_exps: the E experts stacked into
//     one {cols, rows, E} tensor; mlp.shared_experts.* -> ffn_{gate,up,down}_shexp
// Matrices are written in the asked type (BF16 or F32); norms, the router gate and the
// correction bias always in F32 (as llama.cpp's own converter does). FP8 weights are dequantized
// (e4m3 value x block scale) first. MTP layers (model.layers.{L + k}) are not exported:
// llama.cpp's deepseek2 does not run them.
//
// Configurations llama.cpp would compute differently are refused with an error that says why:
// MoE layers interleaved with dense ones (moe_layer_freq > 1), MoE without shared experts,
// group-limited routing other than noaux_tc's top-2 group sums, YaRN with
// mscale != mscale_all_dim or mscale_all_dim = 0, qk_nope_head_dim = 0.
#include <cstdint>
#include <string>

#include "model/gguf_writer.h"

namespace dsv3::infer {

struct GgufExportOptions {
  gguf::TensorType dtype = gguf::TensorType::BF16;  // BF16 or F32 for the matrices
  bool vocab = true;  // export tokenizer.json when the folder has one (else a "none" vocabulary)
};

struct GgufExportReport {
  size_t tensors = 0;
  uint64_t bytes = 0;
  int mtp_layers_skipped = 0;
  std::string tokenizer;  // "gpt2 (deepseek-v3), N tokens" or "none"
};

GgufExportReport export_gguf(const std::string& checkpoint_dir, const std::string& out_path,
                             const GgufExportOptions& options = {});

}  // namespace dsv3::infer
