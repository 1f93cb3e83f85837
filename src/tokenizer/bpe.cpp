#include "tokenizer/bpe.h"

#include <algorithm>
#include <queue>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/byte_level.h"

namespace dsv3::tok {

using json = nlohmann::json;

void MergeTable::reserve(size_t count) {
  size_t capacity = 16;
  while (capacity < count * 2) capacity *= 2;
  slots_.assign(capacity, Entry{kEmpty, 0, 0});
  mask_ = capacity - 1;
  count_ = 0;
}

void MergeTable::insert(uint32_t left, uint32_t right, uint32_t rank, uint32_t merged) {
  if ((count_ + 1) * 2 > slots_.size()) {
    std::vector<Entry> old = std::move(slots_);
    reserve(std::max<size_t>(16, (count_ + 1) * 2));
    for (const Entry& e : old)
      if (e.key != kEmpty) insert(e.key >> 32, static_cast<uint32_t>(e.key), e.rank, e.merged);
  }
  uint64_t key = (static_cast<uint64_t>(left) << 32) | right;
  size_t slot = hash(key) & mask_;
  while (slots_[slot].key != kEmpty && slots_[slot].key != key) slot = (slot + 1) & mask_;
  if (slots_[slot].key == kEmpty) ++count_;
  slots_[slot] = Entry{key, rank, merged};
}

namespace {

uint32_t lookup(const std::unordered_map<std::string, uint32_t>& vocab, const std::string& token,
                size_t merge_index) {
  auto it = vocab.find(token);
  if (it == vocab.end())
    fail("tokenizer.json model.merges[{}]: token \"{}\" is not in the vocabulary", merge_index, token);
  return it->second;
}

// Rejects model options whose semantics dsv3 does not implement, rather than encoding differently.
void check_supported(const json& model) {
  auto is_unset = [&](const char* key) {
    auto it = model.find(key);
    return it == model.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty());
  };
  if (!is_unset("continuing_subword_prefix"))
    fail("tokenizer.json model: continuing_subword_prefix is not supported");
  if (!is_unset("end_of_word_suffix")) fail("tokenizer.json model: end_of_word_suffix is not supported");
  if (model.value("byte_fallback", false)) fail("tokenizer.json model: byte_fallback is not supported");
  auto dropout = model.find("dropout");
  if (dropout != model.end() && !dropout->is_null() && dropout->get<double>() != 0.0)
    fail("tokenizer.json model: BPE dropout is not supported (encoding would not be deterministic)");
}

}  // namespace

BpeModel BpeModel::from_parts(const json& model, std::vector<std::pair<std::string, uint32_t>> vocab,
                              const std::vector<std::pair<std::string, std::string>>& merges) {
  if (!model.is_object()) fail("tokenizer.json: \"model\" is missing or not an object");
  std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE") fail("tokenizer.json model: unsupported type \"{}\" (only BPE)", type);
  check_supported(model);

  BpeModel bpe;
  bpe.vocab_.reserve(vocab.size() * 2);
  for (auto& [token, id] : vocab) bpe.vocab_.insert_or_assign(std::move(token), id);  // last duplicate wins, as in JSON

  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::get();
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    ch = alphabet.encode(std::string_view(reinterpret_cast<const char*>(&b), 1));
    auto it = bpe.vocab_.find(ch);
    bpe.byte_ids_[b] = it == bpe.vocab_.end() ? kNoId : it->second;
  }

  bpe.merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [left, right] = merges[i];
    uint32_t left_id = lookup(bpe.vocab_, left, i);
    uint32_t right_id = lookup(bpe.vocab_, right, i);
    uint32_t merged_id = lookup(bpe.vocab_, left + right, i);
    bpe.merges_.insert(left_id, right_id, static_cast<uint32_t>(i), merged_id);
  }

  bpe.ignore_merges_ = model.value("ignore_merges", false);
  if (bpe.ignore_merges_) {
    for (const auto& [token, id] : bpe.vocab_)
      if (auto bytes = alphabet.decode(token)) bpe.whole_word_ids_.emplace(std::move(*bytes), id);
  }
  return bpe;
}

// Quadratic in the worst case but cache-friendly: the usual pre-token is a few bytes long.
void BpeModel::merge_small(std::vector<uint32_t>& symbols) const {
  constexpr uint32_t kNone = ~0u;
  uint32_t ranks[64];
  uint32_t merged[64];
  size_t n = symbols.size();
  auto rate = [&](size_t i) {
    const MergeTable::Entry* e = merges_.find(symbols[i], symbols[i + 1]);
    ranks[i] = e ? e->rank : kNone;
    merged[i] = e ? e->merged : 0;
  };
  for (size_t i = 0; i + 1 < n; ++i) rate(i);
  while (n > 1) {
    size_t best = 0;
    uint32_t best_rank = kNone;
    for (size_t i = 0; i + 1 < n; ++i)
      if (ranks[i] < best_rank) best_rank = ranks[i], best = i;
    if (best_rank == kNone) break;
    symbols[best] = merged[best];
    // Close the gap left by the right symbol and its pair slot.
    for (size_t i = best + 1; i + 1 < n; ++i) symbols[i] = symbols[i + 1];
    for (size_t i = best + 1; i + 2 < n; ++i) ranks[i] = ranks[i + 1], merged[i] = merged[i + 1];
    --n;
    if (best > 0) rate(best - 1);
    if (best + 1 < n) rate(best);
  }
  symbols.resize(n);
}

// Linked list of symbols plus a min-heap of candidate merges ordered by (rank, position): the
// same order in which Hugging Face's Word::merge_all applies them. Stale heap entries are skipped.
void BpeModel::merge_large(std::vector<uint32_t>& symbols) const {
  const size_t n = symbols.size();
  std::vector<int32_t> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  using Candidate = std::pair<uint32_t, uint32_t>;  // (rank, position of the left symbol)
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int32_t i) {
    if (i < 0 || next[i] < 0) return;
    if (const MergeTable::Entry* e = merges_.find(symbols[i], symbols[next[i]]))
      heap.push({e->rank, static_cast<uint32_t>(i)});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    auto [rank, pos] = heap.top();
    heap.pop();
    if (!alive[pos] || next[pos] < 0) continue;
    const MergeTable::Entry* e = merges_.find(symbols[pos], symbols[next[pos]]);
    if (!e || e->rank != rank) continue;  // the pair changed since this entry was pushed
    int32_t right = next[pos];
    symbols[pos] = e->merged;
    alive[right] = 0;
    next[pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = static_cast<int32_t>(pos);
    push(prev[pos]);
    push(static_cast<int32_t>(pos));
  }
  size_t out = 0;
  for (size_t i = 0; i < n; ++i)
    if (alive[i]) symbols[out++] = symbols[i];
  symbols.resize(out);
}

void BpeModel::encode_word(std::string_view bytes, std::vector<uint32_t>& out) const {
  if (ignore_merges_) {
    auto it = whole_word_ids_.find(std::string(bytes));
    if (it != whole_word_ids_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  thread_local std::vector<uint32_t> symbols;
  symbols.clear();
  for (char c : bytes) {
    uint32_t id = byte_ids_[static_cast<uint8_t>(c)];
    if (id != kNoId) symbols.push_back(id);  // no unk token: an unknown byte is dropped, as in HF
  }
  if (symbols.size() <= 64) merge_small(symbols);
  else merge_large(symbols);
  out.insert(out.end(), symbols.begin(), symbols.end());
}

}  // namespace dsv3::tok
