#include "tokenizer/trainer.h"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok {

using ojson = nlohmann::ordered_json;

const std::vector<std::string>& default_special_tokens() {
  static const std::vector<std::string> tokens = {kBosToken,     kEosToken,      kPadToken,
                                                  kFimHoleToken, kFimBeginToken, kFimEndToken};
  return tokens;
}

ojson deepseek_pre_tokenizer() {
  auto split = [](const char* regex) {
    return ojson{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
  };
  return {{"type", "Sequence"},
          {"pretokenizers",
           {split(R"(\p{N}{1,3})"), split("[一-龥\u3040-ゟ゠-ヿ]+"),
            split("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
                  "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
}

namespace {

using WordCounts = std::unordered_map<std::string, int64_t>;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

WordCounts count_words(const std::vector<std::string>& files) {
  PreTokenizer pre_tokenizer = PreTokenizer::from_json(deepseek_pre_tokenizer());
  std::vector<WordCounts> per_thread(static_cast<size_t>(omp_get_max_threads()));
  std::vector<std::string> errors(files.size());
  const long count = static_cast<long>(files.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (long f = 0; f < count; ++f) {
    try {
      std::string text = read_file(files[f]);
      size_t bad = find_invalid_utf8(text);
      if (bad != std::string_view::npos) fail("{}: not valid UTF-8 at byte offset {}", files[f], bad);
      std::vector<Span> pieces, scratch;
      pre_tokenizer.split(text, pieces, scratch);
      WordCounts& counts = per_thread[static_cast<size_t>(omp_get_thread_num())];
      for (Span p : pieces) ++counts[text.substr(p.begin, p.end - p.begin)];
    } catch (const std::exception& e) {
      errors[f] = e.what();  // exceptions must not leave an OpenMP region
    }
  }
  for (const auto& e : errors)
    if (!e.empty()) throw Error(e);
  WordCounts total = std::move(per_thread[0]);
  for (size_t t = 1; t < per_thread.size(); ++t)
    for (auto& [w, c] : per_thread[t]) total[w] += c;
  return total;
}

uint64_t pair_key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

// The merge loop over distinct words. Pair counts are kept exact; the heap holds (count, pair)
// snapshots and stale ones are skipped when popped.
class MergeLearner {
 public:
  MergeLearner(const WordCounts& counts, uint32_t first_byte_id) {
    words_.reserve(counts.size());
    for (const auto& [word, count] : counts) {
      std::vector<uint32_t> symbols;
      for (char c : word) symbols.push_back(first_byte_id + static_cast<uint8_t>(c));
      words_.push_back({std::move(symbols), count});
    }
    // Deterministic order whatever the hash map's iteration order was.
    std::sort(words_.begin(), words_.end(), [](const Word& a, const Word& b) { return a.symbols < b.symbols; });
    for (uint32_t w = 0; w < words_.size(); ++w) add_pairs(w, +1);
    for (const auto& [pair, count] : pair_counts_) heap_.push({count, ~pair});
  }

  // The most frequent pair (ties: the smallest ids), or false when no pair occurs any more.
  bool best_pair(uint32_t* a, uint32_t* b) {
    while (!heap_.empty()) {
      auto [count, inverted] = heap_.top();
      uint64_t pair = ~inverted;
      heap_.pop();
      auto it = pair_counts_.find(pair);
      int64_t current = it == pair_counts_.end() ? 0 : it->second;
      if (current != count) {
        if (current > 0) heap_.push({current, inverted});
        continue;
      }
      if (count <= 0) return false;
      *a = static_cast<uint32_t>(pair >> 32);
      *b = static_cast<uint32_t>(pair);
      return true;
    }
    return false;
  }

  // Replaces every (a, b) with `merged` in the words that contain it.
  void apply(uint32_t a, uint32_t b, uint32_t merged) {
    uint64_t key = pair_key(a, b);
    std::vector<uint32_t> affected = std::move(pair_words_[key]);
    pair_words_.erase(key);
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    for (uint32_t w : affected) {
      std::vector<uint32_t>& s = words_[w].symbols;
      bool present = false;
      for (size_t i = 0; i + 1 < s.size() && !present; ++i) present = s[i] == a && s[i + 1] == b;
      if (!present) continue;
      add_pairs(w, -1);
      std::vector<uint32_t> next;
      next.reserve(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          next.push_back(merged);
          ++i;
        } else {
          next.push_back(s[i]);
        }
      }
      s = std::move(next);
      add_pairs(w, +1);
    }
    for (uint64_t pair : touched_) {
      auto it = pair_counts_.find(pair);
      if (it != pair_counts_.end() && it->second > 0) heap_.push({it->second, ~pair});
    }
    touched_.clear();
  }

 private:
  struct Word {
    std::vector<uint32_t> symbols;
    int64_t count;
  };

  void add_pairs(uint32_t w, int sign) {
    const Word& word = words_[w];
    for (size_t i = 0; i + 1 < word.symbols.size(); ++i) {
      uint64_t key = pair_key(word.symbols[i], word.symbols[i + 1]);
      int64_t& c = pair_counts_[key];
      c += sign * word.count;
      if (sign > 0) {
        pair_words_[key].push_back(w);
        touched_.push_back(key);
      } else if (c == 0) {
        pair_counts_.erase(key);
      }
    }
  }

  std::vector<Word> words_;
  std::unordered_map<uint64_t, int64_t> pair_counts_;
  std::unordered_map<uint64_t, std::vector<uint32_t>> pair_words_;
  // Max-heap on count; the pair is stored inverted so that equal counts pop the smallest pair.
  std::priority_queue<std::pair<int64_t, uint64_t>> heap_;
  std::vector<uint64_t> touched_;
};

}  // namespace

TrainedTokenizer train_bpe(const std::vector<std::string>& files, const TrainerOptions& options) {
  if (files.empty()) fail("tokenizer train: no input files");
  const size_t specials = options.special_tokens.size();
  if (options.vocab_size < specials + 256)
    fail("tokenizer train: --vocab {} is below the {} special tokens + 256 bytes", options.vocab_size, specials);

  WordCounts counts = count_words(files);
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::get();

  // Ids: special tokens, then the 256 byte symbols, then one per new merged string.
  std::vector<std::string> id_to_token;
  std::unordered_map<std::string, uint32_t> token_to_id;
  auto add_token = [&](const std::string& token) {
    auto [it, inserted] = token_to_id.emplace(token, static_cast<uint32_t>(id_to_token.size()));
    if (inserted) id_to_token.push_back(token);
    return it->second;
  };
  for (const auto& s : options.special_tokens) {
    if (token_to_id.count(s)) fail("tokenizer train: special token \"{}\" given twice", s);
    add_token(s);
  }
  const uint32_t first_byte_id = static_cast<uint32_t>(id_to_token.size());
  for (int b = 0; b < 256; ++b) {
    char byte = static_cast<char>(b);
    if (token_to_id.count(alphabet.encode(std::string_view(&byte, 1))))
      fail("tokenizer train: a special token collides with a byte symbol");
    add_token(alphabet.encode(std::string_view(&byte, 1)));
  }

  MergeLearner learner(counts, first_byte_id);
  ojson merges = ojson::array();
  uint32_t a = 0, b = 0;
  while (id_to_token.size() < options.vocab_size && learner.best_pair(&a, &b)) {
    // A merge can spell a string that an earlier merge made: it then reuses that id.
    uint32_t merged = add_token(id_to_token[a] + id_to_token[b]);
    merges.push_back({id_to_token[a], id_to_token[b]});
    learner.apply(a, b, merged);
    if (options.verbose && merges.size() % 500 == 0)
      std::fprintf(stderr, "tokenizer train: %zu merges, vocab %zu\n", merges.size(), id_to_token.size());
  }

  TrainedTokenizer result;
  result.merges = merges.size();
  ojson added = ojson::array();
  for (size_t i = 0; i < specials; ++i)
    added.push_back({{"id", i}, {"content", options.special_tokens[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  ojson vocab = ojson::object();
  for (size_t id = 0; id < id_to_token.size(); ++id) vocab[id_to_token[id]] = id;
  result.tokenizer = {{"version", "1.0"},
                      {"truncation", nullptr},
                      {"padding", nullptr},
                      {"added_tokens", added},
                      {"normalizer", nullptr},
                      {"pre_tokenizer", deepseek_pre_tokenizer()},
                      {"post_processor", nullptr},
                      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
                      {"model",
                       {{"type", "BPE"},
                        {"dropout", nullptr},
                        {"unk_token", nullptr},
                        {"continuing_subword_prefix", nullptr},
                        {"end_of_word_suffix", nullptr},
                        {"fuse_unk", false},
                        {"byte_fallback", false},
                        {"ignore_merges", false},
                        {"vocab", vocab},
                        {"merges", merges}}}};
  result.config = {{"add_bos_token", true},
                   {"add_eos_token", false},
                   {"bos_token", kBosToken},
                   {"eos_token", kEosToken},
                   {"pad_token", kPadToken},
                   {"unk_token", nullptr},
                   {"clean_up_tokenization_spaces", false},
                   {"model_max_length", 131072},
                   {"tokenizer_class", "PreTrainedTokenizerFast"}};
  if (!options.chat_template.empty()) result.config["chat_template"] = options.chat_template;
  return result;
}

void write_trained(const TrainedTokenizer& trained, const std::string& path) {
  auto write = [](const std::filesystem::path& p, const ojson& j) {
    std::ofstream out(p, std::ios::binary);
    if (!out) fail("{}: cannot write", p.string());
    out << j.dump(2, ' ', false) << "\n";
    if (!out) fail("{}: write failed", p.string());
  };
  std::filesystem::path file(path);
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
  write(file, trained.tokenizer);
  write(file.parent_path() / "tokenizer_config.json", trained.config);
}

}  // namespace dsv3::tok
