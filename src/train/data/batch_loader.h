#pragma once
// The trainer's view of a prepared data folder: an endless stream of packed token windows.
//
// Documents of one split are visited in a seeded random order, a fresh permutation each epoch;
// each may be rearranged by FIM (fim.h), decided per (seed, epoch, document) so the stream is a
// pure function of the seed and can resume anywhere. Documents are laid back to back with no
// padding and no cross-document mask: each row of a batch is a window of seq + 1 consecutive
// stream tokens (inputs = the first seq, labels = the last seq), and consecutive rows and batches
// advance by seq, so every stream token is a label exactly once.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/data/fim.h"
#include "train/data/manifest.h"
#include "train/data/shard.h"

namespace dsv3 {

class BatchLoader {
 public:
  // split: "train" or "validation". Opens and validates every shard of the split.
  BatchLoader(const std::string& data_dir, const std::string& split, int64_t seq, uint64_t seed, FimSettings fim);

  // Fills tokens[batch*seq] and labels[batch*seq] (labels[i] = the token after tokens[i] in the
  // packed stream).
  void next(int64_t batch, int32_t* tokens, int32_t* labels);

  int64_t vocab_size() const { return manifest_.vocab_size; }
  uint64_t tokenizer_hash() const { return manifest_.tokenizer_hash; }
  int64_t total_tokens() const { return total_tokens_; }  // of this split, as stored (FIM sentinels not counted)
  int64_t documents() const { return static_cast<int64_t>(doc_start_.back()); }
  int64_t epoch() const { return epoch_; }
  int64_t seq() const { return seq_; }
  const DataManifest& manifest() const { return manifest_; }

  // Fails with a clear message unless the data was made with this tokenizer (hash of its
  // tokenizer.json, see tokenizer_file_hash) and vocabulary size.
  void expect_tokenizer(uint64_t hash, int64_t vocab_size) const;

  // The cursor: everything that determines the rest of the stream (seed, epoch, position in the
  // epoch's permutation, offset in the current document) plus the identity of the data and FIM
  // settings, which restore() checks. There is no hidden RNG state: order and FIM are derived.
  nlohmann::json state() const;
  // After restore, next() continues exactly (bit-identical batches). Adopts the state's seed.
  void restore(const nlohmann::json& state);

 private:
  const std::vector<int32_t>& current_document();
  void advance_document();
  void make_permutation(int64_t epoch);

  DataManifest manifest_;
  std::string data_dir_, split_;
  int64_t seq_;
  uint64_t seed_;
  FimSettings fim_;
  std::vector<TokenShard> shards_;
  std::vector<int64_t> doc_start_;  // global index of each shard's first document; back() = total
  int64_t total_tokens_ = 0;
  bool bos_first_ = false, eos_last_ = false;

  // cursor
  int64_t epoch_ = 0, position_ = 0, offset_ = 0;
  // caches derived from the cursor
  int64_t perm_epoch_ = -1;
  std::vector<uint64_t> permutation_;
  int64_t doc_epoch_ = -1, doc_position_ = -1;
  std::vector<int32_t> doc_;
  std::vector<int32_t> window_;
};

}  // namespace dsv3
