#pragma once
// Checkpoints of a training run. Each is a folder that Hugging Face transformers can load as
// DeepseekV3ForCausalLM (config.json, model.safetensors under Hugging Face names, the tokenizer
// files) with the training state beside it (trainer_state/: optimizer moments and state.json
// with the step, schedule position, data cursor and RNG). Writes are atomic: the folder is
// written under a temporary name, every file fsynced, then renamed into place, and the
// `latest` pointer is replaced by rename. A run killed at any moment (even mid-save) resumes
// from its last complete checkpoint.
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "model/weights.h"
#include "train/adamw.h"

namespace dsv3 {

struct CheckpointContents {
  const ModelWeights* weights = nullptr;
  const AdamW* optimizer = nullptr;   // optional: model-only when null
  nlohmann::json state;               // trainer state (step, data cursor, RNG, ...)
  std::string tokenizer_dir;          // tokenizer.json / tokenizer_config.json to copy (optional)
};

// Writes run_dir/checkpoints/step-<step>; keeps the newest `keep_last` (0: all). Returns its path.
std::string save_checkpoint(const std::string& run_dir, int64_t step,
                            const CheckpointContents& contents, int keep_last);

// The newest complete checkpoint of a run, if any.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);

// Loads weights (and optimizer moments and state when given) from a checkpoint folder, after
// checking its config matches the model's.
void load_checkpoint(const std::string& checkpoint_dir, ModelWeights& weights, AdamW* optimizer,
                     nlohmann::json* state);

}  // namespace dsv3
