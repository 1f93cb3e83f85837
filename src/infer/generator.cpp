#include "infer/generator.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace dsv3::infer {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Appends emitted tokens, tells the caller, and decides when generation ends.
struct Emitter {
  const GenerateOptions& o;
  const TokenCallback& cb;
  GenerateStats& st;
  std::vector<int32_t>& history;  // prompt + generated
  std::vector<int32_t> out;
  bool done = false;

  // Returns false once generation is over (this token included).
  bool emit(int32_t id) {
    if (done) return false;
    out.push_back(id);
    history.push_back(id);
    st.new_tokens++;
    if (cb && !cb(id)) {
      st.finish_reason = "stop";
      done = true;
    } else if (std::find(o.eos_ids.begin(), o.eos_ids.end(), id) != o.eos_ids.end()) {
      st.finish_reason = "eos";
      done = true;
    } else if (int(out.size()) >= o.max_new_tokens) {
      st.finish_reason = "length";
      done = true;
    }
    return !done;
  }
};

void check_request(const Engine& e, std::span<const int32_t> prompt, const GenerateOptions& o) {
  const ModelConfig& c = e.config();
  DSV3_CHECK(!prompt.empty(), "generate: the prompt is empty");
  DSV3_CHECK(o.max_new_tokens >= 1, "generate: max new tokens must be >= 1, got {}",
             o.max_new_tokens);
  check_token_ids(c, prompt.data(), prompt.size(), "prompt");
  const int64_t need = int64_t(prompt.size()) + o.max_new_tokens + (o.speculative_mtp ? 1 : 0);
  DSV3_CHECK(int64_t(prompt.size()) < c.max_position_embeddings,
             "the prompt has {} tokens but the context holds {} (max_position_embeddings)",
             prompt.size(), c.max_position_embeddings);
  DSV3_CHECK(need <= c.max_position_embeddings,
             "prompt ({} tokens) plus {} new tokens exceeds the context of {} positions "
             "(max_position_embeddings); ask for at most {} new tokens",
             prompt.size(), o.max_new_tokens, c.max_position_embeddings,
             c.max_position_embeddings - int64_t(prompt.size()) - (o.speculative_mtp ? 1 : 0));
  o.sampling.validate();
}
}  // namespace

std::pair<int32_t, bool> speculative_choice(std::vector<float>& p, const std::vector<float>& q,
                                            int32_t draft, Sampler& sampler) {
  const double ratio = q[size_t(draft)] > 0 ? double(p[size_t(draft)]) / q[size_t(draft)] : 0.0;
  if (sampler.uniform() < std::min(1.0, ratio)) return {draft, true};
  std::vector<float> residual(p.size());
  double mass = 0;
  for (size_t i = 0; i < p.size(); ++i) mass += (residual[i] = std::max(0.0f, p[i] - q[i]));
  // p == q leaves nothing to correct (and then rejection has probability 0): draw from p.
  return {sampler.draw(mass > 0 ? residual : p), false};
}

double GenerateStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0;
}
double GenerateStats::decode_tokens_per_second() const {
  return decode_seconds > 0 && new_tokens > 1 ? (new_tokens - 1) / decode_seconds : 0;
}

std::vector<int32_t> Generator::generate(std::span<const int32_t> prompt,
                                         const GenerateOptions& o, const TokenCallback& cb,
                                         GenerateStats* stats) {
  check_request(engine_, prompt, o);
  GenerateStats local;
  GenerateStats& st = stats ? *stats : local;
  st = GenerateStats{};
  st.prompt_tokens = int(prompt.size());
  if (o.speculative_mtp) {
    DSV3_CHECK(engine_.mtp_depths() >= 1,
               "--speculative mtp needs MTP weights, but the model has none "
               "(num_nextn_predict_layers = 0 or no model.layers.{}.eh_proj.weight)",
               engine_.config().num_hidden_layers);
    return speculative(prompt, o, cb, st);
  }
  return plain(prompt, o, cb, st);
}

std::vector<int32_t> Generator::plain(std::span<const int32_t> prompt, const GenerateOptions& o,
                                      const TokenCallback& cb, GenerateStats& st) {
  const int v = engine_.config().vocab_size;
  LatentCache cache = engine_.make_cache(int(prompt.size()) + o.max_new_tokens, o.cache_dtype);
  st.cache_bytes = cache.bytes();
  Sampler sampler(o.sampling, v);
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  Emitter em{o, cb, st, history, {}};
  auto t0 = Clock::now();
  Chunk ch{&cache, prompt.data(), int(prompt.size())};
  engine_.forward({&ch, 1}, LogitsFor::Last);
  int32_t tok = sampler.sample(engine_.logits(), history);
  st.prefill_seconds = seconds_since(t0);
  auto t1 = Clock::now();
  while (em.emit(tok)) {
    Chunk step{&cache, &tok, 1};
    engine_.forward({&step, 1}, LogitsFor::Last);
    st.passes++;
    tok = sampler.sample(engine_.logits(), history);
  }
  st.decode_seconds = seconds_since(t1);
  return em.out;
}

std::vector<int32_t> Generator::speculative(std::span<const int32_t> prompt,
                                            const GenerateOptions& o, const TokenCallback& cb,
                                            GenerateStats& st) {
  const ModelConfig& c = engine_.config();
  const int v = c.vocab_size;
  const int64_t d = c.hidden_size;
  const int p = int(prompt.size());
  const int capacity = p + o.max_new_tokens + 1;
  LatentCache cache = engine_.make_cache(capacity, o.cache_dtype);
  LatentCache draft_cache = engine_.make_cache(capacity, o.cache_dtype, 1);
  st.cache_bytes = cache.bytes() + draft_cache.bytes();
  Sampler sampler(o.sampling, v);
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  Emitter em{o, cb, st, history, {}};
  std::vector<float> hidden, p_dist, q_dist, main_logits;

  auto t0 = Clock::now();
  Chunk ch{&cache, prompt.data(), p};
  engine_.forward({&ch, 1}, LogitsFor::Last);
  hidden.assign(engine_.hidden(), engine_.hidden() + p * d);
  int32_t tok = sampler.sample(engine_.logits(), history);
  st.prefill_seconds = seconds_since(t0);
  auto t1 = Clock::now();
  if (!em.emit(tok)) return em.out;

  // MTP over the prompt: position i gets (h_i, t_{i+1}); its last row drafts the token after tok.
  std::vector<int32_t> ids(prompt.begin() + 1, prompt.end());
  ids.push_back(tok);
  Chunk dch{&draft_cache, ids.data(), p};
  engine_.forward_mtp(1, {&dch, 1}, hidden.data(), LogitsFor::Last);
  while (true) {
    // Draft from the MTP logits of the last row.
    sampler.distribution(engine_.logits(), history, q_dist);
    const int32_t draft = o.sampling.greedy() ? argmax(q_dist.data(), v) : sampler.draw(q_dist);
    st.drafted++;
    // Verify [tok, draft] in one pass.
    int32_t pair[2] = {tok, draft};
    Chunk vch{&cache, pair, 2};
    engine_.forward({&vch, 1}, LogitsFor::All);
    st.passes++;
    main_logits.assign(engine_.logits(), engine_.logits() + 2 * int64_t(v));
    hidden.assign(engine_.hidden(), engine_.hidden() + 2 * d);
    int32_t next;  // the main model's token at the draft's position
    bool accepted;
    if (o.sampling.greedy()) {
      next = sampler.sample(main_logits.data(), history);
      accepted = next == draft;
    } else {
      sampler.distribution(main_logits.data(), history, p_dist);
      auto [token, kept] = speculative_choice(p_dist, q_dist, draft, sampler);
      next = token;
      accepted = kept;
    }
    if (accepted) {
      st.accepted++;
      if (!em.emit(draft)) break;
      const int32_t bonus = sampler.sample(main_logits.data() + v, history);
      if (!em.emit(bonus)) break;
      int32_t mtp_ids[2] = {draft, bonus};
      Chunk m2{&draft_cache, mtp_ids, 2};
      engine_.forward_mtp(1, {&m2, 1}, hidden.data(), LogitsFor::Last);
      tok = bonus;
    } else {
      cache.truncate(cache.len() - 1);  // forget the rejected draft's position
      if (!em.emit(next)) break;
      Chunk m1{&draft_cache, &next, 1};
      engine_.forward_mtp(1, {&m1, 1}, hidden.data(), LogitsFor::Last);
      tok = next;
    }
  }
  st.decode_seconds = seconds_since(t1);
  return em.out;
}

std::vector<std::vector<int32_t>> Generator::generate_batch(
    const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o,
    GenerateStats* stats) {
  DSV3_CHECK(!prompts.empty(), "generate: no prompts");
  DSV3_CHECK(!o.speculative_mtp, "generate: speculative decoding runs one sequence at a time");
  const int v = engine_.config().vocab_size;
  const size_t b = prompts.size();
  std::vector<LatentCache> caches;
  std::vector<Sampler> samplers;
  std::vector<std::vector<int32_t>> history(b), out(b);
  std::vector<bool> done(b, false);
  GenerateStats local;
  GenerateStats& st = stats ? *stats : local;
  st = GenerateStats{};
  for (size_t i = 0; i < b; ++i) {
    check_request(engine_, prompts[i], o);
    caches.push_back(engine_.make_cache(int(prompts[i].size()) + o.max_new_tokens, o.cache_dtype));
    SamplingParams sp = o.sampling;
    sp.seed += i;
    samplers.emplace_back(sp, v);
    history[i] = prompts[i];
    st.prompt_tokens += int(prompts[i].size());
    st.cache_bytes += caches.back().bytes();
  }
  auto t0 = Clock::now();
  std::vector<Chunk> chunks;
  std::vector<int32_t> next(b);
  auto take = [&](const std::vector<size_t>& active) {
    for (size_t j = 0; j < active.size(); ++j) {
      const size_t i = active[j];
      const int32_t t = samplers[i].sample(engine_.logits() + j * int64_t(v), history[i]);
      out[i].push_back(t);
      history[i].push_back(t);
      st.new_tokens++;
      next[i] = t;
      if (int(out[i].size()) >= o.max_new_tokens ||
          std::find(o.eos_ids.begin(), o.eos_ids.end(), t) != o.eos_ids.end())
        done[i] = true;
    }
  };
  // Each prompt is prefilled in its own pass: its arithmetic is then exactly that of the prompt
  // decoded alone (a pass of more than kSmallRows rows in all would take the BF16 GEMM).
  std::vector<size_t> active;
  for (size_t i = 0; i < b; ++i) {
    Chunk ch{&caches[i], prompts[i].data(), int(prompts[i].size())};
    engine_.forward({&ch, 1}, LogitsFor::Last);
    take({i});
  }
  st.prefill_seconds = seconds_since(t0);
  auto t1 = Clock::now();
  while (true) {
    active.clear();
    chunks.clear();
    for (size_t i = 0; i < b; ++i)
      if (!done[i]) {
        active.push_back(i);
        chunks.push_back({&caches[i], &next[i], 1});
      }
    if (active.empty()) break;
    engine_.forward(chunks, LogitsFor::Last);
    st.passes++;
    take(active);
  }
  st.decode_seconds = seconds_since(t1);
  st.finish_reason = "length";
  return out;
}

std::string StopStrings::push(const std::string& text) {
  if (stopped_) return "";
  held_ += text;
  for (const std::string& s : stops_) {
    if (s.empty()) continue;
    size_t at = held_.find(s);
    if (at != std::string::npos) {
      stopped_ = true;
      std::string out = held_.substr(0, at);
      held_.clear();
      return out;
    }
  }
  // Hold back the longest tail that is a prefix of some stop string.
  size_t keep = 0;
  for (const std::string& s : stops_)
    for (size_t len = std::min(s.size() - (s.empty() ? 0 : 1), held_.size()); len > keep; --len)
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        keep = len;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopStrings::finish() {
  std::string out;
  out.swap(held_);
  return stopped_ ? "" : out;
}

}  // namespace dsv3::infer
