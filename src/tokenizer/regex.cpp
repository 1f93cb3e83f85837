#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "core/error.h"

namespace dsv3::tok {
namespace {

// Code points that Hugging Face tokenizers' regex engine (Unicode 16) puts in a general category
// but PCRE2 10.42 (Unicode 14) does not know yet; see scripts/gen_unicode_overrides.js.
struct CategoryOverride {
  char category;
  std::vector<std::pair<uint32_t, uint32_t>> added;
};
const CategoryOverride kCategoryOverrides[] = {
#include "tokenizer/unicode_overrides.inc"
};

const CategoryOverride* override_for(char category) {
  for (const auto& o : kCategoryOverrides)
    if (o.category == category) return &o;
  return nullptr;
}

std::string class_ranges(const CategoryOverride& o) {
  std::string out;
  for (auto [lo, hi] : o.added) out += lo == hi ? fmt::format("\\x{{{:X}}}", lo) : fmt::format("\\x{{{:X}}}-\\x{{{:X}}}", lo, hi);
  return out;
}

// Rewrites \p{L} (and \pL) for the overridden categories into a class that also holds the newer
// code points: "[\p{L}...]" outside a class, "\p{L}..." inside one. \P{X} outside a class becomes
// "[^\p{X}...]"; inside a class it is left alone (no template we know of writes it).
std::string widen_unicode_categories(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char kind = pattern[i + 1];
      if (kind == 'p' || kind == 'P') {
        size_t end = i + 2;
        char category = 0;
        if (end < pattern.size() && pattern[end] == '{' && end + 2 < pattern.size() && pattern[end + 2] == '}') {
          category = pattern[end + 1];
          end += 3;
        } else if (end < pattern.size() && pattern[end] != '{') {
          category = pattern[end];
          end += 1;
        }
        const CategoryOverride* o = category ? override_for(category) : nullptr;
        if (o && !(kind == 'P' && in_class)) {
          std::string property = fmt::format("\\p{{{}}}", category);
          if (in_class) out += property + class_ranges(*o);
          else out += (kind == 'P' ? "[^" : "[") + property + class_ranges(*o) + "]";
          i = end - 1;
          continue;
        }
      }
      out += c;
      out += pattern[++i];
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == '[' && in_class && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      size_t close = pattern.find(":]", i + 2);  // POSIX class such as [:alpha:]
      if (close != std::string::npos) {
        out.append(pattern, i, close + 2 - i);
        i = close + 1;
        continue;
      }
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

// Per-thread match state shared by every pattern: one ovector pair is all we read, and a JIT stack
// larger than the 32 KiB default so that long runs of whitespace (\s+(?!\S)) cannot exhaust it.
struct ThreadMatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  ThreadMatchState() { pcre2_jit_stack_assign(context, nullptr, jit_stack); }
  ~ThreadMatchState() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_data_free(data);
  }
};

ThreadMatchState& thread_state() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  const std::string widened = widen_unicode_categories(pattern);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(widened.data()), widened.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (!code)
    fail("regex /{}/: {} at offset {}", pattern, pcre2_message(error), static_cast<size_t>(error_offset));
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

bool Regex::find(std::string_view subject, size_t start, size_t* match_begin,
                 size_t* match_end) const {
  ThreadMatchState& state = thread_state();
  auto* code = static_cast<pcre2_code*>(code_);
  auto* data = reinterpret_cast<PCRE2_SPTR>(subject.data());
  int rc = jit_ ? pcre2_jit_match(code, data, subject.size(), start, 0, state.data, state.context)
                : pcre2_match(code, data, subject.size(), start, PCRE2_NO_UTF_CHECK, state.data,
                              state.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) fail("regex /{}/: matching failed: {}", pattern_, pcre2_message(rc));
  PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
  *match_begin = ovector[0];
  *match_end = ovector[1];
  return true;
}

}  // namespace dsv3::tok
