#pragma once
// The main job on a fresh machine: `dsv3 train` with no arguments. A small DeepSeek-V3 with every
// mechanism on (MLA with q LoRA, MoE with a shared expert, sigmoid routing limited to groups, the
// auxiliary-loss-free bias, MTP depth 1), a byte-level BPE vocabulary trained on the default
// corpus (the public-domain State of the Union addresses), about ten minutes on 2 CPU cores.
#include <string>

#include "model/config.h"
#include "train/trainer.h"

namespace dsv3 {

// The built-in model (about 10M parameters, 4.5M active per token).
ModelConfig default_model_config();

// Where the setup script puts the default corpus (one .txt file per address).
std::string default_corpus_dir();

// Makes sure RUN_DIR/tokenizer (BPE of `vocab` tokens) and RUN_DIR/data (prepared shards) exist,
// building what is missing from the corpus, and fills in the settings' paths.
void prepare_default_run(TrainSettings& settings, const std::string& corpus_dir, int vocab);

}  // namespace dsv3
