// `dsv3 version`: what this build is and what it was built with.
#include <cstdio>

#include "command.h"
#include "core/threads.h"

namespace {
dsv3::app::Registrar reg("version", "Print the version and build configuration", [](CLI::App&) {
  return []() {
    std::printf("dsv3 0.1.0 (C++20, OpenMP threads=%d)\n", dsv3::num_threads());
    return 0;
  };
});
}  // namespace
