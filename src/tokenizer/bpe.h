#pragma once
// The BPE model: vocabulary, merge ranks, and the merge loop that turns one pre-token (raw bytes)
// into ids. It works on raw bytes: a byte's initial symbol is the id of its byte-level character,
// and merges are looked up by (left id, right id) in an open-addressing table.
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dsv3::tok {

// (left, right) -> (rank, merged id), open addressing with linear probing.
class MergeTable {
 public:
  struct Entry {
    uint64_t key;  // left << 32 | right; kEmpty when unused
    uint32_t rank;
    uint32_t merged;
  };
  static constexpr uint64_t kEmpty = ~0ULL;

  void reserve(size_t count);
  // Inserts or overwrites (a later duplicate merge wins, as in Hugging Face's map).
  void insert(uint32_t left, uint32_t right, uint32_t rank, uint32_t merged);
  const Entry* find(uint32_t left, uint32_t right) const {
    uint64_t key = (static_cast<uint64_t>(left) << 32) | right;
    size_t slot = hash(key) & mask_;
    while (true) {
      const Entry& e = slots_[slot];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
      slot = (slot + 1) & mask_;
    }
  }
  size_t size() const { return count_; }

 private:
  static size_t hash(uint64_t key) { return (key * 0x9E3779B97F4A7C15ULL) >> 20; }
  std::vector<Entry> slots_;
  size_t mask_ = 0, count_ = 0;
};

class BpeModel {
 public:
  // Builds from the "model" object of tokenizer.json (type BPE and options) and its vocab and
  // merges, which the loader parses apart (see tokenizer_json.h).
  static BpeModel from_parts(const nlohmann::json& model, std::vector<std::pair<std::string, uint32_t>> vocab,
                             const std::vector<std::pair<std::string, std::string>>& merges);

  // Appends the ids of one pre-token (raw bytes) to out.
  void encode_word(std::string_view bytes, std::vector<uint32_t>& out) const;

  // The vocabulary as stored in tokenizer.json (byte-level strings).
  const std::unordered_map<std::string, uint32_t>& vocab() const { return vocab_; }
  uint32_t byte_id(uint8_t b) const { return byte_ids_[b]; }
  const MergeTable& merges() const { return merges_; }

  static constexpr uint32_t kNoId = ~0u;

 private:
  void merge_small(std::vector<uint32_t>& symbols) const;
  void merge_large(std::vector<uint32_t>& symbols) const;

  std::unordered_map<std::string, uint32_t> vocab_;
  uint32_t byte_ids_[256];
  MergeTable merges_;
  bool ignore_merges_ = false;
  // Only filled when ignore_merges is set: raw bytes of each vocabulary entry -> id.
  std::unordered_map<std::string, uint32_t> whole_word_ids_;
};

}  // namespace dsv3::tok
