#pragma once
// `dsv3 prepare`: text files -> tokenized, split, sharded documents plus a manifest (docs/data.md).
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3 {

struct PrepareOptions {
  std::string tokenizer_path;        // tokenizer.json (tokenizer_config.json beside it is read too)
  std::string out_dir;
  std::vector<std::string> inputs;   // files and folders
  std::vector<std::string> extensions;  // filter for files found in folders ("txt" or ".txt"); empty = all
  std::string delimiter;             // empty: one document per file
  double val_fraction = 0.02;        // share of documents held out for validation
  uint64_t seed = 1;                 // decides which documents are held out
  bool skip_invalid = false;         // skip empty/binary/non-UTF-8 files with a warning instead of failing
  bool force = false;                // replace prepared data already in out_dir
  bool progress = false;             // a progress line on stderr
  int64_t shard_tokens = 100'000'000;  // a shard is closed once it holds this many tokens
};

struct PrepareSummary {
  int64_t files = 0, skipped_files = 0, bytes = 0;
  int64_t documents[2] = {0, 0};  // train, validation
  int64_t tokens[2] = {0, 0};
  int64_t shards = 0;
  double seconds = 0;
};

PrepareSummary prepare_dataset(const PrepareOptions& options);

}  // namespace dsv3
