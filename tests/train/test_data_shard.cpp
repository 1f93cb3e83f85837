// Token shards: writer -> reader round trips and the reader's refusal of damaged files.
#include <cstring>
#include <filesystem>

#include <gtest/gtest.h>

#include "data_test_util.h"
#include "train/data/hash.h"
#include "train/data/shard.h"

namespace dsv3 {
namespace {

using testing::ScratchDir;

std::string write_shard(const std::string& path, uint64_t vocab, const std::vector<std::vector<uint32_t>>& docs,
                        uint32_t flags = 0, uint32_t bos = kNoToken, uint32_t eos = kNoToken) {
  ShardWriter w(path, vocab, 0x1234abcdull, flags, bos, eos);
  for (const auto& d : docs) w.add_document(d);
  w.finish();
  return path;
}

TEST(DataShard, RoundTripU16) {
  ScratchDir dir;
  std::vector<std::vector<uint32_t>> docs = {{5, 1, 2, 9}, {5, 7, 9}, {5, 65535 % 300, 9}};
  write_shard(dir / "a.bin", 300, docs, kShardDocsStartWithBos | kShardDocsEndWithEos, 5, 9);
  TokenShard shard = TokenShard::open(dir / "a.bin");
  EXPECT_EQ(shard.header().token_bytes, 2u);
  EXPECT_EQ(shard.header().vocab_size, 300u);
  EXPECT_EQ(shard.header().tokenizer_hash, 0x1234abcdull);
  EXPECT_EQ(shard.documents(), 3);
  EXPECT_EQ(shard.tokens(), 10);
  for (int d = 0; d < 3; ++d) {
    std::vector<int32_t> got;
    shard.append_document(d, got);
    EXPECT_EQ(std::vector<int32_t>(docs[d].begin(), docs[d].end()), got);
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "a.bin.tmp"));
}

TEST(DataShard, RoundTripU32ForLargeVocabularies) {
  ScratchDir dir;
  std::vector<std::vector<uint32_t>> docs = {{129000, 0, 65536}, {70000}};
  write_shard(dir / "b.bin", 129280, docs);
  TokenShard shard = TokenShard::open(dir / "b.bin");
  EXPECT_EQ(shard.header().token_bytes, 4u);
  std::vector<int32_t> got;
  shard.append_document(0, got);
  shard.append_document(1, got);
  EXPECT_EQ(got, (std::vector<int32_t>{129000, 0, 65536, 70000}));
  EXPECT_EQ(token_bytes_for_vocab(65536), 2u);
  EXPECT_EQ(token_bytes_for_vocab(65537), 4u);
}

TEST(DataShard, WriterRefusesBadDocumentsAndLeavesNoFileWhenAbandoned) {
  ScratchDir dir;
  {
    ShardWriter w(dir / "c.bin", 10, 1, 0, kNoToken, kNoToken);
    EXPECT_ERROR_HAS(w.add_document(std::vector<uint32_t>{}), "empty document");
    EXPECT_ERROR_HAS(w.add_document(std::vector<uint32_t>{3, 10}), "token 10 is >= the vocabulary size 10");
    w.add_document(std::vector<uint32_t>{1, 2});
    // destroyed without finish(), as by an error or an interruption
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "c.bin"));
  EXPECT_FALSE(std::filesystem::exists(dir / "c.bin.tmp"));
}

TEST(DataShardErrors, PromisedEosMustBeThere) {
  ScratchDir dir;
  // The flags promise EOS (id 0) at each document's end, but the documents end in 3 and 5.
  std::string path = write_shard(dir / "s.bin", 300, {{1, 2, 3}, {4, 5}}, kShardDocsEndWithEos, kNoToken, 0);
  EXPECT_ERROR_HAS(TokenShard::open(path), "document 0 does not end with EOS");
}

TEST(DataShardErrors, MessagesNameTheFileAndTheProblem) {
  ScratchDir dir;
  std::string path = write_shard(dir / "s.bin", 300, {{1, 2, 3}, {4, 5}});
  const std::string good = testing::read_file(path);
  auto error_of_bytes = [](const std::string& bytes) {
    return testing::error_of([&] { parse_shard(bytes, "s.bin"); });
  };
  auto expect = [&](const std::string& bytes, const std::string& needle) {
    std::string e = error_of_bytes(bytes);
    EXPECT_NE(e.find(needle), std::string::npos) << e;
    EXPECT_EQ(e.rfind("s.bin: ", 0), 0u) << e;
  };
  EXPECT_EQ(error_of_bytes(good), "");
  expect(good.substr(0, good.size() - 3), "truncated");
  expect(good.substr(0, 50), "truncated");
  expect(good + "xx", "unexpected bytes after the offsets table");
  std::string b = good;
  b[0] = 'X';
  expect(b, "bad magic");
  b = good;
  b[8] = 7;  // version
  expect(b, "format version 7 is not supported");
  b = good;
  b[40] = 9;  // document count: the header checksum catches it
  expect(b, "header checksum mismatch");
  b = good;
  uint16_t big = 301;
  std::memcpy(&b[128 + 2 * 4], &big, 2);  // token 4 -> 301
  expect(b, "token 301 at index 4 is >= the vocabulary size 300");
  b = good;
  uint16_t other = 7;
  std::memcpy(&b[128 + 2 * 4], &other, 2);  // a valid id, but not the one written
  expect(b, "data checksum mismatch");
  b = good;
  uint64_t offset = 9;
  std::memcpy(&b[b.size() - 16], &offset, 8);  // offsets[1] beyond the tokens
  expect(b, "offsets table");
  // through the file: the real path is named
  testing::write_file(path, good.substr(0, good.size() - 1));
  std::string e = testing::error_of([&] { TokenShard::open(path); });
  EXPECT_EQ(e.rfind(path + ": truncated", 0), 0u) << e;
  EXPECT_ERROR_HAS(TokenShard::open(dir / "none.bin"), "none.bin: cannot open");
}

// The fuzz seeds were written by an independent script from docs/data.md's table: the reader
// accepts them, and the writer produces the same bytes for the same documents.
TEST(DataShard, MatchesTheDocumentedLayout) {
  const std::string seeds = std::string(DSV3_TEST_DATA) + "/fuzz/shard/";
  for (const char* name : {"u16_bos_eos.bin", "u32.bin", "empty.bin", "one_token.bin"})
    EXPECT_EQ(testing::error_of([&] { TokenShard::open(seeds + name); }), "") << name;
  ScratchDir dir;
  ShardWriter w(dir / "x.bin", 300, 0x1234, kShardDocsStartWithBos | kShardDocsEndWithEos, 5, 9);
  for (const auto& d : std::vector<std::vector<uint32_t>>{{5, 1, 2, 9}, {5, 7, 9}, {5, 255, 9}}) w.add_document(d);
  w.finish();
  EXPECT_EQ(testing::read_file(dir / "x.bin"), testing::read_file(seeds + "u16_bos_eos.bin"));
}

TEST(DataHash, FnvMatchesPublishedVectorsAndHexRoundTrips) {
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);
  EXPECT_EQ(hash_from_hex(hash_to_hex(0x0123456789abcdefull), "x"), 0x0123456789abcdefull);
  EXPECT_ERROR_HAS(hash_from_hex("12", "where"), "where: expected a 16-digit hex hash");
}

}  // namespace
}  // namespace dsv3
