#include "train/data/batch_loader.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "train/data/hash.h"

namespace dsv3 {

using nlohmann::json;

namespace {
constexpr uint64_t kOrderDomain = 0x6f72646572ull;  // "order"
constexpr uint64_t kFimDomain = 0x66696dull;         // "fim"
}  // namespace

BatchLoader::BatchLoader(const std::string& data_dir, const std::string& split, int64_t seq, uint64_t seed,
                         FimSettings fim)
    : manifest_(DataManifest::load(data_dir)), data_dir_(data_dir), split_(split), seq_(seq), seed_(seed), fim_(fim) {
  const std::string where = (std::filesystem::path(data_dir) / "manifest.json").string();
  DSV3_CHECK(split == "train" || split == "validation", "{}: split must be \"train\" or \"validation\", not \"{}\"",
             data_dir, split);
  DSV3_CHECK(seq >= 1, "{}: sequence length must be at least 1 (got {})", data_dir, seq);
  DSV3_CHECK(manifest_.vocab_size <= (int64_t{1} << 31), "{}: vocabulary of {} ids does not fit int32 tokens", where,
             manifest_.vocab_size);
  DSV3_CHECK(std::isfinite(fim.rate) && fim.rate >= 0 && fim.rate <= 1, "FIM rate {} is outside [0, 1]", fim.rate);
  if (fim.rate > 0) {
    for (int32_t id : {fim.prefix_id, fim.middle_id, fim.suffix_id})
      DSV3_CHECK(id >= 0 && id < manifest_.vocab_size,
                 "{}: FIM rate {} needs the three sentinel ids within the vocabulary of {} (got prefix {}, suffix {}, "
                 "middle {}); the tokenizer may lack {} {} {}, so use rate 0",
                 data_dir, fim.rate, manifest_.vocab_size, fim.prefix_id, fim.suffix_id, fim.middle_id, kFimBeginToken,
                 kFimHoleToken, kFimEndToken);
  }
  const ManifestSplit& s = manifest_.split(split, where);
  DSV3_CHECK(s.documents > 0, "{}: the {} split has no documents{}", data_dir, split,
             split == "validation" ? " (prepare with --val-fraction > 0)" : "");
  doc_start_.push_back(0);
  for (const ManifestShard& entry : s.shards) {
    const std::string path = (std::filesystem::path(data_dir) / entry.file).string();
    DSV3_CHECK(std::filesystem::exists(path), "{}: missing (listed in {})", path, where);
    TokenShard shard = TokenShard::open(path);
    const ShardHeader& h = shard.header();
    DSV3_CHECK(h.tokenizer_hash == manifest_.tokenizer_hash,
               "{}: made with tokenizer {}, but the manifest says {} (a shard from another tokenizer)", path,
               hash_to_hex(h.tokenizer_hash), hash_to_hex(manifest_.tokenizer_hash));
    DSV3_CHECK(static_cast<int64_t>(h.vocab_size) == manifest_.vocab_size,
               "{}: vocabulary size {}, but the manifest says {} (a shard from another vocabulary)", path,
               h.vocab_size, manifest_.vocab_size);
    DSV3_CHECK(shard.documents() == entry.documents && shard.tokens() == entry.tokens,
               "{}: holds {} documents and {} tokens, but the manifest lists {} and {}", path, shard.documents(),
               shard.tokens(), entry.documents, entry.tokens);
    const bool bos = h.flags & kShardDocsStartWithBos, eos = h.flags & kShardDocsEndWithEos;
    DSV3_CHECK(bos == manifest_.bos_per_document, "{}: BOS-per-document flag disagrees with the manifest", path);
    if (shards_.empty()) {
      bos_first_ = bos;
      eos_last_ = eos;
    }
    DSV3_CHECK(eos == eos_last_, "{}: EOS flag differs from the split's first shard", path);
    total_tokens_ += shard.tokens();
    doc_start_.push_back(doc_start_.back() + shard.documents());
    shards_.push_back(std::move(shard));
  }
}

void BatchLoader::expect_tokenizer(uint64_t hash, int64_t vocab_size) const {
  DSV3_CHECK(hash == manifest_.tokenizer_hash && vocab_size == manifest_.vocab_size,
             "{}: prepared with tokenizer {} (vocabulary {}), but this run uses tokenizer {} (vocabulary {}); "
             "run dsv3 prepare again with this tokenizer",
             data_dir_, hash_to_hex(manifest_.tokenizer_hash), manifest_.vocab_size, hash_to_hex(hash), vocab_size);
}

void BatchLoader::make_permutation(int64_t epoch) {
  const uint64_t n = static_cast<uint64_t>(documents());
  permutation_.resize(n);
  for (uint64_t i = 0; i < n; ++i) permutation_[i] = i;
  DataRng rng(derive_seed(seed_, kOrderDomain, static_cast<uint64_t>(epoch)));
  for (uint64_t i = n; i > 1; --i) std::swap(permutation_[i - 1], permutation_[rng.below(i)]);
  perm_epoch_ = epoch;
}

const std::vector<int32_t>& BatchLoader::current_document() {
  if (doc_epoch_ == epoch_ && doc_position_ == position_) return doc_;
  if (perm_epoch_ != epoch_) make_permutation(epoch_);
  const uint64_t id = permutation_[static_cast<size_t>(position_)];
  const size_t s = static_cast<size_t>(
      std::upper_bound(doc_start_.begin(), doc_start_.end(), static_cast<int64_t>(id)) - doc_start_.begin() - 1);
  doc_.clear();
  shards_[s].append_document(static_cast<int64_t>(id) - doc_start_[s], doc_);
  if (fim_.rate > 0) {
    DataRng rng(derive_seed(seed_, kFimDomain, static_cast<uint64_t>(epoch_), id));
    size_t begin = bos_first_ ? 1 : 0, end = doc_.size() - (eos_last_ ? 1 : 0);
    if (end >= begin) apply_fim(doc_, begin, end, fim_, rng);
  }
  doc_epoch_ = epoch_;
  doc_position_ = position_;
  return doc_;
}

void BatchLoader::advance_document() {
  offset_ = 0;
  if (++position_ == documents()) {
    position_ = 0;
    ++epoch_;
  }
}

void BatchLoader::next(int64_t batch, int32_t* tokens, int32_t* labels) {
  DSV3_CHECK(batch >= 1, "BatchLoader::next: batch must be at least 1 (got {})", batch);
  const int64_t n = batch * seq_;
  window_.resize(static_cast<size_t>(n + 1));
  int64_t filled = 0;
  while (filled < n) {
    const std::vector<int32_t>& doc = current_document();
    int64_t take = std::min<int64_t>(static_cast<int64_t>(doc.size()) - offset_, n - filled);
    std::copy_n(doc.begin() + offset_, take, window_.begin() + filled);
    filled += take;
    offset_ += take;
    if (offset_ == static_cast<int64_t>(doc.size())) advance_document();
  }
  window_[static_cast<size_t>(n)] = current_document()[static_cast<size_t>(offset_)];  // peek, no advance
  std::copy_n(window_.begin(), n, tokens);
  std::copy_n(window_.begin() + 1, n, labels);
}

json BatchLoader::state() const {
  return {{"format", "dsv3-batch-loader"},
          {"version", 1},
          {"split", split_},
          {"seed", seed_},
          {"epoch", epoch_},
          {"position", position_},
          {"offset", offset_},
          {"documents", documents()},
          {"tokens", total_tokens_},
          {"tokenizer_hash", hash_to_hex(manifest_.tokenizer_hash)},
          {"fim", {{"rate", fim_.rate}, {"prefix_id", fim_.prefix_id}, {"middle_id", fim_.middle_id},
                   {"suffix_id", fim_.suffix_id}}}};
}

void BatchLoader::restore(const json& state) {
  const std::string where = "data loader state";
  try {
    DSV3_CHECK(state.value("format", "") == "dsv3-batch-loader" && state.at("version").get<int>() == 1,
               "{}: not a dsv3 batch loader state (version 1)", where);
    DSV3_CHECK(state.at("split").get<std::string>() == split_, "{}: saved for split \"{}\", this loader reads \"{}\"",
               where, state.at("split").get<std::string>(), split_);
    DSV3_CHECK(state.at("documents").get<int64_t>() == documents() && state.at("tokens").get<int64_t>() == total_tokens_ &&
                   state.at("tokenizer_hash").get<std::string>() == hash_to_hex(manifest_.tokenizer_hash),
               "{}: saved for other data ({} documents, {} tokens, tokenizer {}); {} has {} documents, {} tokens, "
               "tokenizer {}",
               where, state.at("documents").dump(), state.at("tokens").dump(), state.at("tokenizer_hash").dump(),
               data_dir_, documents(), total_tokens_, hash_to_hex(manifest_.tokenizer_hash));
    const json& f = state.at("fim");
    DSV3_CHECK(f.at("rate").get<double>() == fim_.rate && f.at("prefix_id").get<int32_t>() == fim_.prefix_id &&
                   f.at("middle_id").get<int32_t>() == fim_.middle_id &&
                   f.at("suffix_id").get<int32_t>() == fim_.suffix_id,
               "{}: saved with other FIM settings ({}), this loader has rate {} and ids {}/{}/{}", where, f.dump(),
               fim_.rate, fim_.prefix_id, fim_.suffix_id, fim_.middle_id);
    const int64_t epoch = state.at("epoch").get<int64_t>(), position = state.at("position").get<int64_t>(),
                  offset = state.at("offset").get<int64_t>();
    DSV3_CHECK(epoch >= 0 && position >= 0 && position < documents() && offset >= 0,
               "{}: cursor out of range (epoch {}, position {}, offset {})", where, epoch, position, offset);
    const uint64_t old_seed = seed_;
    const int64_t old_epoch = epoch_, old_position = position_, old_offset = offset_;
    seed_ = state.at("seed").get<uint64_t>();
    epoch_ = epoch;
    position_ = position;
    offset_ = 0;
    perm_epoch_ = doc_epoch_ = doc_position_ = -1;
    if (offset >= static_cast<int64_t>(current_document().size())) {
      seed_ = old_seed;  // leave the loader as it was
      epoch_ = old_epoch;
      position_ = old_position;
      offset_ = old_offset;
      perm_epoch_ = doc_epoch_ = doc_position_ = -1;
      fail("{}: offset {} is past the end of the current document", where, offset);
    }
    offset_ = offset;
  } catch (const json::exception& e) {
    fail("{}: malformed: {}", where, e.what());
  }
}

}  // namespace dsv3
