// `dsv3 prepare`: tokenize text into train/validation token shards (docs/data.md).
//   dsv3 prepare --tokenizer tokenizer.json --out data/ [--val-fraction 0.02] [--delimiter STR]
//                [--seed S] [--ext txt] [--skip-invalid] [--force] INPUTS...
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "train/data/prepare.h"

namespace {

// "\n", "\t", "\r", "\\" in a delimiter given on the command line stand for the characters.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    char c = s[++i];
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      default: dsv3::fail("--delimiter: unknown escape \\{} (use \\n, \\t, \\r or \\\\)", c);
    }
  }
  return out;
}

dsv3::app::Registrar prepare("prepare", "Tokenize text files into train/validation token shards", [](CLI::App& sub) {
  auto opt = std::make_shared<dsv3::PrepareOptions>();
  auto delimiter = std::make_shared<std::string>();
  auto quiet = std::make_shared<bool>(false);
  sub.add_option("--tokenizer", opt->tokenizer_path, "tokenizer.json (tokenizer_config.json beside it is read too)")
      ->required();
  sub.add_option("--out", opt->out_dir, "output folder for the shards and manifest.json")->required();
  sub.add_option("--val-fraction", opt->val_fraction, "share of documents held out for validation")
      ->capture_default_str();
  sub.add_option("--delimiter", *delimiter,
                 "split files into documents at this string (\\n, \\t, \\r, \\\\ escapes); default: a document per file");
  sub.add_option("--seed", opt->seed, "seed of the train/validation split")->capture_default_str();
  sub.add_option("--ext", opt->extensions, "in folders, only files with this extension (repeatable), e.g. txt");
  sub.add_option("--shard-tokens", opt->shard_tokens, "tokens per shard file")->capture_default_str();
  sub.add_flag("--skip-invalid", opt->skip_invalid, "skip empty, binary or non-UTF-8 files with a warning");
  sub.add_flag("--force", opt->force, "replace prepared data already in --out");
  sub.add_flag("--quiet", *quiet, "no progress line");
  sub.add_option("inputs", opt->inputs, "text files and folders (searched recursively)")->required();
  return [opt, delimiter, quiet]() {
    opt->delimiter = unescape(*delimiter);
    opt->progress = !*quiet && ::isatty(STDERR_FILENO);
    dsv3::PrepareSummary s = dsv3::prepare_dataset(*opt);
    std::printf(
        "prepare: %lld files (%lld skipped), %.1f MB -> train %lld documents / %lld tokens, validation %lld documents "
        "/ %lld tokens, %lld shards in %s (%.2f s, %.1f MB/s)\n",
        static_cast<long long>(s.files), static_cast<long long>(s.skipped_files), s.bytes / 1e6,
        static_cast<long long>(s.documents[0]), static_cast<long long>(s.tokens[0]),
        static_cast<long long>(s.documents[1]), static_cast<long long>(s.tokens[1]),
        static_cast<long long>(s.shards), opt->out_dir.c_str(), s.seconds, s.seconds > 0 ? s.bytes / 1e6 / s.seconds : 0.0);
    return 0;
  };
});

}  // namespace
