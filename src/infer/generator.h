#pragma once
// Generation loops over the engine: plain decoding, MTP speculative decoding, and a batch of
// sequences decoded together. Token ids in, token ids out; text lives in the caller (the
// tokenizer plugs in through infer/text.h).
//
// MTP speculative decoding (depth 1): after the main model accepts token t at position p, the
// MTP module, fed the main model's hidden state h_p and Emb(t), drafts the token after t. The
// main model then runs [t, draft] in one pass. Under greedy decoding the draft is kept when it
// equals the main model's arg-max at p (the output is identical to plain decoding); under
// sampling it is kept with probability min(1, p(draft) / q(draft)), else a token is drawn from
// normalize(max(0, p - q)) (speculative sampling: the output distribution is the main model's).
// A kept draft also yields the main model's next token from the second row (two tokens for one
// pass); a rejected one rolls the caches back by one position.
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "infer/engine.h"
#include "infer/sampling.h"

namespace dsv3::infer {

struct GenerateOptions {
  SamplingParams sampling;
  int max_new_tokens = 128;
  std::vector<int32_t> eos_ids;  // generation stops after emitting one of these
  bool speculative_mtp = false;
  DType cache_dtype = DType::BF16;
};

struct GenerateStats {
  int prompt_tokens = 0;
  int new_tokens = 0;
  double prefill_seconds = 0;  // the prompt pass and the first token
  double decode_seconds = 0;   // everything after the first token
  int passes = 0;              // main-model passes after the prompt
  int drafted = 0, accepted = 0;  // speculative decoding
  std::string finish_reason;   // "length", "eos", "stop" (the callback asked to stop)
  size_t cache_bytes = 0;
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;  // tokens after the first / decode time
};

// Called for each new token; returning false stops generation.
using TokenCallback = std::function<bool(int32_t)>;

class Generator {
 public:
  explicit Generator(Engine& engine) : engine_(engine) {}

  std::vector<int32_t> generate(std::span<const int32_t> prompt, const GenerateOptions& options,
                                const TokenCallback& on_token = nullptr,
                                GenerateStats* stats = nullptr);

  // Several prompts decoded together (each with its own cache, position and sampler seeded with
  // seed + index). Each prompt is prefilled in its own pass; the decode steps run all live
  // sequences in one pass. Up to kSmallRows sequences, each gets exactly the tokens it gets
  // alone. Returns each sequence's new tokens.
  std::vector<std::vector<int32_t>> generate_batch(
      const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& options,
      GenerateStats* stats = nullptr);

 private:
  std::vector<int32_t> plain(std::span<const int32_t> prompt, const GenerateOptions& o,
                             const TokenCallback& cb, GenerateStats& st);
  std::vector<int32_t> speculative(std::span<const int32_t> prompt, const GenerateOptions& o,
                                   const TokenCallback& cb, GenerateStats& st);
  Engine& engine_;
};

// The speculative-sampling rule for one drafted token: `draft` was drawn from q; keep it with
// probability min(1, p(draft) / q(draft)), else draw from normalize(max(0, p - q)). The result
// is distributed as p. Returns the token and whether it is the draft.
std::pair<int32_t, bool> speculative_choice(std::vector<float>& p, const std::vector<float>& q,
                                            int32_t draft, Sampler& sampler);

// Stop strings over streamed text: push() returns the text that is safe to show (text that
// could still turn into a stop string is held back); once a stop string appears, stopped() is
// true and the text up to it has been returned.
class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  std::string push(const std::string& text);
  std::string finish();  // whatever is held back (when generation ends without a stop)
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace dsv3::infer
