#pragma once
// Fill-in-the-Middle in PSM (prefix-suffix-middle) form, at document level, as DeepSeek-Coder and
// DeepSeek-V3 train it. A chosen document's body (its tokens between BOS and EOS) is cut at two
// uniform random token boundaries into prefix | middle | suffix and rearranged as
//
//   [BOS] <｜fim▁begin｜> prefix <｜fim▁hole｜> suffix <｜fim▁end｜> middle [EOS]
//
// which is the order DeepSeek-Coder's README prompts with (the hole sentinel marks where the
// middle was cut out). The settings name each sentinel by the part it introduces, StarCoder-style:
// prefix_id = <｜fim▁begin｜>, suffix_id = <｜fim▁hole｜>, middle_id = <｜fim▁end｜>.
// Cuts fall on token boundaries (not characters): exact, cheap, and the shard needs no text.
#include <cstdint>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "train/data/rng.h"

namespace dsv3 {

struct FimSettings {
  double rate = 0.1;  // probability that a document is rearranged
  int32_t prefix_id = -1, middle_id = -1, suffix_id = -1;
};

inline constexpr const char* kFimBeginToken = "<｜fim▁begin｜>";  // introduces the prefix
inline constexpr const char* kFimHoleToken = "<｜fim▁hole｜>";    // introduces the suffix
inline constexpr const char* kFimEndToken = "<｜fim▁end｜>";      // introduces the middle

// Looks the three sentinels up by name; rate 0.1 when all exist, else rate 0 and ids -1.
FimSettings fim_settings_from(const tok::Tokenizer& t);

// With probability fim.rate (one draw of `rng`), rearranges doc[body_begin, body_end) into PSM
// form in place (two more draws pick the cuts in [0, body length]). Returns whether it did.
bool apply_fim(std::vector<int32_t>& doc, size_t body_begin, size_t body_end, const FimSettings& fim, DataRng& rng);

}  // namespace dsv3
