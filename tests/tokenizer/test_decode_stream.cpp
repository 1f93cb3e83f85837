// Streaming decoding and UTF-8 handling at the tokenizer's boundary.
#include <random>

#include "core/error.h"
#include "random_text.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace dsv3::tok::testing {
namespace {

// Feeds ids one at a time: every piece must be valid UTF-8 and the pieces must add up to the
// whole-sequence decode, for real encodings and for shuffled ids that cut characters apart.
TEST(StreamDecoder, PiecesAreValidUtf8AndConcatenateToDecode) {
  const Tokenizer& tok = deepseek();
  std::mt19937_64 rng(12345);
  size_t pieces_checked = 0, split_characters = 0;
  for (int round = 0; round < 400; ++round) {
    std::vector<uint32_t> ids = tok.encode(random_text(rng, {"<｜User｜>"}));
    if (round % 2) std::shuffle(ids.begin(), ids.end(), rng);
    StreamDecoder stream(tok);
    std::string streamed;
    for (uint32_t id : ids) {
      std::string piece = stream.push(id);
      ASSERT_EQ(find_invalid_utf8(piece), std::string_view::npos) << "broken UTF-8 emitted";
      if (piece.empty() && !tok.token_bytes(id).empty()) ++split_characters;
      streamed += piece;
      ++pieces_checked;
    }
    streamed += stream.finish();
    ASSERT_EQ(streamed, tok.decode(ids));
  }
  EXPECT_GT(pieces_checked, 1000u);
  EXPECT_GT(split_characters, 0u) << "the random text never split a character across tokens";
}

TEST(StreamDecoder, HoldsBackAnUnfinishedCharacter) {
  const Tokenizer& tok = deepseek();
  // "€" is E2 82 AC: find single-byte tokens for each byte to force a split character.
  StreamDecoder stream(tok);
  EXPECT_EQ(stream.push(tok.model().byte_id(0xE2)), "");
  EXPECT_EQ(stream.push(tok.model().byte_id(0x82)), "");
  EXPECT_EQ(stream.push(tok.model().byte_id(0xAC)), "€");
  // A lead byte left dangling at the end becomes U+FFFD on finish().
  EXPECT_EQ(stream.push(tok.model().byte_id(0xF0)), "");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");
  // A lead byte followed by something that cannot continue it is replaced at once.
  EXPECT_EQ(stream.push(tok.model().byte_id(0xE2)), "");
  EXPECT_EQ(stream.push(tok.model().byte_id('A')), "\xEF\xBF\xBD" "A");
}

TEST(Utf8, InvalidInputIsRejectedWithItsOffset) {
  const Tokenizer& tok = deepseek();
  const std::pair<std::string, size_t> cases[] = {
      {"ok\xFF", 2}, {"\x80", 0}, {"ab\xC3", 2}, {"\xED\xA0\x80 surrogate", 0}, {"\xC0\xAF overlong", 0},
      {"fine \xF4\x90\x80\x80", 5}, {"\xE2\x82", 0}};
  for (const auto& [text, offset] : cases) {
    try {
      tok.encode(text);
      ADD_FAILURE() << "accepted invalid UTF-8";
    } catch (const dsv3::Error& e) {
      EXPECT_NE(std::string(e.what()).find("byte offset " + std::to_string(offset)), std::string::npos) << e.what();
    }
  }
}

TEST(Utf8, InvalidInputCanBeReplaced) {
  const Tokenizer& tok = deepseek();
  auto ids = tok.encode("a\xFF" "b\xE2\x82", {.invalid_utf8 = InvalidUtf8::Replace});
  EXPECT_EQ(tok.decode(ids), "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
  EXPECT_EQ(ids, tok.encode("a\xEF\xBF\xBD" "b\xEF\xBF\xBD"));
}

TEST(Utf8, MakeValidFollowsMaximalSubparts) {
  // Rust's from_utf8_lossy: one U+FFFD per maximal prefix of a valid sequence.
  EXPECT_EQ(make_valid_utf8("\xF0\x90\x80" "A"), "\xEF\xBF\xBD" "A");
  EXPECT_EQ(make_valid_utf8("\xF0\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(make_valid_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(make_valid_utf8("ok"), "ok");
}

TEST(Tokenizer, UnknownIdsAreRejected) {
  const Tokenizer& tok = deepseek();
  std::vector<uint32_t> ids = {1, static_cast<uint32_t>(tok.vocab_size())};
  EXPECT_THROW(tok.decode(ids), dsv3::Error);
  StreamDecoder stream(tok);
  EXPECT_THROW(stream.push(0xFFFFFFFFu), dsv3::Error);
}

TEST(Tokenizer, BatchEncodeMatchesSingleEncode) {
  const Tokenizer& tok = deepseek();
  std::mt19937_64 rng(7);
  std::vector<std::string> texts;
  for (int i = 0; i < 300; ++i) texts.push_back(random_text(rng, {"<｜User｜>"}));
  std::vector<std::string_view> views(texts.begin(), texts.end());
  auto batch = tok.encode_batch(views);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(batch[i], tok.encode(texts[i]));
  views.push_back("bad \xFF");
  EXPECT_THROW(tok.encode_batch(views), dsv3::Error);
}

TEST(Tokenizer, LongInputsDoNotCrash) {
  const Tokenizer& tok = deepseek();
  // Long runs take the heap-based merge path and stress the regex JIT stack.
  std::string letters(100000, 'a'), spaces(200000, ' '), digits(50000, '7'), mixed;
  for (int i = 0; i < 20000; ++i) mixed += "é ";
  for (const std::string* text : {&letters, &spaces, &digits, &mixed}) {
    auto ids = tok.encode(*text);
    EXPECT_EQ(tok.decode(ids), *text);
  }
}

}  // namespace
}  // namespace dsv3::tok::testing
