#pragma once
// The tokenizer of a checkpoint folder as llama.cpp's GGUF vocabulary (`tokenizer.ggml.*`).
//
// With a tokenizer.json (byte-level BPE, DeepSeek-V3's pre-tokenizer: the one every tokenizer
// dsv3 trains uses too) the vocabulary is llama.cpp's "gpt2" model with pre-tokenizer
// "deepseek-v3": every id below the model's vocab_size gets its token text (byte-level form, as
// in tokenizer.json; added tokens as their content) and a type (1 normal; 3 control for special
// added tokens and for added tokens spelled `<|...|>` / `<｜...｜>`; 4 user-defined for other
// added tokens; 5 unused for ids no token has, named "[PAD<id>]"), then the merges in rank
// order ("left right"), the BOS/EOS/padding ids and add_bos/add_eos of tokenizer_config.json
// (the BOS/EOS ids of config.json when tokenizer_config.json names none) and its chat template.
// A tokenizer llama.cpp would split differently (another pre-tokenizer, a normalizer that
// changes text, a non-BPE model) is refused rather than exported wrongly.
//
// Without a tokenizer.json the vocabulary is llama.cpp's "none" model: ids only, vocab_size of
// them (the model then runs on token ids).
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/gguf_writer.h"

namespace dsv3::infer {

struct GgufVocab {
  std::string model = "none";  // "gpt2" or "none"
  std::string pre;             // "deepseek-v3" for gpt2
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  std::optional<int32_t> bos, eos, pad;
  std::optional<bool> add_bos, add_eos;
  std::string chat_template;
};

// Reads `dir`/tokenizer.json (and tokenizer_config.json beside it) for a model of config `c`;
// a "none" vocabulary when the folder has no tokenizer.json.
GgufVocab read_gguf_vocab(const std::string& dir, const ModelConfig& c);

// Adds the vocabulary's keys (and `<arch>.vocab_size` is the caller's).
void add_gguf_vocab(gguf::Writer& w, const GgufVocab& vocab);

}  // namespace dsv3::infer
