#pragma once
// Checkpoint conversion between BF16 and DeepSeek's block-scaled FP8 release format.
//
// To FP8: every 2-D projection weight (a name with "_proj", except MTP's eh_proj) becomes
// F8_E4M3 with `{name}_scale_inv` [ceil(rows/128), ceil(cols/128)] float32: per 128x128 block,
// scale = max|w| / 448 and q = e4m3(w / scale) (round to nearest even), so w ~= q * scale.
// The embedding, lm_head, router gates and eh_proj stay BF16, 1-D tensors keep their dtype, and
// config.json gains quantization_config {quant_method: fp8, fmt: e4m3, weight_block_size:
// [128, 128], activation_scheme: dynamic}.
// To BF16: FP8 tensors are dequantized (q * scale, rounded to BF16), scales dropped, other 2-D
// tensors stored as BF16, 1-D tensors kept; quantization_config removed.
// Other files of the folder (tokenizer.json, tokenizer_config.json, ...) are copied. Output is
// sharded at `shard_bytes` with model.safetensors.index.json when it needs more than one file.
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"

namespace dsv3::infer {

enum class CheckpointFormat { BF16, FP8, F32 };
CheckpointFormat parse_checkpoint_format(const std::string& name);  // "bf16" | "fp8" | "f32"

// Converts the checkpoint folder `in_dir` into `out_dir` (created; must not be `in_dir`).
void convert_checkpoint(const std::string& in_dir, const std::string& out_dir,
                        CheckpointFormat to, size_t shard_bytes = size_t(4) << 30);

// Writes float32 tensors (Hugging Face names) as a checkpoint in `to` format with `config`
// (a config.json object; quantization_config set or removed to match).
void write_checkpoint(const std::string& out_dir, nlohmann::json config,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      CheckpointFormat to, size_t shard_bytes = size_t(4) << 30);

// One 2-D float32 matrix to FP8 E4M3 blocks and their float32 dequantization scales.
std::pair<Tensor, Tensor> quantize_fp8_blocks(const float* w, int64_t rows, int64_t cols,
                                              int64_t block = 128);

}  // namespace dsv3::infer
