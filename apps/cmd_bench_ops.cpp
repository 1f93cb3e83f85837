// `dsv3 bench ops`: the op-test table in perf mode. Times each fast op against its float64
// reference on a representative shape and prints the achieved GFLOP/s (compute-bound ops) or
// GB/s (data movement) and the speed-up over the reference.
#include <cstdio>
#include <string>

#include "command.h"
#include "core/threads.h"
#include "kernels/op_cases.h"

namespace {
struct Options {
  std::string filter;
  double seconds = 0.1;
  int threads = 0;
};

std::string dims_str(const dsv3::optest::Dims& d) {
  std::string s;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += 'x';  // appended apart: GCC 12 warns falsely (-Wrestrict) on "x" + to_string
    s += std::to_string(d[i]);
  }
  return s;
}

dsv3::app::Registrar reg(
    "bench ops", "Time every fast op against its reference (the op-test table in perf mode)",
    [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      sub.add_option("--filter", o->filter, "Only ops whose name contains this");
      sub.add_option("--seconds", o->seconds, "Minimum time per fast op (default 0.1)");
      dsv3::app::add_threads_option(sub, o->threads);
      return [o]() {
        using namespace dsv3::optest;
        dsv3::set_num_threads(o->threads);
        for (Backend b : available_backends()) {
          if (std::string why = backend_unusable(b); !why.empty()) {
            std::printf("backend %s skipped: %s\n", std::string(backend_name(b)).c_str(),
                        why.c_str());
            continue;
          }
          std::printf("backend %s, %d threads\n", std::string(backend_name(b)).c_str(),
                      dsv3::num_threads());
          std::printf("%-20s %-28s %11s %11s %12s %9s\n", "op", "shape", "fast ms", "ref ms",
                      "fast rate", "speed-up");
          for (const OpCase& c : op_cases()) {
            if (!o->filter.empty() && c.name.find(o->filter) == std::string::npos) continue;
            PerfResult r = run_perf(c, b, o->seconds);
            std::string rate = r.flops > 0
                                   ? fmt::format("{:.1f} GFLOP/s", r.flops / r.fast_s * 1e-9)
                                   : fmt::format("{:.1f} GB/s", r.bytes / r.fast_s * 1e-9);
            std::printf("%-20s %-28s %11.3f %11.3f %12s %8.1fx\n", c.name.c_str(),
                        dims_str(c.bench).c_str(), r.fast_s * 1e3, r.ref_s * 1e3, rate.c_str(),
                        r.ref_s / r.fast_s);
          }
        }
        return 0;
      };
    });
}  // namespace
