#pragma once
// The 64-bit hashes of the data pipeline. FNV-1a 64 (offset basis 0xcbf29ce484222325, prime
// 0x100000001b3) identifies tokenizer files and checksums shards: simple enough that any tool can
// recompute it. mix64 (the SplitMix64 finalizer) derives independent random streams from a seed.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv3 {

inline constexpr uint64_t kFnvOffsetBasis = 0xcbf29ce484222325ull;
inline constexpr uint64_t kFnvPrime = 0x100000001b3ull;

// FNV-1a 64 of `size` bytes, continuing from `hash` (pass kFnvOffsetBasis to start).
uint64_t fnv1a64(const void* data, size_t size, uint64_t hash = kFnvOffsetBasis);
inline uint64_t fnv1a64(std::string_view bytes, uint64_t hash = kFnvOffsetBasis) {
  return fnv1a64(bytes.data(), bytes.size(), hash);
}

// The identity of a tokenizer: FNV-1a 64 of its tokenizer.json bytes. Errors name the file.
uint64_t tokenizer_file_hash(const std::string& tokenizer_json_path);

// 16 lowercase hex digits, and back (errors name `where`).
std::string hash_to_hex(uint64_t hash);
uint64_t hash_from_hex(const std::string& hex, const std::string& where);

// SplitMix64's finalizer: a bijective mixing of 64 bits.
constexpr uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A seed for one purpose (domain) and up to three counters, e.g. (seed, "fim", epoch, document).
constexpr uint64_t derive_seed(uint64_t seed, uint64_t domain, uint64_t a = 0, uint64_t b = 0) {
  return mix64(mix64(mix64(mix64(seed) ^ domain) ^ a) ^ b);
}

}  // namespace dsv3
