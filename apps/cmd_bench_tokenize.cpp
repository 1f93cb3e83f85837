// `dsv3 bench tokenize`: tokenizer load time and encode throughput on a corpus of text files,
// single-threaded and batched over OpenMP threads. bench/tokenizer.sh runs it beside Hugging Face
// tokenizers' Node binding on the same files and prints the ratio.
#include <omp.h>

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
    std::vector<int> threads;
  };
  auto opt = std::make_shared<Options>();
  sub.add_option("--tokenizer", opt->tokenizer, "tokenizer.json")->required();
  sub.add_option("--passes", opt->passes, "encode passes over the corpus (the median is reported)");
  sub.add_option("--threads", opt->threads, "thread counts for the batch mode (default 1..cores)");
  sub.add_option("files", opt->files, "text files, one document each")->required();
  return [opt]() {
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
    std::vector<double> rates;
    size_t tokens = 0;
    for (int pass = 0; pass < opt->passes; ++pass) {
      tokens = 0;
      auto start = Clock::now();
      for (auto doc : views) tokens += tok.encode(doc).size();
      double s = seconds_since(start);
      rates.push_back(bytes / 1e6 / s);
      std::printf("single-thread pass %d: %.3f s, %.2f MB/s%s\n", pass + 1, s, rates.back(),
                  pass == 0 ? " (cold piece cache)" : "");
    }
    std::sort(rates.begin(), rates.end());
    std::printf("tokens: %zu (%.2f bytes/token)\n", tokens, double(bytes) / tokens);
    std::printf("dsv3 single-thread MB/s: %.2f\n", rates[rates.size() / 2]);

    std::vector<int> counts = opt->threads;
    if (counts.empty())
      for (int t = 1; t <= omp_get_num_procs(); t *= 2) counts.push_back(t);
    for (int t : counts) {
      omp_set_num_threads(t);
      double best = 0;
      for (int pass = 0; pass < opt->passes; ++pass) {
        auto start = Clock::now();
        auto ids = tok.encode_batch(views);
        best = std::max(best, bytes / 1e6 / seconds_since(start));
      }
      std::printf("dsv3 batch threads=%d MB/s: %.2f\n", t, best);
    }
    return 0;
  };
});

}  // namespace
