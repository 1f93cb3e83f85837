#pragma once
// GPT-2's byte-level alphabet: every byte gets a printable code point so that a vocabulary of
// strings can name arbitrary byte sequences. Printable Latin-1 bytes map to themselves, the other
// 68 (controls, space, 0x7F-0xA0, 0xAD) to U+0100 onwards in byte order.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dsv3::tok {

class ByteLevelAlphabet {
 public:
  static const ByteLevelAlphabet& get();

  uint32_t code_point(uint8_t byte) const { return byte_to_cp_[byte]; }
  // The byte a code point stands for, or -1 when it is outside the alphabet.
  int byte_of(uint32_t code_point) const {
    return code_point < cp_to_byte_.size() ? cp_to_byte_[code_point] : -1;
  }
  // Raw bytes -> their alphabet string (UTF-8).
  std::string encode(std::string_view bytes) const;
  // Alphabet string -> raw bytes; nullopt when some character is outside the alphabet.
  std::optional<std::string> decode(std::string_view text) const;

 private:
  ByteLevelAlphabet();
  std::array<uint32_t, 256> byte_to_cp_{};
  std::array<int16_t, 324> cp_to_byte_{};
};

}  // namespace dsv3::tok
