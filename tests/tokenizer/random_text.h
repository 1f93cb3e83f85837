#pragma once
// Random Unicode text for differential tests: characters drawn from many scripts and from the
// classes the pre-tokenizer regexes care about (letters, marks, digits, punctuation, symbols,
// every kind of whitespace and line break), plus fragments of added tokens.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace dsv3::tok::testing {

std::string random_text(std::mt19937_64& rng, const std::vector<std::string>& fragments);

}  // namespace dsv3::tok::testing
