#include "random_text.h"

#include "tokenizer/utf8.h"

namespace dsv3::tok::testing {
namespace {

struct Range {
  uint32_t lo, hi;
};

// Blocks chosen to exercise every branch of the DeepSeek-V3 split patterns.
const Range kRanges[] = {
    {0x20, 0x7E},     {0x20, 0x7E},     {0x20, 0x7E},    {0x30, 0x39},    {0x09, 0x0D},
    {0xA0, 0xFF},     {0x100, 0x24F},   {0x300, 0x36F},  {0x370, 0x3FF},  {0x400, 0x4FF},
    {0x590, 0x5FF},   {0x600, 0x6FF},   {0x660, 0x669},  {0x900, 0x97F},  {0xE00, 0xE7F},
    {0x1100, 0x11FF}, {0x1680, 0x1680}, {0x2000, 0x206F}, {0x2070, 0x209F}, {0x20A0, 0x20CF},
    {0x2150, 0x218F}, {0x2460, 0x24FF}, {0x2500, 0x27BF}, {0x3000, 0x303F}, {0x3040, 0x30FF},
    {0x4E00, 0x9FA5}, {0x9FA6, 0x9FFF}, {0xAC00, 0xD7A3}, {0xE000, 0xE0FF}, {0xFE00, 0xFE0F},
    {0xFF00, 0xFFEF}, {0x1D400, 0x1D7FF}, {0x1F300, 0x1FAFF}, {0x20000, 0x2A6DF}, {0xE0000, 0xE007F},
};

const char* const kSpecialChars[] = {"\n", "\r\n", "\r", "  ", "\t", "\u00a0", "\u2028", "\u3000",
                                     "'s", "'ll", "\u200d", "\ufeff", "...", "--", "123456"};

}  // namespace

std::string random_text(std::mt19937_64& rng, const std::vector<std::string>& fragments) {
  std::uniform_int_distribution<int> length_dist(0, 60);
  std::uniform_int_distribution<int> kind(0, 99);
  std::string out;
  int length = length_dist(rng);
  for (int i = 0; i < length; ++i) {
    int k = kind(rng);
    if (k < 5 && !fragments.empty()) {
      out += fragments[rng() % fragments.size()];
    } else if (k < 15) {
      out += kSpecialChars[rng() % std::size(kSpecialChars)];
    } else {
      const Range& r = kRanges[rng() % std::size(kRanges)];
      uint32_t cp = r.lo + static_cast<uint32_t>(rng() % (r.hi - r.lo + 1));
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
      append_utf8(out, cp);
    }
  }
  return out;
}

}  // namespace dsv3::tok::testing
