#pragma once
// Pre-token -> ids cache used by the encoder, one per thread. Most pre-tokens of real text
// (" the", ",", " of") repeat, and a lookup is much cheaper than the merge loop. Open addressing
// over a byte arena: no allocation per entry, one cache line per probe in the common case.
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace dsv3::tok {

class PieceCache {
 public:
  static constexpr size_t kMaxPieceBytes = 48;     // longer pieces are rare; not cached
  static constexpr size_t kMaxEntries = 1 << 18;   // then the cache starts over

  // The cached ids of `piece`, or false.
  bool find(std::string_view piece, uint64_t hash, const uint32_t** ids, size_t* count) const {
    if (slots_.empty()) return false;
    for (size_t s = hash & mask_;; s = (s + 1) & mask_) {
      const Slot& slot = slots_[s];
      if (slot.key_length == kEmpty) return false;
      if (slot.hash == hash && slot.key_length == piece.size() &&
          std::memcmp(keys_.data() + slot.key_offset, piece.data(), piece.size()) == 0) {
        *ids = ids_.data() + slot.ids_offset;
        *count = slot.ids_length;
        return true;
      }
    }
  }

  void insert(std::string_view piece, uint64_t hash, const uint32_t* ids, size_t count) {
    if (entries_ >= kMaxEntries) clear();
    if ((entries_ + 1) * 2 > slots_.size()) grow();
    size_t s = hash & mask_;
    while (slots_[s].key_length != kEmpty) s = (s + 1) & mask_;
    slots_[s] = Slot{hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(ids_.size()),
                     static_cast<uint16_t>(piece.size()), static_cast<uint16_t>(count)};
    keys_.insert(keys_.end(), piece.begin(), piece.end());
    ids_.insert(ids_.end(), ids, ids + count);
    ++entries_;
  }

  void clear() {
    slots_.clear();
    keys_.clear();
    ids_.clear();
    entries_ = 0;
    mask_ = 0;
  }

  static uint64_t hash(std::string_view s) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
    size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
      uint64_t word;
      std::memcpy(&word, s.data() + i, 8);
      h = (h ^ word) * 0xBF58476D1CE4E5B9ull;
      h ^= h >> 31;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, s.data() + i, s.size() - i);
    h = (h ^ tail) * 0x94D049BB133111EBull;
    return h ^ (h >> 29);
  }

 private:
  static constexpr uint16_t kEmpty = 0xFFFF;
  struct Slot {
    uint64_t hash;
    uint32_t key_offset, ids_offset;
    uint16_t key_length = kEmpty, ids_length;
  };

  void grow() {
    size_t capacity = slots_.empty() ? 4096 : slots_.size() * 2;
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(capacity, Slot{0, 0, 0, kEmpty, 0});
    mask_ = capacity - 1;
    for (const Slot& slot : old) {
      if (slot.key_length == kEmpty) continue;
      size_t s = slot.hash & mask_;
      while (slots_[s].key_length != kEmpty) s = (s + 1) & mask_;
      slots_[s] = slot;
    }
  }

  std::vector<Slot> slots_;
  std::vector<char> keys_;
  std::vector<uint32_t> ids_;
  size_t entries_ = 0, mask_ = 0;
};

}  // namespace dsv3::tok
