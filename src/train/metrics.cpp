#include "train/metrics.h"

#include <filesystem>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "train/checkpoint.h"
#include "train/data/atomic_file.h"

namespace dsv3 {

MetricsLog::MetricsLog(const std::string& run_dir, int64_t keep_through) {
  const std::string path = (std::filesystem::path(run_dir) / "metrics.jsonl").string();
  std::vector<std::string> kept;
  if (keep_through >= 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded()) continue;  // a line cut short by a crash
      if (j.contains("step") && j["step"].get<int64_t>() > keep_through) continue;
      kept.push_back(line);
    }
  }
  // Rewrite the kept records atomically, then append from there.
  std::string text;
  for (const auto& line : kept) text += line + "\n";
  write_file_atomically(path, text);
  file_ = std::fopen(path.c_str(), "a");
  DSV3_CHECK(file_ != nullptr, "{}: cannot open the metrics log", path);
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write(const nlohmann::json& record) {
  std::fprintf(file_, "%s\n", record.dump().c_str());
  std::fflush(file_);
}

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  long s = long(seconds + 0.5);
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%lds", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  return buf;
}

}  // namespace dsv3
