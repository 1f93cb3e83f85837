#pragma once
// An environment variable set for a scope and restored after (unset if it was unset): the GPU
// tests compare the backend's ways (DSV3_GROUPED_GEMM, DSV3_CUDA_PERSISTENT, ...) in one process.
#include <cstdlib>
#include <string>

namespace dsv3::test {

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* v = std::getenv(name)) saved_ = v, had_ = true;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_.c_str(), saved_.c_str(), 1);
    else unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_, saved_;
  bool had_ = false;
};

}  // namespace dsv3::test
