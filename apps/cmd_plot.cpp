// `dsv3 plot RUN_DIR...`: loss and MaxVio curves of one or more runs, as PNG.
#include <cstdio>

#include "command.h"
#include "train/plot.h"

namespace {
dsv3::app::Registrar reg("plot", "Plot loss and MaxVio curves of training runs (gnuplot, PNG)",
                         [](CLI::App& sub) {
                           auto runs = std::make_shared<std::vector<std::string>>();
                           auto out = std::make_shared<std::string>();
                           sub.add_option("runs", *runs, "Run folders")->required();
                           sub.add_option("--out", *out, "Output folder (default: the first run)");
                           return [runs, out]() {
                             for (const auto& f :
                                  dsv3::plot_runs(*runs, out->empty() ? runs->front() : *out))
                               std::printf("wrote %s\n", f.c_str());
                             return 0;
                           };
                         });
}  // namespace
