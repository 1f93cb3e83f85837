#pragma once
// Plots of training runs with gnuplot: training and validation loss, and the worst layer's
// MaxVio, one curve per run, as PNG files.
#include <string>
#include <vector>

namespace dsv3 {

// Reads each RUN_DIR/metrics.jsonl and writes loss.png and max_vio.png into out_dir.
// Returns the paths written.
std::vector<std::string> plot_runs(const std::vector<std::string>& run_dirs,
                                   const std::string& out_dir);

}  // namespace dsv3
