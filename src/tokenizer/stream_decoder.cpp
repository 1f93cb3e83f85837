#include "tokenizer/stream_decoder.h"

#include "tokenizer/utf8.h"

namespace dsv3::tok {

std::string StreamDecoder::push(uint32_t id) {
  std::string_view bytes = tokenizer_.token_bytes(id);  // rejects unknown ids
  if (skip_special_ && tokenizer_.is_special(id)) return {};
  pending_.append(bytes);
  // Emit everything up to a trailing sequence that could still become a valid character;
  // invalid bytes before it are replaced exactly as a whole-sequence decode replaces them.
  size_t keep_from = pending_.size();
  for (size_t back = 1; back <= 3 && back <= pending_.size(); ++back) {
    size_t start = pending_.size() - back;
    if (utf8_incomplete_prefix_length(pending_, start) == back) {
      keep_from = start;
      break;
    }
  }
  std::string ready = make_valid_utf8(std::string_view(pending_).substr(0, keep_from));
  pending_.erase(0, keep_from);
  return ready;
}

std::string StreamDecoder::finish() {
  std::string rest = make_valid_utf8(pending_);
  pending_.clear();
  return rest;
}

}  // namespace dsv3::tok
