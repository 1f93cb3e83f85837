#include "train/data/corpus.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace dsv3 {

namespace fs = std::filesystem;

namespace {

bool hidden(const fs::path& p) {
  std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

bool wanted(const fs::path& p, const std::vector<std::string>& extensions) {
  if (extensions.empty()) return true;
  std::string ext = p.extension().string();
  return std::any_of(extensions.begin(), extensions.end(), [&](const std::string& e) {
    return e == ext || (!e.empty() && e[0] != '.' && "." + e == ext);
  });
}

bool only_whitespace(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; });
}

}  // namespace

std::vector<std::string> collect_input_files(const std::vector<std::string>& inputs,
                                             const std::vector<std::string>& extensions) {
  DSV3_CHECK(!inputs.empty(), "prepare: no inputs given");
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    std::error_code ec;
    fs::file_status st = fs::status(input, ec);
    DSV3_CHECK(fs::exists(st), "{}: no such file or folder", input);
    if (fs::is_directory(st)) {
      std::vector<std::string> found;
      fs::recursive_directory_iterator it(input, fs::directory_options::follow_directory_symlink, ec), end;
      DSV3_CHECK(!ec, "{}: cannot read folder: {}", input, ec.message());
      for (; it != end; it.increment(ec)) {
        DSV3_CHECK(!ec, "{}: cannot read folder: {}", input, ec.message());
        if (hidden(it->path())) {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file() && wanted(it->path(), extensions)) found.push_back(it->path().string());
      }
      std::sort(found.begin(), found.end());
      DSV3_CHECK(!found.empty(), "{}: folder holds no input files{}", input,
                 extensions.empty() ? "" : " with the requested extensions");
      files.insert(files.end(), found.begin(), found.end());
    } else {
      DSV3_CHECK(fs::is_regular_file(st), "{}: not a regular file", input);
      files.push_back(input);
    }
  }
  return files;
}

std::optional<std::string> text_problem(std::string_view bytes) {
  if (bytes.empty()) return "empty file";
  if (size_t nul = bytes.find('\0'); nul != std::string_view::npos)
    return "binary file: NUL byte at byte offset " + std::to_string(nul);
  if (size_t bad = tok::find_invalid_utf8(bytes); bad != std::string_view::npos)
    return "not text: invalid UTF-8 at byte offset " + std::to_string(bad);
  return std::nullopt;
}

std::vector<DocumentSpan> split_documents(std::string_view text, const std::string& delimiter) {
  std::vector<DocumentSpan> docs;
  auto add = [&](size_t begin, size_t end) {
    if (!only_whitespace(text.substr(begin, end - begin))) docs.push_back({begin, end - begin});
  };
  if (delimiter.empty()) {
    add(0, text.size());
    return docs;
  }
  size_t start = 0;
  while (true) {
    size_t at = text.find(delimiter, start);
    if (at == std::string_view::npos) break;
    add(start, at);
    start = at + delimiter.size();
  }
  add(start, text.size());
  return docs;
}

}  // namespace dsv3
