#include "train/data/hash.h"

#include <fmt/format.h>

#include "core/error.h"
#include "train/data/mapped_file.h"

namespace dsv3 {

uint64_t fnv1a64(const void* data, size_t size, uint64_t hash) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    hash ^= p[i];
    hash *= kFnvPrime;
  }
  return hash;
}

uint64_t tokenizer_file_hash(const std::string& tokenizer_json_path) {
  MappedFile file = MappedFile::open(tokenizer_json_path);
  return fnv1a64(file.bytes());
}

std::string hash_to_hex(uint64_t hash) { return fmt::format("{:016x}", hash); }

uint64_t hash_from_hex(const std::string& hex, const std::string& where) {
  DSV3_CHECK(hex.size() == 16, "{}: expected a 16-digit hex hash, got \"{}\"", where, hex);
  uint64_t value = 0;
  for (char c : hex) {
    int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    DSV3_CHECK(digit >= 0, "{}: expected a 16-digit lowercase hex hash, got \"{}\"", where, hex);
    value = value << 4 | static_cast<uint64_t>(digit);
  }
  return value;
}

}  // namespace dsv3
