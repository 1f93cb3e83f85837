#include "train/plot.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv3 {

namespace fs = std::filesystem;

namespace {
// Escapes a string for a gnuplot double-quoted literal.
std::string gp_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}
}  // namespace

std::vector<std::string> plot_runs(const std::vector<std::string>& run_dirs,
                                   const std::string& out_dir) {
  DSV3_CHECK(!run_dirs.empty(), "plot: no run folder given");
  fs::create_directories(out_dir);
  // One whitespace-separated table per run: step loss val_loss max_vio ("NaN" where absent).
  std::vector<std::string> tables, titles;
  for (const auto& run : run_dirs) {
    const fs::path metrics = fs::path(run) / "metrics.jsonl";
    std::ifstream in(metrics);
    DSV3_CHECK(in.good(), "{}: no metrics.jsonl (is this a dsv3 run folder?)", run);
    const fs::path table = fs::path(out_dir) / (".plot-" + std::to_string(tables.size()) + ".dat");
    std::ofstream out(table);
    std::string line;
    size_t rows = 0;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("step") || j.value("skipped", false)) continue;
      auto num = [&](const char* k) {
        return j.contains(k) && j[k].is_number() ? fmt::format("{}", j[k].get<double>())
                                                 : std::string("NaN");
      };
      out << j["step"].get<int64_t>() << ' ' << num("loss_main") << ' ' << num("val_loss") << ' '
          << num("max_vio") << '\n';
      ++rows;
    }
    DSV3_CHECK(rows > 0, "{}: metrics.jsonl has no steps yet", metrics.string());
    tables.push_back(table.string());
    titles.push_back(fs::path(run).filename().string());
  }
  const std::string loss_png = (fs::path(out_dir) / "loss.png").string();
  const std::string vio_png = (fs::path(out_dir) / "max_vio.png").string();
  std::string script = "set terminal pngcairo size 900,540\nset grid\nset key top right\n";
  script += "set xlabel \"step\"\nset ylabel \"loss\"\nset output " + gp_quote(loss_png) + "\nplot ";
  for (size_t i = 0; i < tables.size(); ++i) {
    if (i) script += ", ";
    script += fmt::format("{} using 1:2 with lines lw 1 title {}, {} using 1:3 with linespoints "
                          "pt 7 ps 0.6 title {}",
                          gp_quote(tables[i]), gp_quote(titles[i] + " train"), gp_quote(tables[i]),
                          gp_quote(titles[i] + " validation"));
  }
  script += "\nset ylabel \"MaxVio (worst layer)\"\nset logscale y\nset output " + gp_quote(vio_png) +
            "\nplot ";
  for (size_t i = 0; i < tables.size(); ++i) {
    if (i) script += ", ";
    script += fmt::format("{} using 1:4 with lines lw 1 title {}", gp_quote(tables[i]),
                          gp_quote(titles[i]));
  }
  script += "\n";
  const fs::path script_path = fs::path(out_dir) / ".plot.gp";
  std::ofstream(script_path) << script;
  const std::string cmd = "gnuplot " + gp_quote(script_path.string()) + " 2>&1";
  std::FILE* p = popen(cmd.c_str(), "r");
  DSV3_CHECK(p != nullptr, "plot: cannot run gnuplot (install gnuplot-nox)");
  std::string output;
  char buf[256];
  while (std::fgets(buf, sizeof buf, p)) output += buf;
  int rc = pclose(p);
  DSV3_CHECK(rc == 0, "plot: gnuplot failed (is gnuplot-nox installed?): {}", output);
  for (const auto& t : tables) fs::remove(t);
  fs::remove(script_path);
  return {loss_png, vio_png};
}

}  // namespace dsv3
