#pragma once
// Where a step's time goes, by phase: off by default (one branch per phase), switched on by
// `dsv3 bench train-step --profile`. Each phase waits for the device before it starts and
// before it ends, so queued work lands in the phase that queued it; that serialises the GPU and
// makes the profiled step slower than a plain one: read the shares, not the sum.
#include <chrono>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dsv3::profile {

void enable(bool on);
bool enabled();
// Adds `seconds` to the phase `name` (created on first use, kept in first-use order).
void add(const char* name, double seconds);
struct Entry {
  std::string name;
  double seconds = 0;
  long calls = 0;
};
std::vector<Entry> entries();
void reset();

// Times its scope as phase `name` when profiling is on.
class Phase {
 public:
  Phase(const char* name, Device device);
  ~Phase();
  Phase(const Phase&) = delete;
  Phase& operator=(const Phase&) = delete;

 private:
  const char* name_;
  Device device_;
  bool on_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace dsv3::profile
