#pragma once
// Token shards: one binary file holding whole tokenized documents (docs/data.md has the layout).
//
//   [0, 128)              header (little-endian, fields below)
//   [128, ...)            tokens, u16 when the vocabulary has <= 65536 ids, else u32
//   (padding to 8 bytes)
//   [offsets_offset, end) u64 offsets[documents + 1]: document d is tokens [offsets[d], offsets[d+1])
//
// The header is written last, so a shard cut short by an interruption never validates.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "train/data/atomic_file.h"
#include "train/data/mapped_file.h"

namespace dsv3 {

inline constexpr char kShardMagic[8] = {'D', 'S', 'V', '3', 'T', 'O', 'K', 'S'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint32_t kShardHeaderBytes = 128;
inline constexpr uint32_t kNoToken = 0xffffffffu;
// flags
inline constexpr uint32_t kShardDocsStartWithBos = 1;
inline constexpr uint32_t kShardDocsEndWithEos = 2;

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t token_bytes = 0;  // 2 or 4
  uint32_t flags = 0;
  uint64_t vocab_size = 0;
  uint64_t tokenizer_hash = 0;  // FNV-1a 64 of tokenizer.json
  uint64_t documents = 0;
  uint64_t tokens = 0;
  uint64_t tokens_offset = kShardHeaderBytes;
  uint64_t offsets_offset = 0;
  uint32_t bos_id = kNoToken, eos_id = kNoToken;
  uint64_t data_checksum = 0;    // FNV-1a 64 of every byte after the header
  uint64_t header_checksum = 0;  // FNV-1a 64 of header bytes [0, 88)
};

// 2 for a vocabulary of at most 65536 ids, else 4.
uint32_t token_bytes_for_vocab(uint64_t vocab_size);

// Validates the bytes of a whole shard (header, sizes, offsets, every token id < vocab, BOS/EOS
// placement when the flags promise it, checksums) and returns its header. `where` names the file
// in errors. TokenShard::open uses it on the mapping; the fuzz target calls it directly.
ShardHeader parse_shard(std::string_view bytes, const std::string& where);

// A validated, memory-mapped shard.
class TokenShard {
 public:
  static TokenShard open(const std::string& path);

  const ShardHeader& header() const { return header_; }
  const std::string& path() const { return file_.path(); }
  int64_t documents() const { return static_cast<int64_t>(header_.documents); }
  int64_t tokens() const { return static_cast<int64_t>(header_.tokens); }
  int64_t document_begin(int64_t d) const;  // token index of document d's first token
  int64_t document_size(int64_t d) const { return document_begin(d + 1) - document_begin(d); }
  // Appends document d's tokens to `out`.
  void append_document(int64_t d, std::vector<int32_t>& out) const;
  uint32_t token(int64_t i) const;

 private:
  MappedFile file_;
  ShardHeader header_;
};

// Writes one shard: tokens stream into a temporary file; finish() appends the offsets, writes the
// header and renames the file into place.
class ShardWriter {
 public:
  ShardWriter(const std::string& path, uint64_t vocab_size, uint64_t tokenizer_hash, uint32_t flags,
              uint32_t bos_id, uint32_t eos_id);
  // One whole document (non-empty; ids must be < vocab_size).
  void add_document(std::span<const uint32_t> tokens);
  uint64_t documents() const { return offsets_.size() - 1; }
  uint64_t tokens() const { return offsets_.back(); }
  ShardHeader finish();

 private:
  AtomicFile file_;
  ShardHeader header_;
  std::vector<uint64_t> offsets_{0};
  uint64_t checksum_;
  std::vector<uint16_t> narrow_;
};

}  // namespace dsv3
