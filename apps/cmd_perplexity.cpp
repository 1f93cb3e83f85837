// `dsv3 perplexity -m DIR FILE`: perplexity of a text under the model, in windows of --ctx
// tokens (each window is one prefill pass; every token but a window's first is scored).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

#include "command.h"
#include "infer_common.h"

namespace {
struct Options {
  dsv3::app::ModelOptions model;
  std::string file;
  int ctx = 512;
  bool ids = false;
};

dsv3::app::Registrar reg(
    "perplexity", "Perplexity of a text file under the model", [](CLI::App& sub) {
      auto o = std::make_shared<Options>();
      o->model.add(sub);
      sub.add_option("file", o->file, "Text file (or token ids with --ids)")->required();
      sub.add_option("--ctx", o->ctx, "Window length in tokens (default 512)");
      sub.add_flag("--ids", o->ids, "FILE holds token ids separated by commas or whitespace");
      return [o]() {
        using namespace dsv3;
        std::ifstream in(o->file, std::ios::binary);
        DSV3_CHECK(in.good(), "{}: cannot open", o->file);
        std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        auto weights = o->model.load();
        infer::Engine engine(weights, o->model.device);
        const ModelConfig& c = engine.config();
        std::vector<int32_t> tokens;
        if (o->ids) {
          for (char& ch : content) if (ch == ',') ch = ' ';
          std::istringstream ss(content);
          long v;
          while (ss >> v) tokens.push_back(int32_t(v));
          DSV3_CHECK(ss.eof(), "{}: not a list of integer token ids", o->file);
        } else {
          auto text = infer::TextCodec::open(o->model.model);
          DSV3_CHECK(text != nullptr, "{}: no tokenizer.json; pass token ids with --ids", o->model.model);
          tokens = text->encode(content, text->adds_bos());
        }
        infer::check_token_ids(c, tokens.data(), tokens.size(), o->file.c_str());
        DSV3_CHECK(tokens.size() >= 2, "{}: needs at least 2 tokens, has {}", o->file, tokens.size());
        const int ctx = std::min(o->ctx, c.max_position_embeddings);
        DSV3_CHECK(ctx >= 2, "perplexity: --ctx must be >= 2");
        const int v = c.vocab_size;
        double nll = 0;
        int64_t scored = 0;
        for (size_t begin = 0; begin + 1 < tokens.size(); begin += size_t(ctx)) {
          const int n = int(std::min(tokens.size() - begin, size_t(ctx)));
          if (n < 2) break;
          infer::LatentCache cache = engine.make_cache(n, o->model.cache_dtype());
          infer::Chunk ch{&cache, tokens.data() + begin, n};
          engine.forward({&ch, 1}, infer::LogitsFor::All);
          for (int i = 0; i + 1 < n; ++i) {
            const float* l = engine.logits() + int64_t(i) * v;
            float mx = l[0];
            for (int j = 1; j < v; ++j) mx = std::max(mx, l[j]);
            double sum = 0;
            for (int j = 0; j < v; ++j) sum += std::exp(double(l[j] - mx));
            nll += std::log(sum) + mx - l[tokens[begin + size_t(i) + 1]];
            ++scored;
          }
        }
        std::printf("tokens=%zu scored=%lld ctx=%d nll=%.6f perplexity=%.4f\n", tokens.size(),
                    (long long)scored, ctx, nll / double(scored), std::exp(nll / double(scored)));
        return 0;
      };
    });
}  // namespace
