// libFuzzer target: the token-shard reader must refuse any malformed bytes with a dsv3::Error
// (never crash, read out of bounds or hang), and whatever it accepts must be readable in full.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "core/error.h"
#include "train/data/shard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    dsv3::ShardHeader h = dsv3::parse_shard(bytes, "fuzz.bin");
    // Accepted: every document's tokens lie inside the data and below the vocabulary size.
    uint64_t sum = 0;
    for (uint64_t i = 0; i < h.tokens; ++i) {
      uint32_t id = 0;
      std::memcpy(&id, bytes.data() + h.tokens_offset + h.token_bytes * i, h.token_bytes);
      if (id >= h.vocab_size) __builtin_trap();
      sum += id;
    }
    (void)sum;
  } catch (const dsv3::Error&) {
  }
  return 0;
}
