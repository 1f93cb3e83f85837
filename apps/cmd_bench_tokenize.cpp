// `dsv3 bench tokenize`: tokenizer load time and encode throughput on a corpus of text files,
// single-threaded and batched over OpenMP threads. bench/tokenizer.sh runs it beside Hugging Face
// tokenizers' Node binding on the same files and prints the ratio.
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "command.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// CPU time of this process: on a shared machine it shows the cost of the work itself, while wall
// time also counts the time other processes held the cores.
double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) dsv3::fail("{}: cannot open", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

dsv3::app::Registrar reg("bench tokenize", "Tokenizer load time and encode throughput on text files",
                         [](CLI::App& sub) {
  struct Options {
    std::string tokenizer;
    std::vector<std::string> files;
    int passes = 3;
    std::string thread_list;
  };
  auto opt = std::make_shared<Options>();
  sub.add_option("--tokenizer", opt->tokenizer, "tokenizer.json")->required();
  sub.add_option("--passes", opt->passes, "encode passes over the corpus (the median is reported)")
      ->check(dsv3::app::at_least(1));
  sub.add_option("--threads", opt->thread_list, "thread counts for the batch mode, comma-separated (default 1,2,4,.. cores)");
  sub.add_option("files", opt->files, "text files, one document each")->required();
  return [opt]() {
    // The batch mode's thread counts, checked before anything runs.
    constexpr int64_t kMostThreads = 1 << 16;
    std::vector<int> counts;
    if (!opt->thread_list.empty())
      for (int64_t n : dsv3::app::parse_int_list("--threads", opt->thread_list, 1, kMostThreads))
        counts.push_back(int(n));
    if (counts.empty())
      for (int t = 1; t <= omp_get_num_procs(); t *= 2) counts.push_back(t);

    auto load_start = Clock::now();
    auto tok = dsv3::tok::Tokenizer::load(opt->tokenizer);
    double load_s = seconds_since(load_start);

    std::vector<std::string> docs;
    size_t bytes = 0;
    for (const auto& f : opt->files) {
      docs.push_back(read_file(f));
      bytes += docs.back().size();
    }
    std::vector<std::string_view> views(docs.begin(), docs.end());
    std::printf("corpus: %zu files, %.2f MB\n", docs.size(), bytes / 1e6);
    std::printf("load: %.3f s\n", load_s);

    // Single-threaded: one encode call per document, the way the baseline is timed.
    std::vector<double> rates, cpu_rates;
    size_t tokens = 0;
    for (int pass = 0; pass < opt->passes; ++pass) {
      tokens = 0;
      auto start = Clock::now();
      double cpu_start = cpu_seconds();
      for (auto doc : views) tokens += tok.encode(doc).size();
      double s = seconds_since(start), cpu = cpu_seconds() - cpu_start;
      rates.push_back(bytes / 1e6 / s);
      cpu_rates.push_back(bytes / 1e6 / cpu);
      std::printf("single-thread pass %d: %.3f s, %.2f MB/s (CPU time %.3f s, %.2f MB/s)%s\n", pass + 1, s,
                  rates.back(), cpu, cpu_rates.back(), pass == 0 ? " (cold piece cache)" : "");
    }
    std::sort(rates.begin(), rates.end());
    std::sort(cpu_rates.begin(), cpu_rates.end());
    std::printf("tokens: %zu (%.2f bytes/token)\n", tokens, double(bytes) / tokens);
    std::printf("dsv3 single-thread MB/s: %.2f\n", rates[rates.size() / 2]);
    std::printf("dsv3 single-thread CPU-time MB/s: %.2f\n", cpu_rates[cpu_rates.size() / 2]);

    // Batch mode. Besides wall-clock MB/s, bytes per CPU-second over all threads: if that holds
    // steady as threads are added, the threads do not slow each other down (no locks, no false
    // sharing), so wall time scales with the cores that are actually free.
    for (int t : counts) {
      omp_set_num_threads(t);
      double best = 0, best_cpu = 0;
      for (int pass = 0; pass < opt->passes; ++pass) {
        auto start = Clock::now();
        double cpu_start = cpu_seconds();
        auto ids = tok.encode_batch(views);
        best = std::max(best, bytes / 1e6 / seconds_since(start));
        best_cpu = std::max(best_cpu, bytes / 1e6 / (cpu_seconds() - cpu_start));
      }
      std::printf("dsv3 batch threads=%d MB/s: %.2f (per CPU-second: %.2f MB)\n", t, best, best_cpu);
    }
    return 0;
  };
});

}  // namespace
