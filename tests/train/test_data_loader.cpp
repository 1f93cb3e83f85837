// BatchLoader: packing, shuffling, FIM, exact resume, and refusal of mismatched data.
#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include <gtest/gtest.h>

#include "data_test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/data/batch_loader.h"
#include "train/data/hash.h"
#include "train/data/prepare.h"

namespace dsv3 {
namespace {

using testing::ScratchDir;
using testing::TinyTokenizerIds;
using testing::write_file;
using Ids = TinyTokenizerIds;

// A prepared folder of `docs` short documents of varied length (with a tiny tokenizer).
struct Prepared {
  explicit Prepared(int docs, double val_fraction = 0.1, bool with_fim = true, int shard_tokens = 2000) {
    tokenizer = testing::write_tiny_tokenizer(dir / "tok", true, with_fim);
    for (int i = 0; i < docs; ++i) {
      std::string text = "doc" + std::to_string(i) + std::string(static_cast<size_t>(i % 17), 'x') + " the end";
      write_file(dir / ("c/" + std::to_string(100000 + i) + ".txt"), text);
    }
    PrepareOptions o;
    o.tokenizer_path = tokenizer;
    o.out_dir = dir / "data";
    o.inputs = {dir / "c"};
    o.val_fraction = val_fraction;
    o.shard_tokens = shard_tokens;
    prepare_dataset(o);
    data = dir / "data";
  }
  ScratchDir dir;
  std::string tokenizer, data;
};

FimSettings no_fim() { return FimSettings{0.0, -1, -1, -1}; }
FimSettings tiny_fim(double rate = 0.1) {
  return FimSettings{rate, static_cast<int32_t>(Ids::fim_begin), static_cast<int32_t>(Ids::fim_end),
                     static_cast<int32_t>(Ids::fim_hole)};
}

// Reads `tokens_wanted` stream tokens through next() and checks row/batch continuity on the way.
std::vector<int32_t> read_stream(BatchLoader& loader, int64_t batch, int64_t batches) {
  const int64_t seq = loader.seq();
  std::vector<int32_t> tokens(batch * seq), labels(batch * seq), stream;
  for (int64_t b = 0; b < batches; ++b) {
    loader.next(batch, tokens.data(), labels.data());
    if (!stream.empty()) EXPECT_EQ(stream.back(), tokens[0]) << "batch " << b << " does not continue the stream";
    else stream.push_back(tokens[0]);
    for (int64_t i = 0; i < batch * seq; ++i) {
      if (i + 1 < batch * seq) EXPECT_EQ(labels[i], tokens[i + 1]) << "gap at " << i;
      stream.push_back(labels[i]);
    }
  }
  return stream;
}

// Splits a stream into documents at EOS (each ends with EOS); a trailing partial one is dropped.
std::vector<std::vector<int32_t>> documents_of(const std::vector<int32_t>& stream) {
  std::vector<std::vector<int32_t>> docs(1);
  for (int32_t t : stream) {
    docs.back().push_back(t);
    if (t == static_cast<int32_t>(Ids::eos)) docs.emplace_back();
  }
  docs.pop_back();
  return docs;
}

std::multiset<std::vector<int32_t>> stored_documents(const std::string& data, const std::string& split) {
  DataManifest m = DataManifest::load(data);
  std::multiset<std::vector<int32_t>> docs;
  for (const auto& s : m.split(split, "t").shards) {
    TokenShard shard = TokenShard::open(data + "/" + s.file);
    for (int64_t d = 0; d < shard.documents(); ++d) {
      std::vector<int32_t> doc;
      shard.append_document(d, doc);
      docs.insert(doc);
    }
  }
  return docs;
}

TEST(DataLoader, OneEpochIsEveryDocumentOncePackedWithoutGaps) {
  Prepared p(60);
  BatchLoader loader(p.data, "train", 16, 42, no_fim());
  EXPECT_EQ(loader.vocab_size(), Ids::vocab);
  EXPECT_EQ(loader.tokenizer_hash(), tokenizer_file_hash(p.tokenizer));
  const int64_t total = loader.total_tokens();
  // read just past one epoch: the stream starts at a document start
  const int64_t batches = total / (3 * 16) + 2;
  std::vector<int32_t> stream = read_stream(loader, 3, batches);
  EXPECT_EQ(loader.epoch(), 1);
  std::vector<int32_t> first_epoch(stream.begin(), stream.begin() + total);
  auto docs = documents_of(first_epoch);
  std::multiset<std::vector<int32_t>> got(docs.begin(), docs.end());
  EXPECT_EQ(got, stored_documents(p.data, "train"));
  EXPECT_EQ(stream[0], static_cast<int32_t>(Ids::bos));
  EXPECT_EQ(stream[total], static_cast<int32_t>(Ids::bos));  // the next epoch starts right after
}

TEST(DataLoader, ShufflesBySeedWithANewOrderEachEpoch) {
  Prepared p(60);
  auto epoch_docs = [&](uint64_t seed, int epochs) {
    BatchLoader loader(p.data, "train", 8, seed, no_fim());
    std::vector<int32_t> stream = read_stream(loader, 1, loader.total_tokens() * epochs / 8 + 1);
    std::vector<std::vector<int32_t>> e0 = documents_of({stream.begin(), stream.begin() + loader.total_tokens()});
    std::vector<std::vector<int32_t>> e1 =
        epochs > 1 ? documents_of({stream.begin() + loader.total_tokens(), stream.begin() + 2 * loader.total_tokens()})
                   : std::vector<std::vector<int32_t>>{};
    return std::make_pair(e0, e1);
  };
  auto [a0, a1] = epoch_docs(1, 2);
  auto [b0, b1] = epoch_docs(1, 2);
  auto [c0, c1] = epoch_docs(2, 1);
  EXPECT_EQ(a0, b0);
  EXPECT_EQ(a1, b1);
  EXPECT_NE(a0, a1);  // a new permutation for epoch 1
  EXPECT_NE(a0, c0);  // another seed, another order
}

TEST(DataLoader, StateRestoreContinuesBitIdentically) {
  Prepared p(80);
  for (int64_t skip : {0, 1, 5, 23}) {
    BatchLoader a(p.data, "train", 13, 9, tiny_fim(0.5));
    std::vector<int32_t> t(4 * 13), l(4 * 13);
    for (int64_t i = 0; i < skip; ++i) a.next(4, t.data(), l.data());
    const std::string saved = a.state().dump();  // through text, as a checkpoint stores it
    std::vector<int32_t> expected = read_stream(a, 4, 30);

    BatchLoader b(p.data, "train", 13, /*seed, replaced by the state's*/ 12345, tiny_fim(0.5));
    b.restore(nlohmann::json::parse(saved));
    EXPECT_EQ(read_stream(b, 4, 30), expected) << "after " << skip << " batches";
    EXPECT_EQ(a.state(), b.state());
  }
}

TEST(DataLoader, RestoreRefusesAnotherDatasetOrFimSetting) {
  Prepared p(30), q(31);
  BatchLoader a(p.data, "train", 8, 1, tiny_fim());
  nlohmann::json s = a.state();
  BatchLoader other_data(q.data, "train", 8, 1, tiny_fim());
  EXPECT_ERROR_HAS(other_data.restore(s), "saved for other data");
  BatchLoader other_fim(p.data, "train", 8, 1, no_fim());
  EXPECT_ERROR_HAS(other_fim.restore(s), "other FIM settings");
  BatchLoader validation(p.data, "validation", 8, 1, tiny_fim());
  EXPECT_ERROR_HAS(validation.restore(s), "saved for split \"train\"");
  std::vector<int32_t> t(8), l(8);
  a.next(1, t.data(), l.data());
  const nlohmann::json before = a.state();
  s["offset"] = 100000;
  EXPECT_ERROR_HAS(a.restore(s), "past the end of the current document");
  EXPECT_EQ(a.state(), before);  // a refused state leaves the loader as it was
  EXPECT_ERROR_HAS(a.restore(nlohmann::json{{"x", 1}}), "not a dsv3 batch loader state");
}

TEST(DataFim, RearrangesIntoPrefixSuffixMiddle) {
  FimSettings fim{1.0, 100, 102, 101};  // prefix (fim begin), middle (fim end), suffix (fim hole)
  std::vector<int32_t> body = {1, 2, 3, 4, 5, 6, 7};
  for (uint64_t seed = 0; seed < 200; ++seed) {
    std::vector<int32_t> doc = {0};  // BOS
    doc.insert(doc.end(), body.begin(), body.end());
    doc.push_back(9);  // EOS
    DataRng rng(seed);
    ASSERT_TRUE(apply_fim(doc, 1, 1 + body.size(), fim, rng));
    ASSERT_EQ(doc.size(), body.size() + 5);
    EXPECT_EQ(doc.front(), 0);
    EXPECT_EQ(doc.back(), 9);
    EXPECT_EQ(doc[1], 100);
    auto hole = std::find(doc.begin(), doc.end(), 101), end = std::find(doc.begin(), doc.end(), 102);
    ASSERT_TRUE(hole != doc.end() && end != doc.end() && hole < end);
    std::vector<int32_t> prefix(doc.begin() + 2, hole), suffix(hole + 1, end), middle(end + 1, doc.end() - 1);
    std::vector<int32_t> joined = prefix;
    joined.insert(joined.end(), middle.begin(), middle.end());
    joined.insert(joined.end(), suffix.begin(), suffix.end());
    EXPECT_EQ(joined, body);
  }
  std::vector<int32_t> doc = {1, 2};
  DataRng rng(1);
  EXPECT_FALSE(apply_fim(doc, 0, 2, FimSettings{0.0, 100, 102, 101}, rng));
  EXPECT_EQ(doc, (std::vector<int32_t>{1, 2}));
}

TEST(DataFim, RateIsCloseToTheSettingAndStructureHolds) {
  Prepared p(3000, 0.0, true, 1 << 20);
  BatchLoader loader(p.data, "train", 64, 3, tiny_fim(0.1));
  // a little more than one epoch (FIM adds 3 tokens to a chosen document)
  const int64_t batches = (loader.total_tokens() + 3 * 400) / (8 * 64) + 1;
  std::vector<int32_t> stream = read_stream(loader, 8, batches);
  auto docs = documents_of(stream);
  docs.resize(3000);  // the first epoch
  auto stored = stored_documents(p.data, "train");
  int fim = 0;
  for (const auto& doc : docs) {
    ASSERT_EQ(doc.front(), static_cast<int32_t>(Ids::bos));
    if (doc[1] != static_cast<int32_t>(Ids::fim_begin)) {
      EXPECT_TRUE(stored.count(doc));
      continue;
    }
    ++fim;
    auto hole = std::find(doc.begin(), doc.end(), static_cast<int32_t>(Ids::fim_hole));
    auto end = std::find(doc.begin(), doc.end(), static_cast<int32_t>(Ids::fim_end));
    ASSERT_TRUE(hole < end && end < doc.end());
    std::vector<int32_t> original = {static_cast<int32_t>(Ids::bos)};
    original.insert(original.end(), doc.begin() + 2, hole);     // prefix
    original.insert(original.end(), end + 1, doc.end() - 1);    // middle
    original.insert(original.end(), hole + 1, end);             // suffix
    original.push_back(static_cast<int32_t>(Ids::eos));
    EXPECT_TRUE(stored.count(original)) << "a FIM document does not reassemble into a stored one";
  }
  // Binomial(3000, 0.1): mean 300, standard deviation 16.4; allow five.
  EXPECT_NEAR(fim, 300, 82) << fim << " of 3000 documents";
}

TEST(DataFim, SettingsComeFromTheTokenizer) {
  ScratchDir dir;
  auto with = tok::Tokenizer::load(testing::write_tiny_tokenizer(dir / "a"));
  FimSettings f = fim_settings_from(with);
  EXPECT_DOUBLE_EQ(f.rate, 0.1);
  EXPECT_EQ(f.prefix_id, static_cast<int32_t>(Ids::fim_begin));
  EXPECT_EQ(f.suffix_id, static_cast<int32_t>(Ids::fim_hole));
  EXPECT_EQ(f.middle_id, static_cast<int32_t>(Ids::fim_end));
  auto without = tok::Tokenizer::load(testing::write_tiny_tokenizer(dir / "b", true, false));
  EXPECT_EQ(fim_settings_from(without).rate, 0.0);
  const std::string deepseek = std::string(DSV3_SOURCE_DIR) + "/third_party/deepseek_v3/models/tokenizer.json";
  if (std::filesystem::exists(deepseek)) {
    FimSettings d = fim_settings_from(tok::Tokenizer::load(deepseek));
    EXPECT_EQ(d.prefix_id, 128801);  // <｜fim▁begin｜>
    EXPECT_EQ(d.suffix_id, 128800);  // <｜fim▁hole｜>
    EXPECT_EQ(d.middle_id, 128802);  // <｜fim▁end｜>
  }
}

TEST(DataLoaderErrors, MismatchedOrDamagedDataIsRefused) {
  Prepared p(30), other(30, 0.1, /*with_fim=*/false);
  EXPECT_ERROR_HAS(BatchLoader(p.dir / "nowhere", "train", 8, 1, no_fim()), "no such data folder");
  std::filesystem::create_directories(p.dir / "unfinished");
  EXPECT_ERROR_HAS(BatchLoader(p.dir / "unfinished", "train", 8, 1, no_fim()), "not a finished `dsv3 prepare`");
  EXPECT_ERROR_HAS(BatchLoader(p.data, "test", 8, 1, no_fim()), "split must be");
  EXPECT_ERROR_HAS(BatchLoader(p.data, "train", 0, 1, no_fim()), "sequence length");
  EXPECT_ERROR_HAS(BatchLoader(p.data, "train", 8, 1, FimSettings{}), "needs the three sentinel ids");

  // the trainer's tokenizer is not the data's
  BatchLoader loader(p.data, "train", 8, 1, no_fim());
  auto theirs = tok::Tokenizer::load(other.tokenizer);
  EXPECT_ERROR_HAS(loader.expect_tokenizer(tokenizer_file_hash(other.tokenizer), static_cast<int64_t>(theirs.vocab_size())),
                   "run dsv3 prepare again with this tokenizer");
  loader.expect_tokenizer(tokenizer_file_hash(p.tokenizer), Ids::vocab);

  // a shard from another tokenizer and vocabulary dropped in under a listed name
  std::filesystem::copy_file(other.data + "/validation-00000.bin", p.data + "/validation-00000.bin",
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_ERROR_HAS(BatchLoader(p.data, "validation", 8, 1, no_fim()), "a shard from another tokenizer");

  // a truncated shard
  std::string bytes = testing::read_file(p.data + "/train-00000.bin");
  write_file(p.data + "/train-00000.bin", bytes.substr(0, bytes.size() / 2));
  EXPECT_ERROR_HAS(BatchLoader(p.data, "train", 8, 1, no_fim()), p.data + "/train-00000.bin: truncated");
  std::filesystem::remove(p.data + "/train-00000.bin");
  EXPECT_ERROR_HAS(BatchLoader(p.data, "train", 8, 1, no_fim()), "train-00000.bin: missing (listed in");

  Prepared no_validation(5, 0.0);
  EXPECT_ERROR_HAS(BatchLoader(no_validation.data, "validation", 8, 1, no_fim()), "the validation split has no documents");
}

TEST(DataLoader, DeepSeekTokenizerGivesU32Shards) {
  const std::string deepseek = std::string(DSV3_SOURCE_DIR) + "/third_party/deepseek_v3/models/tokenizer.json";
  if (!std::filesystem::exists(deepseek)) GTEST_SKIP() << deepseek << " is missing: run scripts/setup.sh";
  ScratchDir dir;
  for (int i = 0; i < 10; ++i) write_file(dir / ("c/" + std::to_string(i) + ".txt"), "Hello world number " + std::to_string(i));
  PrepareOptions o;
  o.tokenizer_path = deepseek;
  o.out_dir = dir / "data";
  o.inputs = {dir / "c"};
  o.val_fraction = 0.2;
  prepare_dataset(o);
  auto tok = tok::Tokenizer::load(deepseek);
  BatchLoader loader(dir / "data", "train", 32, 1, fim_settings_from(tok));
  EXPECT_EQ(TokenShard::open(dir / "data/train-00000.bin").header().token_bytes, 4u);
  EXPECT_EQ(loader.documents(), 8);
  std::vector<int32_t> t(32), l(32);
  loader.next(1, t.data(), l.data());
  EXPECT_EQ(t[0], 0);  // DeepSeek's BOS: add_bos_token is true in its tokenizer_config.json
}

}  // namespace
}  // namespace dsv3
