#include "train/data/shard.h"

#include <bit>
#include <cstring>

#include "core/error.h"
#include "train/data/hash.h"

namespace dsv3 {

static_assert(std::endian::native == std::endian::little, "token shards are little-endian");

namespace {

constexpr size_t kHeaderChecksumSpan = 88;
constexpr uint64_t kMaxTokens = uint64_t{1} << 60;

template <typename T>
T load(const char* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

template <typename T>
void store(char* p, T value) {
  std::memcpy(p, &value, sizeof(T));
}

uint64_t align8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

void encode_header(const ShardHeader& h, char* out) {
  std::memset(out, 0, kShardHeaderBytes);
  std::memcpy(out, kShardMagic, 8);
  store<uint32_t>(out + 8, h.version);
  store<uint32_t>(out + 12, kShardHeaderBytes);
  store<uint32_t>(out + 16, h.token_bytes);
  store<uint32_t>(out + 20, h.flags);
  store<uint64_t>(out + 24, h.vocab_size);
  store<uint64_t>(out + 32, h.tokenizer_hash);
  store<uint64_t>(out + 40, h.documents);
  store<uint64_t>(out + 48, h.tokens);
  store<uint64_t>(out + 56, h.tokens_offset);
  store<uint64_t>(out + 64, h.offsets_offset);
  store<uint32_t>(out + 72, h.bos_id);
  store<uint32_t>(out + 76, h.eos_id);
  store<uint64_t>(out + 80, h.data_checksum);
  store<uint64_t>(out + 88, fnv1a64(out, kHeaderChecksumSpan));
}

uint32_t token_at(const char* tokens, uint32_t token_bytes, uint64_t i) {
  return token_bytes == 2 ? load<uint16_t>(tokens + 2 * i) : load<uint32_t>(tokens + 4 * i);
}

}  // namespace

uint32_t token_bytes_for_vocab(uint64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

ShardHeader parse_shard(std::string_view bytes, const std::string& where) {
  const char* p = bytes.data();
  const uint64_t size = bytes.size();
  DSV3_CHECK(size >= kShardHeaderBytes, "{}: truncated: {} bytes, but a shard header alone is {}", where, size,
             kShardHeaderBytes);
  DSV3_CHECK(std::memcmp(p, kShardMagic, 8) == 0, "{}: not a dsv3 token shard (bad magic)", where);
  ShardHeader h;
  h.version = load<uint32_t>(p + 8);
  DSV3_CHECK(h.version == kShardVersion, "{}: shard format version {} is not supported (this build reads version {})",
             where, h.version, kShardVersion);
  uint32_t header_bytes = load<uint32_t>(p + 12);
  DSV3_CHECK(header_bytes == kShardHeaderBytes, "{}: header size {} (expected {})", where, header_bytes,
             kShardHeaderBytes);
  h.header_checksum = load<uint64_t>(p + 88);
  DSV3_CHECK(fnv1a64(p, kHeaderChecksumSpan) == h.header_checksum, "{}: header checksum mismatch (corrupted header)",
             where);
  for (size_t i = 96; i < kShardHeaderBytes; ++i)
    DSV3_CHECK(p[i] == 0, "{}: reserved header byte {} is not zero", where, i);
  h.token_bytes = load<uint32_t>(p + 16);
  h.flags = load<uint32_t>(p + 20);
  h.vocab_size = load<uint64_t>(p + 24);
  h.tokenizer_hash = load<uint64_t>(p + 32);
  h.documents = load<uint64_t>(p + 40);
  h.tokens = load<uint64_t>(p + 48);
  h.tokens_offset = load<uint64_t>(p + 56);
  h.offsets_offset = load<uint64_t>(p + 64);
  h.bos_id = load<uint32_t>(p + 72);
  h.eos_id = load<uint32_t>(p + 76);
  h.data_checksum = load<uint64_t>(p + 80);

  DSV3_CHECK(h.vocab_size >= 1 && h.vocab_size <= (uint64_t{1} << 32) - 1,
             "{}: vocabulary size {} is out of range", where, h.vocab_size);
  DSV3_CHECK(h.token_bytes == token_bytes_for_vocab(h.vocab_size),
             "{}: token width {} bytes does not match vocabulary size {} (expected {})", where, h.token_bytes,
             h.vocab_size, token_bytes_for_vocab(h.vocab_size));
  DSV3_CHECK((h.flags & ~(kShardDocsStartWithBos | kShardDocsEndWithEos)) == 0, "{}: unknown flags 0x{:x}", where,
             h.flags);
  DSV3_CHECK(h.bos_id == kNoToken || h.bos_id < h.vocab_size, "{}: BOS id {} is >= the vocabulary size {}", where,
             h.bos_id, h.vocab_size);
  DSV3_CHECK(h.eos_id == kNoToken || h.eos_id < h.vocab_size, "{}: EOS id {} is >= the vocabulary size {}", where,
             h.eos_id, h.vocab_size);
  DSV3_CHECK(!(h.flags & kShardDocsStartWithBos) || h.bos_id != kNoToken,
             "{}: flags say documents start with BOS but no BOS id is set", where);
  DSV3_CHECK(!(h.flags & kShardDocsEndWithEos) || h.eos_id != kNoToken,
             "{}: flags say documents end with EOS but no EOS id is set", where);
  DSV3_CHECK(h.tokens_offset == kShardHeaderBytes, "{}: tokens start at byte {} (expected {})", where,
             h.tokens_offset, kShardHeaderBytes);
  DSV3_CHECK(h.tokens < kMaxTokens && h.documents < kMaxTokens, "{}: implausible counts ({} documents, {} tokens)",
             where, h.documents, h.tokens);
  DSV3_CHECK(h.documents <= h.tokens, "{}: {} documents but only {} tokens (documents cannot be empty)", where,
             h.documents, h.tokens);
  const uint64_t expected_offsets = align8(h.tokens_offset + h.tokens * h.token_bytes);
  DSV3_CHECK(h.offsets_offset == expected_offsets, "{}: offsets table at byte {} (expected {})", where,
             h.offsets_offset, expected_offsets);
  const uint64_t expected_size = h.offsets_offset + 8 * (h.documents + 1);
  DSV3_CHECK(size >= expected_size, "{}: truncated: the header describes {} bytes but the file has {}", where,
             expected_size, size);
  DSV3_CHECK(size == expected_size, "{}: {} unexpected bytes after the offsets table", where, size - expected_size);

  const char* offsets = p + h.offsets_offset;
  DSV3_CHECK(load<uint64_t>(offsets) == 0, "{}: the offsets table does not start at 0", where);
  for (uint64_t d = 0; d < h.documents; ++d) {
    uint64_t begin = load<uint64_t>(offsets + 8 * d), end = load<uint64_t>(offsets + 8 * (d + 1));
    DSV3_CHECK(end > begin && end <= h.tokens,
               "{}: offsets table: document {} spans tokens [{}, {}), outside (0, {}] or empty", where, d, begin,
               end, h.tokens);
  }
  DSV3_CHECK(load<uint64_t>(offsets + 8 * h.documents) == h.tokens,
             "{}: offsets table ends at {} but the shard has {} tokens", where, load<uint64_t>(offsets + 8 * h.documents),
             h.tokens);
  const char* tokens = p + h.tokens_offset;
  for (uint64_t i = 0; i < h.tokens; ++i) {
    uint32_t id = token_at(tokens, h.token_bytes, i);
    if (id >= h.vocab_size) fail("{}: token {} at index {} is >= the vocabulary size {}", where, id, i, h.vocab_size);
  }
  for (uint64_t d = 0; d < h.documents; ++d) {
    uint64_t begin = load<uint64_t>(offsets + 8 * d), end = load<uint64_t>(offsets + 8 * (d + 1));
    if ((h.flags & kShardDocsStartWithBos) && token_at(tokens, h.token_bytes, begin) != h.bos_id)
      fail("{}: document {} does not start with BOS ({})", where, d, h.bos_id);
    if ((h.flags & kShardDocsEndWithEos) && token_at(tokens, h.token_bytes, end - 1) != h.eos_id)
      fail("{}: document {} does not end with EOS ({})", where, d, h.eos_id);
  }
  for (uint64_t i = h.tokens_offset + h.tokens * h.token_bytes; i < h.offsets_offset; ++i)
    DSV3_CHECK(p[i] == 0, "{}: padding byte {} is not zero", where, i);
  DSV3_CHECK(fnv1a64(p + kShardHeaderBytes, size - kShardHeaderBytes) == h.data_checksum,
             "{}: data checksum mismatch (corrupted tokens or offsets)", where);
  return h;
}

TokenShard TokenShard::open(const std::string& path) {
  TokenShard shard;
  shard.file_ = MappedFile::open(path);
  shard.header_ = parse_shard(shard.file_.bytes(), path);
  return shard;
}

int64_t TokenShard::document_begin(int64_t d) const {
  return static_cast<int64_t>(load<uint64_t>(file_.bytes().data() + header_.offsets_offset + 8 * d));
}

uint32_t TokenShard::token(int64_t i) const {
  return token_at(file_.bytes().data() + header_.tokens_offset, header_.token_bytes, static_cast<uint64_t>(i));
}

void TokenShard::append_document(int64_t d, std::vector<int32_t>& out) const {
  const int64_t begin = document_begin(d), end = document_begin(d + 1);
  const char* tokens = file_.bytes().data() + header_.tokens_offset;
  size_t at = out.size();
  out.resize(at + static_cast<size_t>(end - begin));
  if (header_.token_bytes == 2) {
    for (int64_t i = begin; i < end; ++i) out[at++] = load<uint16_t>(tokens + 2 * i);
  } else {
    for (int64_t i = begin; i < end; ++i) out[at++] = static_cast<int32_t>(load<uint32_t>(tokens + 4 * i));
  }
}

ShardWriter::ShardWriter(const std::string& path, uint64_t vocab_size, uint64_t tokenizer_hash, uint32_t flags,
                         uint32_t bos_id, uint32_t eos_id)
    : file_(path), checksum_(kFnvOffsetBasis) {
  header_.token_bytes = token_bytes_for_vocab(vocab_size);
  header_.flags = flags;
  header_.vocab_size = vocab_size;
  header_.tokenizer_hash = tokenizer_hash;
  header_.bos_id = bos_id;
  header_.eos_id = eos_id;
  char zero[kShardHeaderBytes] = {};  // the real header is written by finish()
  file_.write(zero, sizeof zero);
}

void ShardWriter::add_document(std::span<const uint32_t> tokens) {
  DSV3_CHECK(!tokens.empty(), "{}: cannot write an empty document", file_.path());
  for (uint32_t id : tokens)
    DSV3_CHECK(id < header_.vocab_size, "{}: token {} is >= the vocabulary size {}", file_.path(), id,
               header_.vocab_size);
  if (header_.token_bytes == 2) {
    narrow_.assign(tokens.begin(), tokens.end());
    file_.write(narrow_.data(), narrow_.size() * 2);
    checksum_ = fnv1a64(narrow_.data(), narrow_.size() * 2, checksum_);
  } else {
    file_.write(tokens.data(), tokens.size() * 4);
    checksum_ = fnv1a64(tokens.data(), tokens.size() * 4, checksum_);
  }
  offsets_.push_back(offsets_.back() + tokens.size());
}

ShardHeader ShardWriter::finish() {
  header_.documents = offsets_.size() - 1;
  header_.tokens = offsets_.back();
  const uint64_t end_of_tokens = header_.tokens_offset + header_.tokens * header_.token_bytes;
  header_.offsets_offset = align8(end_of_tokens);
  const char padding[8] = {};
  const size_t pad = header_.offsets_offset - end_of_tokens;
  file_.write(padding, pad);
  checksum_ = fnv1a64(padding, pad, checksum_);
  file_.write(offsets_.data(), offsets_.size() * 8);
  header_.data_checksum = fnv1a64(offsets_.data(), offsets_.size() * 8, checksum_);
  char bytes[kShardHeaderBytes];
  encode_header(header_, bytes);
  header_.header_checksum = load<uint64_t>(bytes + 88);
  file_.write_at(0, bytes, sizeof bytes);
  file_.commit();
  return header_;
}

}  // namespace dsv3
