#include "train/data/prepare.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "train/data/corpus.h"
#include "train/data/hash.h"
#include "train/data/manifest.h"
#include "train/data/mapped_file.h"
#include "train/data/rng.h"
#include "train/data/shard.h"

namespace dsv3 {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kSplitDomain = 0x73706c6974ull;  // "split"
constexpr size_t kChunkBytes = 16 << 20;            // text tokenized per encode_batch call
const char* const kSplitNames[2] = {"train", "validation"};

struct InputFile {
  std::string path;
  uint64_t bytes = 0;
  std::vector<DocumentSpan> documents;
};

// The shards of one split, rolling over to a new file at the token limit.
class SplitWriter {
 public:
  SplitWriter(const PrepareOptions& o, const std::string& split, uint64_t vocab, uint64_t hash, uint32_t flags,
              uint32_t bos, uint32_t eos)
      : options_(o), split_(split), vocab_(vocab), hash_(hash), flags_(flags), bos_(bos), eos_(eos) {}

  void add(std::span<const uint32_t> doc) {
    if (!writer_) {
      std::string name = fmt::format("{}-{:05}.bin", split_, shards_.size());
      writer_ = std::make_unique<ShardWriter>((fs::path(options_.out_dir) / name).string(), vocab_, hash_, flags_,
                                              bos_, eos_);
      shards_.push_back({name, 0, 0});
    }
    writer_->add_document(doc);
    if (static_cast<int64_t>(writer_->tokens()) >= options_.shard_tokens) close();
  }

  void close() {
    if (!writer_) return;
    ShardHeader h = writer_->finish();
    shards_.back().documents = static_cast<int64_t>(h.documents);
    shards_.back().tokens = static_cast<int64_t>(h.tokens);
    writer_.reset();
  }

  ManifestSplit result() const {
    ManifestSplit s;
    s.shards = shards_;
    for (const auto& sh : shards_) {
      s.documents += sh.documents;
      s.tokens += sh.tokens;
    }
    return s;
  }

 private:
  const PrepareOptions& options_;
  std::string split_;
  uint64_t vocab_, hash_;
  uint32_t flags_, bos_, eos_;
  std::unique_ptr<ShardWriter> writer_;
  std::vector<ManifestShard> shards_;
};

class Progress {
 public:
  Progress(bool enabled, int64_t total_bytes) : enabled_(enabled), total_(total_bytes), start_(clock::now()) {}
  void update(int64_t bytes, int64_t documents, int64_t tokens) {
    if (!enabled_) return;
    double s = std::chrono::duration<double>(clock::now() - start_).count();
    std::fprintf(stderr, "\rprepare: %5.1f%%  %.1f/%.1f MB  %lld documents  %lld tokens  %.1f MB/s   ",
                 total_ > 0 ? 100.0 * bytes / total_ : 100.0, bytes / 1e6, total_ / 1e6,
                 static_cast<long long>(documents), static_cast<long long>(tokens), s > 0 ? bytes / 1e6 / s : 0.0);
    std::fflush(stderr);
  }
  void done() {
    if (enabled_) std::fprintf(stderr, "\n");
  }

 private:
  using clock = std::chrono::steady_clock;
  bool enabled_;
  int64_t total_;
  clock::time_point start_;
};

// Removes what an earlier prepare left in out_dir: its manifest first, so that an interrupted
// replacement never leaves a manifest that points at rewritten shards.
void clear_previous(const PrepareOptions& o) {
  fs::path manifest = fs::path(o.out_dir) / "manifest.json";
  if (!fs::exists(manifest)) return;
  DSV3_CHECK(o.force, "{}: already holds prepared data (manifest.json); pass --force to replace it", o.out_dir);
  fs::remove(manifest);
  for (const auto& entry : fs::directory_iterator(o.out_dir)) {
    std::string name = entry.path().filename().string();
    bool ours = (name.starts_with("train-") || name.starts_with("validation-")) &&
                (name.ends_with(".bin") || name.ends_with(".bin.tmp"));
    if (ours && entry.is_regular_file()) fs::remove(entry.path());
  }
}

}  // namespace

PrepareSummary prepare_dataset(const PrepareOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  DSV3_CHECK(std::isfinite(o.val_fraction) && o.val_fraction >= 0 && o.val_fraction < 1,
             "prepare: --val-fraction must be in [0, 1), got {}", o.val_fraction);
  DSV3_CHECK(o.shard_tokens >= 1, "prepare: shard size must be at least one token");
  DSV3_CHECK(!o.out_dir.empty(), "prepare: no output folder given");
  DSV3_CHECK(o.force || !fs::exists(fs::path(o.out_dir) / "manifest.json"),
             "{}: already holds prepared data (manifest.json); pass --force to replace it", o.out_dir);

  // Pass 1: every input is checked (and its documents found) before any tokenizing or writing.
  PrepareSummary summary;
  std::vector<InputFile> files;
  int64_t total_documents = 0;
  for (const std::string& path : collect_input_files(o.inputs, o.extensions)) {
    MappedFile file = MappedFile::open(path);
    std::string_view text = file.bytes();
    std::optional<std::string> problem = text_problem(text);
    std::vector<DocumentSpan> docs;
    if (!problem) {
      docs = split_documents(text, o.delimiter);
      if (docs.empty()) problem = "empty file (only whitespace)";
    }
    if (problem) {
      if (!o.skip_invalid) fail("{}: {} (pass --skip-invalid to skip such files)", path, *problem);
      std::fprintf(stderr, "prepare: warning: skipping %s: %s\n", path.c_str(), problem->c_str());
      ++summary.skipped_files;
      continue;
    }
    total_documents += static_cast<int64_t>(docs.size());
    summary.bytes += static_cast<int64_t>(text.size());
    files.push_back({path, text.size(), std::move(docs)});
  }
  summary.files = static_cast<int64_t>(files.size());
  DSV3_CHECK(total_documents > 0, "prepare: the inputs hold no documents (every file was skipped)");

  const tok::Tokenizer tokenizer = tok::Tokenizer::load(o.tokenizer_path);
  const uint64_t tokenizer_hash = tokenizer_file_hash(o.tokenizer_path);
  const uint64_t vocab = tokenizer.vocab_size();
  DSV3_CHECK(tokenizer.eos_id().has_value(),
             "{}: the tokenizer has no EOS token (eos_token in tokenizer_config.json); documents need one",
             o.tokenizer_path);
  const bool add_bos = tokenizer.config().add_bos_token;
  DSV3_CHECK(!add_bos || tokenizer.bos_id().has_value(),
             "{}: add_bos_token is set but the tokenizer has no BOS token", o.tokenizer_path);
  const uint32_t eos = *tokenizer.eos_id();
  const uint32_t bos = tokenizer.bos_id() ? *tokenizer.bos_id() : kNoToken;
  const uint32_t flags = kShardDocsEndWithEos | (add_bos ? kShardDocsStartWithBos : 0);

  // Hold out an exact number of documents, chosen by a seeded shuffle of their indices.
  int64_t n_val = 0;
  if (o.val_fraction > 0 && total_documents >= 2)
    n_val = std::clamp<int64_t>(std::llround(o.val_fraction * static_cast<double>(total_documents)), 1,
                                total_documents - 1);
  std::vector<uint8_t> is_validation(static_cast<size_t>(total_documents), 0);
  {
    std::vector<uint64_t> order(static_cast<size_t>(total_documents));
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    DataRng rng(derive_seed(o.seed, kSplitDomain));
    for (uint64_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
    for (int64_t i = 0; i < n_val; ++i) is_validation[order[static_cast<size_t>(i)]] = 1;
  }

  fs::create_directories(o.out_dir);
  clear_previous(o);
  SplitWriter writers[2] = {SplitWriter(o, kSplitNames[0], vocab, tokenizer_hash, flags, bos, eos),
                            SplitWriter(o, kSplitNames[1], vocab, tokenizer_hash, flags, bos, eos)};

  // Pass 2: tokenize chunks of documents on all threads, write them in input order.
  Progress progress(o.progress, summary.bytes);
  tok::EncodeOptions encode_options;
  encode_options.add_bos = add_bos;
  std::vector<MappedFile> chunk_files;
  std::vector<std::string_view> chunk_docs;
  size_t chunk_bytes = 0;
  int64_t next_document = 0, bytes_done = 0;
  auto flush = [&] {
    if (chunk_docs.empty()) return;
    std::vector<std::vector<uint32_t>> encoded = tokenizer.encode_batch(chunk_docs, encode_options);
    for (auto& ids : encoded) {
      ids.push_back(eos);
      const int split = is_validation[static_cast<size_t>(next_document++)];
      writers[split].add(ids);
      summary.documents[split] += 1;
      summary.tokens[split] += static_cast<int64_t>(ids.size());
    }
    bytes_done += static_cast<int64_t>(chunk_bytes);
    progress.update(bytes_done, next_document, summary.tokens[0] + summary.tokens[1]);
    chunk_docs.clear();
    chunk_files.clear();
    chunk_bytes = 0;
  };
  for (const InputFile& input : files) {
    MappedFile file = MappedFile::open(input.path);
    DSV3_CHECK(file.bytes().size() == input.bytes, "{}: changed while prepare was reading it", input.path);
    for (const DocumentSpan& d : input.documents) chunk_docs.push_back(file.bytes().substr(d.begin, d.size));
    chunk_bytes += input.bytes;
    chunk_files.push_back(std::move(file));
    if (chunk_bytes >= kChunkBytes) flush();
  }
  flush();
  progress.done();

  DataManifest manifest;
  manifest.vocab_size = static_cast<int64_t>(vocab);
  manifest.tokenizer_hash = tokenizer_hash;
  manifest.tokenizer_source = fs::absolute(o.tokenizer_path).lexically_normal().string();
  manifest.bos_id = bos == kNoToken ? -1 : bos;
  manifest.eos_id = eos;
  manifest.bos_per_document = add_bos;
  for (int s = 0; s < 2; ++s) {
    writers[s].close();
    manifest.splits[kSplitNames[s]] = writers[s].result();
    summary.shards += static_cast<int64_t>(manifest.splits[kSplitNames[s]].shards.size());
  }
  manifest.extra = {{"inputs", o.inputs},
                    {"files", summary.files},
                    {"skipped_files", summary.skipped_files},
                    {"bytes", summary.bytes},
                    {"delimiter", o.delimiter.empty() ? nlohmann::json(nullptr) : nlohmann::json(o.delimiter)},
                    {"val_fraction", o.val_fraction},
                    {"seed", o.seed}};
  manifest.save(o.out_dir);  // last: only now is the folder a finished prepare
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace dsv3
