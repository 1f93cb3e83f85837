#pragma once
// Turning input paths into documents: which files, whether each is text, where documents begin.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

// Expands the inputs into files: a file is taken as given (whatever its extension); a folder is
// walked recursively in sorted order, skipping hidden entries (names starting with '.') and,
// when `extensions` is not empty, files whose extension (".txt") is not listed. A missing path is
// an error naming it; so is an input list that yields no files.
std::vector<std::string> collect_input_files(const std::vector<std::string>& inputs,
                                             const std::vector<std::string>& extensions);

// Why `bytes` is not usable text, or nullopt: "empty file", "binary file: NUL byte at byte
// offset N", "invalid UTF-8 at byte offset N".
std::optional<std::string> text_problem(std::string_view bytes);

struct DocumentSpan {
  uint64_t begin = 0, size = 0;  // bytes within the file
};

// The documents of a text: the whole text, or the pieces between occurrences of `delimiter`.
// Pieces that are empty or only whitespace are dropped (e.g. after a trailing delimiter).
std::vector<DocumentSpan> split_documents(std::string_view text, const std::string& delimiter);

}  // namespace dsv3
