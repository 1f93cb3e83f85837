#include "train/data/fim.h"

#include <algorithm>

namespace dsv3 {

FimSettings fim_settings_from(const tok::Tokenizer& t) {
  auto begin = t.token_to_id(kFimBeginToken), hole = t.token_to_id(kFimHoleToken), end = t.token_to_id(kFimEndToken);
  FimSettings fim;
  if (!begin || !hole || !end) {
    fim.rate = 0;
    return fim;
  }
  fim.prefix_id = static_cast<int32_t>(*begin);
  fim.suffix_id = static_cast<int32_t>(*hole);
  fim.middle_id = static_cast<int32_t>(*end);
  return fim;
}

bool apply_fim(std::vector<int32_t>& doc, size_t body_begin, size_t body_end, const FimSettings& fim, DataRng& rng) {
  if (fim.rate <= 0 || !(rng.unit() < fim.rate)) return false;
  const size_t n = body_end - body_begin;
  size_t a = rng.below(n + 1), b = rng.below(n + 1);
  if (a > b) std::swap(a, b);
  // body = prefix [0, a) | middle [a, b) | suffix [b, n)
  std::vector<int32_t> out;
  out.reserve(doc.size() + 3);
  out.insert(out.end(), doc.begin(), doc.begin() + body_begin);
  out.push_back(fim.prefix_id);
  out.insert(out.end(), doc.begin() + body_begin, doc.begin() + body_begin + a);
  out.push_back(fim.suffix_id);
  out.insert(out.end(), doc.begin() + body_begin + b, doc.begin() + body_end);
  out.push_back(fim.middle_id);
  out.insert(out.end(), doc.begin() + body_begin + a, doc.begin() + body_begin + b);
  out.insert(out.end(), doc.begin() + body_end, doc.end());
  doc.swap(out);
  return true;
}

}  // namespace dsv3
