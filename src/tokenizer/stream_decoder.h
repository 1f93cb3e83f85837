#pragma once
// Decodes ids one at a time for streaming output. A token may end inside a UTF-8 character
// (byte-level BPE splits rare characters across tokens), so the bytes of an unfinished character
// are held back until the ids that complete it arrive. Every string returned is valid UTF-8, and
// the concatenation of all of them (with finish()) equals Tokenizer::decode of the whole sequence.
#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace dsv3::tok {

class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

  // Text that is complete after this id (possibly empty).
  std::string push(uint32_t id);
  // Whatever is still held back: an unfinished character becomes U+FFFD. Resets the decoder.
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;  // bytes not yet emitted: at most an unfinished character's 3 bytes
};

}  // namespace dsv3::tok
