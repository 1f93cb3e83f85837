// llamacpp_run: runs a GGUF file (from `dsv3 export --gguf`) in llama.cpp, linked against the
// prebuilt libraries that scripts/setup.d/30-llamacpp.sh fetches. The other side of dsv3's
// llama.cpp parity test and of bench/decode_vs_llamacpp.sh.
//
//   llamacpp_run logits   -m FILE --ids 1,2,3 --out FILE.f32   all positions' logits, float32
//                                                               [positions, vocab], row-major
//   llamacpp_run generate -m FILE --ids 1,2,3 -n N             greedy continuation ids
//   llamacpp_run tokenize -m FILE --text-file FILE              ids of the file's text (no BOS
//                                                               added; added tokens in the text
//                                                               recognised, as in Hugging Face)
//   llamacpp_run bench    -m FILE [--prompt-tokens 128 --new-tokens 64 --repeat 3 --seed 1]
//
// bench uses the definitions of `dsv3 bench decode`: a random prompt (the same ids dsv3 draws for
// the same seed and vocabulary) prefilled in one llama_decode, then greedy batch-1 decoding, end
// of sequence ignored; prefill tokens/s = prompt tokens / (prompt pass + picking the first
// token), decode tokens/s = (new tokens - 1) / the time after the first token. One warm-up run,
// then the median of --repeat runs. Every mode takes --threads T (n_threads = n_threads_batch =
// T), --kv-type f16|bf16|f32 (llama.cpp's cache type, default f16 as llama.cpp's own default)
// and --flash-attn auto|on|off (default auto, llama.cpp's default).
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string mode, model, ids, out, text_file;
  int threads = 2, new_tokens = 64, prompt_tokens = 128, repeat = 3;
  unsigned seed = 1;
  std::string kv_type = "f16", flash_attn = "auto";
  bool verbose = false;
};

[[noreturn]] void usage_error(const std::string& what) {
  throw std::runtime_error(what + " (modes: logits, generate, tokenize, bench; see the source)");
}

Options parse(int argc, char** argv) {
  if (argc < 2) usage_error("no mode given");
  Options o;
  o.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "-m" || a == "--model")
      o.model = value();
    else if (a == "--ids")
      o.ids = value();
    else if (a == "--out")
      o.out = value();
    else if (a == "--text-file")
      o.text_file = value();
    else if (a == "--threads")
      o.threads = std::stoi(value());
    else if (a == "-n" || a == "--new-tokens")
      o.new_tokens = std::stoi(value());
    else if (a == "--prompt-tokens")
      o.prompt_tokens = std::stoi(value());
    else if (a == "--repeat")
      o.repeat = std::stoi(value());
    else if (a == "--seed")
      o.seed = unsigned(std::stoul(value()));
    else if (a == "--kv-type")
      o.kv_type = value();
    else if (a == "--flash-attn")
      o.flash_attn = value();
    else if (a == "--verbose")
      o.verbose = true;
    else
      usage_error("unknown option " + a);
  }
  if (o.model.empty()) usage_error("-m FILE is required");
  if (o.threads < 1) usage_error("--threads must be >= 1");
  return o;
}

std::vector<llama_token> parse_ids(const std::string& text) {
  std::vector<llama_token> ids;
  std::stringstream s(text);
  std::string item;
  while (std::getline(s, item, ','))
    if (!item.empty()) ids.push_back(llama_token(std::stol(item)));
  if (ids.empty()) usage_error("--ids needs a comma-separated list of token ids");
  return ids;
}

void quiet_log(ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

// libggml picks its CPU backend (one libggml-cpu-<generation>.so per CPU generation) at run
// time; they sit beside libggml itself.
void load_backends() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&ggml_backend_load_all_from_path), &info) == 0 ||
      info.dli_fname == nullptr)
    throw std::runtime_error("cannot locate libggml to load its CPU backend");
  const std::string dir = std::filesystem::path(info.dli_fname).parent_path().string();
  ggml_backend_load_all_from_path(dir.c_str());
  if (ggml_backend_reg_count() == 0)
    throw std::runtime_error("no ggml backend could be loaded from " + dir);
}

ggml_type kv_type(const std::string& name) {
  if (name == "f16") return GGML_TYPE_F16;
  if (name == "bf16") return GGML_TYPE_BF16;
  if (name == "f32") return GGML_TYPE_F32;
  usage_error("--kv-type must be f16, bf16 or f32");
}

llama_flash_attn_type flash_attn(const std::string& name) {
  if (name == "auto") return LLAMA_FLASH_ATTN_TYPE_AUTO;
  if (name == "on") return LLAMA_FLASH_ATTN_TYPE_ENABLED;
  if (name == "off") return LLAMA_FLASH_ATTN_TYPE_DISABLED;
  usage_error("--flash-attn must be auto, on or off");
}

// The model and one context with room for `positions` tokens, decoded in one batch.
struct Llama {
  llama_model* model = nullptr;
  llama_context* ctx = nullptr;
  int vocab = 0;

  Llama(const Options& o, int positions) {
    llama_model_params mp = llama_model_default_params();
    model = llama_model_load_from_file(o.model.c_str(), mp);
    if (!model) throw std::runtime_error(o.model + ": llama.cpp could not load the model");
    vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = uint32_t(std::max(positions, 16));
    cp.n_batch = std::max<uint32_t>(cp.n_batch, uint32_t(positions));
    cp.n_ubatch = std::max<uint32_t>(cp.n_ubatch, uint32_t(positions));
    cp.n_threads = o.threads;
    cp.n_threads_batch = o.threads;
    cp.type_k = kv_type(o.kv_type);
    cp.type_v = kv_type(o.kv_type);
    cp.flash_attn_type = flash_attn(o.flash_attn);
    cp.no_perf = true;
    ctx = llama_init_from_model(model, cp);
    if (!ctx) throw std::runtime_error(o.model + ": llama.cpp could not create a context");
  }
  ~Llama() {
    if (ctx) llama_free(ctx);
    if (model) llama_model_free(model);
  }

  void reset() { llama_memory_clear(llama_get_memory(ctx), true); }

  // Runs `ids` at positions pos0.. in one llama_decode; logits for every position or the last.
  void decode(const std::vector<llama_token>& ids, int pos0, bool all_logits) {
    llama_batch b = llama_batch_init(int32_t(ids.size()), 0, 1);
    b.n_tokens = int32_t(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      b.token[i] = ids[i];
      b.pos[i] = llama_pos(pos0 + int(i));
      b.n_seq_id[i] = 1;
      b.seq_id[i][0] = 0;
      b.logits[i] = all_logits || i + 1 == ids.size();
    }
    const int32_t rc = llama_decode(ctx, b);
    llama_batch_free(b);
    if (rc != 0) throw std::runtime_error("llama_decode failed with " + std::to_string(rc));
  }

  int argmax_last() const {
    const float* l = llama_get_logits_ith(ctx, -1);
    return int(std::max_element(l, l + vocab) - l);
  }
};

int run_logits(const Options& o) {
  const std::vector<llama_token> ids = parse_ids(o.ids);
  if (o.out.empty()) usage_error("logits needs --out FILE");
  Llama s(o, int(ids.size()));
  s.decode(ids, 0, true);
  std::ofstream f(o.out, std::ios::binary);
  for (size_t i = 0; i < ids.size(); ++i)
    f.write(reinterpret_cast<const char*>(llama_get_logits_ith(s.ctx, int32_t(i))),
            std::streamsize(sizeof(float)) * s.vocab);
  if (!f.good()) throw std::runtime_error(o.out + ": cannot write the logits");
  std::printf("positions=%zu vocab=%d\n", ids.size(), s.vocab);
  return 0;
}

int run_generate(const Options& o) {
  const std::vector<llama_token> ids = parse_ids(o.ids);
  Llama s(o, int(ids.size()) + o.new_tokens);
  s.decode(ids, 0, false);
  std::vector<llama_token> out{llama_token(s.argmax_last())};
  while (int(out.size()) < o.new_tokens) {
    s.decode({out.back()}, int(ids.size() + out.size()) - 1, false);
    out.push_back(llama_token(s.argmax_last()));
  }
  for (size_t i = 0; i < out.size(); ++i) std::printf(i ? ",%d" : "%d", out[i]);
  std::printf("\n");
  return 0;
}

int run_tokenize(const Options& o) {
  std::ifstream f(o.text_file, std::ios::binary);
  if (!f.good()) usage_error("tokenize needs --text-file FILE");
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  Llama s(o, 16);
  const llama_vocab* v = llama_model_get_vocab(s.model);
  std::vector<llama_token> ids(text.size() + 16);
  int32_t n = llama_tokenize(v, text.data(), int32_t(text.size()), ids.data(), int32_t(ids.size()),
                             false, true);
  if (n < 0) throw std::runtime_error("llama_tokenize failed");
  for (int32_t i = 0; i < n; ++i) std::printf(i ? ",%d" : "%d", ids[size_t(i)]);
  std::printf("\n");
  return 0;
}

int run_bench(const Options& o) {
  if (o.prompt_tokens < 1 || o.new_tokens < 2 || o.repeat < 1)
    usage_error("bench needs --prompt-tokens > 0, --new-tokens > 1, --repeat > 0");
  Llama s(o, o.prompt_tokens + o.new_tokens);
  // The same draw as `dsv3 bench decode --seed`.
  std::mt19937 rng(uint32_t(o.seed));
  std::uniform_int_distribution<int32_t> id(0, s.vocab - 1);
  std::vector<llama_token> prompt(size_t(o.prompt_tokens));
  for (auto& t : prompt) t = id(rng);

  std::vector<double> prefill, decode;
  for (int r = 0; r <= o.repeat; ++r) {
    s.reset();
    auto t0 = Clock::now();
    s.decode(prompt, 0, false);
    llama_token tok = llama_token(s.argmax_last());
    const double prefill_s = std::chrono::duration<double>(Clock::now() - t0).count();
    auto t1 = Clock::now();
    for (int n = 1; n < o.new_tokens; ++n) {
      s.decode({tok}, o.prompt_tokens + n - 1, false);
      tok = llama_token(s.argmax_last());
    }
    const double decode_s = std::chrono::duration<double>(Clock::now() - t1).count();
    if (r == 0) continue;  // warm-up: page in the weights
    prefill.push_back(o.prompt_tokens / prefill_s);
    decode.push_back((o.new_tokens - 1) / decode_s);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("llama.cpp: %s, %d threads, kv %s, flash-attn %s\n", o.model.c_str(), o.threads,
              o.kv_type.c_str(), o.flash_attn.c_str());
  std::printf("system: %s\n", llama_print_system_info());
  std::printf("prompt=%d new=%d prefill tokens/s=%.1f decode tokens/s=%.1f\n", o.prompt_tokens,
              o.new_tokens, median(prefill), median(decode));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    if (!o.verbose) llama_log_set(quiet_log, nullptr);
    load_backends();
    llama_backend_init();
    int rc;
    if (o.mode == "logits")
      rc = run_logits(o);
    else if (o.mode == "generate")
      rc = run_generate(o);
    else if (o.mode == "tokenize")
      rc = run_tokenize(o);
    else if (o.mode == "bench")
      rc = run_bench(o);
    else
      usage_error("unknown mode " + o.mode);
    llama_backend_free();
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llamacpp_run: %s\n", e.what());
    return 1;
  }
}
