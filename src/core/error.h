#pragma once
// Errors that name what is wrong and where. Every user-facing failure in dsv3 is a dsv3::Error
// whose message is one line: "<where>: <what>". The command line prints it and exits non-zero.
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace dsv3 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// Checks an invariant that user input can violate; the message is formatted only on failure.
#define DSV3_CHECK(cond, ...)               \
  do {                                      \
    if (!(cond)) ::dsv3::fail(__VA_ARGS__); \
  } while (0)

}  // namespace dsv3
