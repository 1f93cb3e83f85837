#pragma once
// A compiled PCRE2 pattern (UTF + UCP, JIT when available). With PCRE2_UCP, \s \w \d and the POSIX
// classes follow Unicode properties, which is what Oniguruma does for the Hugging Face tokenizers'
// Split patterns, so the splits agree exactly.
#include <cstddef>
#include <string>
#include <string_view>

namespace dsv3::tok {

class Regex {
 public:
  // Throws dsv3::Error naming the pattern and PCRE2's message when it does not compile.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Finds the first match in subject at or after byte `start`. The subject must be valid UTF-8
  // (checked by the caller once, not here). Thread-safe.
  bool find(std::string_view subject, size_t start, size_t* match_begin, size_t* match_end) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

}  // namespace dsv3::tok
