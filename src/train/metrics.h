#pragma once
// Run monitoring: one JSON object a line in RUN_DIR/metrics.jsonl, and a progress line on the
// terminal (rewritten in place on a TTY, one line every few steps otherwise).
#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace dsv3 {

class MetricsLog {
 public:
  // Opens RUN_DIR/metrics.jsonl for appending after dropping records of steps > keep_through
  // (steps a resumed run will redo); keep_through < 0 starts a fresh log.
  MetricsLog(const std::string& run_dir, int64_t keep_through);
  ~MetricsLog();
  void write(const nlohmann::json& record);  // flushed at once: a crash loses nothing logged

 private:
  std::FILE* file_ = nullptr;
};

// Human-readable seconds: "42s", "3m05s", "1h02m".
std::string format_duration(double seconds);

}  // namespace dsv3
