// dsv3 prepare: text -> shards + manifest, the split, and refusals of bad input.
#include <algorithm>
#include <filesystem>
#include <set>

#include <gtest/gtest.h>

#include "data_test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/data/corpus.h"
#include "train/data/hash.h"
#include "train/data/manifest.h"
#include "train/data/prepare.h"
#include "train/data/shard.h"

namespace dsv3 {
namespace {

using testing::ScratchDir;
using testing::TinyTokenizerIds;
using testing::write_file;

std::string doc_text(int i) { return "Document " + std::to_string(i) + ": the theory of the thing.\nLine two."; }

// Every document of a prepared folder (both splits), as token vectors, and the manifest.
std::vector<std::vector<int32_t>> all_documents(const std::string& dir, const std::string& split) {
  DataManifest m = DataManifest::load(dir);
  std::vector<std::vector<int32_t>> docs;
  for (const auto& s : m.split(split, "test").shards) {
    TokenShard shard = TokenShard::open(dir + "/" + s.file);
    for (int64_t d = 0; d < shard.documents(); ++d) {
      docs.emplace_back();
      shard.append_document(d, docs.back());
    }
  }
  return docs;
}

PrepareOptions options_for(const std::string& tokenizer, const std::string& out, std::vector<std::string> inputs) {
  PrepareOptions o;
  o.tokenizer_path = tokenizer;
  o.out_dir = out;
  o.inputs = std::move(inputs);
  return o;
}

TEST(DataPrepare, RoundTripEveryDocumentIsBosTextEos) {
  ScratchDir dir;
  const std::string tokenizer = testing::write_tiny_tokenizer(dir / "tok");
  for (int i = 0; i < 40; ++i) write_file(dir / ("corpus/sub" + std::to_string(i % 3) + "/f" + std::to_string(i) + ".txt"), doc_text(i));
  write_file(dir / "corpus/.hidden.txt", "never read");
  PrepareOptions o = options_for(tokenizer, dir / "out", {dir / "corpus"});
  o.val_fraction = 0.1;
  o.shard_tokens = 300;  // several shards per split
  PrepareSummary s = prepare_dataset(o);
  EXPECT_EQ(s.files, 40);
  EXPECT_EQ(s.documents[0], 36);
  EXPECT_EQ(s.documents[1], 4);
  EXPECT_GT(s.shards, 2);

  auto tok = tok::Tokenizer::load(tokenizer);
  std::multiset<std::vector<int32_t>> expected, got;
  for (int i = 0; i < 40; ++i) {
    std::vector<uint32_t> ids = tok.encode(doc_text(i));
    std::vector<int32_t> doc{static_cast<int32_t>(TinyTokenizerIds::bos)};
    doc.insert(doc.end(), ids.begin(), ids.end());
    doc.push_back(TinyTokenizerIds::eos);
    expected.insert(doc);
  }
  for (const char* split : {"train", "validation"})
    for (auto& d : all_documents(dir / "out", split)) got.insert(d);
  EXPECT_EQ(expected, got);

  DataManifest m = DataManifest::load(dir / "out");
  EXPECT_EQ(m.vocab_size, TinyTokenizerIds::vocab);
  EXPECT_EQ(m.tokenizer_hash, tokenizer_file_hash(tokenizer));
  EXPECT_TRUE(m.bos_per_document);
  EXPECT_EQ(m.eos_id, TinyTokenizerIds::eos);
  EXPECT_EQ(m.split("train", "t").tokens + m.split("validation", "t").tokens, s.tokens[0] + s.tokens[1]);
  for (const auto& entry : std::filesystem::directory_iterator(dir / "out"))
    EXPECT_FALSE(entry.path().string().ends_with(".tmp")) << entry.path();
}

TEST(DataPrepare, WithoutAddBosDocumentsAreTextEos) {
  ScratchDir dir;
  const std::string tokenizer = testing::write_tiny_tokenizer(dir / "tok", /*add_bos=*/false);
  write_file(dir / "a.txt", "the");
  prepare_dataset(options_for(tokenizer, dir / "out", {dir / "a.txt"}));
  auto docs = all_documents(dir / "out", "train");
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0], (std::vector<int32_t>{257, static_cast<int32_t>(TinyTokenizerIds::eos)}));
  EXPECT_FALSE(DataManifest::load(dir / "out").bos_per_document);
}

TEST(DataPrepare, DelimiterSplitsFilesIntoDocuments) {
  ScratchDir dir;
  const std::string tokenizer = testing::write_tiny_tokenizer(dir / "tok");
  write_file(dir / "a.txt", "one\n---\ntwo\n---\n\n---\nthree\n---\n");
  PrepareOptions o = options_for(tokenizer, dir / "out", {dir / "a.txt"});
  o.delimiter = "\n---\n";
  o.val_fraction = 0;
  PrepareSummary s = prepare_dataset(o);
  EXPECT_EQ(s.documents[0], 3);  // the empty piece and the trailing one are dropped
  EXPECT_EQ(s.documents[1], 0);
  auto spans = split_documents("a||b||||c", "||");
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(spans[2].begin, 8u);
}

TEST(DataPrepare, SplitIsDeterministicBySeed) {
  ScratchDir dir;
  const std::string tokenizer = testing::write_tiny_tokenizer(dir / "tok");
  for (int i = 0; i < 200; ++i) write_file(dir / ("c/" + std::to_string(1000 + i) + ".txt"), doc_text(i));
  auto run = [&](const std::string& out, uint64_t seed) {
    PrepareOptions o = options_for(tokenizer, dir / out, {dir / "c"});
    o.seed = seed;
    o.val_fraction = 0.05;
    prepare_dataset(o);
    return all_documents(dir / out, "validation");
  };
  auto a = run("a", 7), b = run("b", 7), c = run("c", 8);
  EXPECT_EQ(a.size(), 10u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(testing::read_file(dir / "a/validation-00000.bin"), testing::read_file(dir / "b/validation-00000.bin"));
  EXPECT_EQ(testing::read_file(dir / "a/train-00000.bin"), testing::read_file(dir / "b/train-00000.bin"));
}

TEST(DataPrepare, ExtensionFilterAppliesInsideFolders) {
  ScratchDir dir;
  const std::string tokenizer = testing::write_tiny_tokenizer(dir / "tok");
  write_file(dir / "c/a.txt", "alpha");
  write_file(dir / "c/a.json", "{\"text\": \"alpha\"}");
  write_file(dir / "c/blob.bin", std::string("\0\1\2", 3));
  PrepareOptions o = options_for(tokenizer, dir / "out", {dir / "c"});
  o.extensions = {"txt"};
  EXPECT_EQ(prepare_dataset(o).files, 1);
  EXPECT_EQ(collect_input_files({dir / "c"}, {".txt", "json"}).size(), 2u);
}

TEST(DataPrepareErrors, BadInputIsRefusedByName) {
  ScratchDir dir;
  const std::string tokenizer = testing::write_tiny_tokenizer(dir / "tok");
  write_file(dir / "good.txt", "fine text");
  write_file(dir / "empty.txt", "");
  write_file(dir / "blank.txt", " \n\t\n");
  write_file(dir / "binary.dat", std::string("abc\0def", 7));
  write_file(dir / "latin1.txt", "caf\xe9 au lait");
  auto prepare = [&](std::vector<std::string> inputs) {
    prepare_dataset(options_for(tokenizer, dir / "out", std::move(inputs)));
  };
  EXPECT_ERROR_HAS(prepare({dir / "good.txt", dir / "missing.txt"}), dir / "missing.txt" + ": no such file or folder");
  EXPECT_ERROR_HAS(prepare({dir / "empty.txt"}), dir / "empty.txt" + ": empty file");
  EXPECT_ERROR_HAS(prepare({dir / "blank.txt"}), dir / "blank.txt" + ": empty file (only whitespace)");
  EXPECT_ERROR_HAS(prepare({dir / "good.txt", dir / "binary.dat"}),
                   dir / "binary.dat" + ": binary file: NUL byte at byte offset 3");
  EXPECT_ERROR_HAS(prepare({dir / "latin1.txt"}), dir / "latin1.txt" + ": not text: invalid UTF-8 at byte offset 3");
  EXPECT_ERROR_HAS(prepare({}), "no inputs");
  std::filesystem::create_directories(dir / "emptydir");
  EXPECT_ERROR_HAS(prepare({dir / "emptydir"}), "folder holds no input files");
  EXPECT_ERROR_HAS(prepare_dataset(options_for(dir / "nope.json", dir / "out", {dir / "good.txt"})), "nope.json");
  // nothing was written by the failed runs
  EXPECT_FALSE(std::filesystem::exists(dir / "out/manifest.json"));

  PrepareOptions o = options_for(tokenizer, dir / "out", {dir / "good.txt", dir / "empty.txt", dir / "binary.dat"});
  o.skip_invalid = true;
  PrepareSummary s = prepare_dataset(o);
  EXPECT_EQ(s.skipped_files, 2);
  EXPECT_EQ(s.files, 1);
  o.skip_invalid = true;
  o.inputs = {dir / "empty.txt"};
  EXPECT_ERROR_HAS(prepare_dataset(o), "already holds prepared data");
  o.force = true;
  EXPECT_ERROR_HAS(prepare_dataset(o), "the inputs hold no documents");
  o.inputs = {dir / "good.txt"};
  o.val_fraction = 1.5;
  EXPECT_ERROR_HAS(prepare_dataset(o), "--val-fraction must be in [0, 1)");
}

TEST(DataPrepareErrors, TokenizerWithoutEosIsRefused) {
  ScratchDir dir;
  std::string tokenizer = testing::write_tiny_tokenizer(dir / "tok");
  write_file(dir / "tok/tokenizer_config.json", "{}");
  write_file(dir / "a.txt", "text");
  EXPECT_ERROR_HAS(prepare_dataset(options_for(tokenizer, dir / "out", {dir / "a.txt"})), "has no EOS token");
}

TEST(DataPrepare, ReplacingWithForceRemovesOldShards) {
  ScratchDir dir;
  const std::string tokenizer = testing::write_tiny_tokenizer(dir / "tok");
  for (int i = 0; i < 30; ++i) write_file(dir / ("c/" + std::to_string(i) + ".txt"), doc_text(i));
  PrepareOptions o = options_for(tokenizer, dir / "out", {dir / "c"});
  o.shard_tokens = 100;
  prepare_dataset(o);
  EXPECT_TRUE(std::filesystem::exists(dir / "out/train-00005.bin"));
  o.force = true;
  o.shard_tokens = 1'000'000;
  prepare_dataset(o);
  EXPECT_FALSE(std::filesystem::exists(dir / "out/train-00005.bin"));
  EXPECT_EQ(DataManifest::load(dir / "out").split("train", "t").shards.size(), 1u);
}

}  // namespace
}  // namespace dsv3
