#include "infer/decode_parity.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "infer/engine.h"
#include "model/safetensors.h"

namespace dsv3::infer {

namespace {

double max_rel(const float* got, const Tensor& ref) {
  const Tensor r = ref.dtype() == DType::F32 ? ref : ref.to_f32();
  return dsv3::max_rel(got, r.f32(), size_t(r.numel()));
}

struct DecodeRun {
  std::vector<float> logits;               // [B, T, V]
  std::vector<std::vector<float>> mtp;     // depth -> [B, T, V]
};

// Every sequence token by token through its own cache, then each MTP depth position by
// position over the previous depth's hidden states.
DecodeRun token_by_token(Engine& eng, const Tensor& tokens, DType cache_dtype) {
  const ModelConfig& c = eng.config();
  const int64_t b = tokens.dim(0), t = tokens.dim(1), v = c.vocab_size, d = c.hidden_size;
  const int32_t* tok = tokens.i32();
  DecodeRun out;
  out.logits.resize(size_t(b * t * v));
  out.mtp.resize(size_t(eng.mtp_depths()));
  for (int64_t s = 0; s < b; ++s) {
    LatentCache cache = eng.make_cache(int(t), cache_dtype);
    std::vector<float> h(size_t(t * d));
    for (int64_t i = 0; i < t; ++i) {
      Chunk ch{&cache, tok + s * t + i, 1};
      eng.forward({&ch, 1}, LogitsFor::All);
      std::memcpy(&out.logits[size_t((s * t + i) * v)], eng.logits(), size_t(v) * 4);
      std::memcpy(&h[size_t(i * d)], eng.hidden(), size_t(d) * 4);
    }
    for (int k = 1; k <= eng.mtp_depths(); ++k) {
      auto& m = out.mtp[size_t(k - 1)];
      m.resize(size_t(b * t * v));
      LatentCache mc = eng.make_cache(int(t), cache_dtype, k);
      std::vector<float> next(size_t(t * d));
      for (int64_t i = 0; i < t; ++i) {
        int32_t id = i + k < t ? tok[s * t + i + k] : -1;
        Chunk ch{&mc, &id, 1};
        eng.forward_mtp(k, {&ch, 1}, &h[size_t(i * d)], LogitsFor::All);
        std::memcpy(&m[size_t((s * t + i) * v)], eng.logits(), size_t(v) * 4);
        std::memcpy(&next[size_t(i * d)], eng.hidden(), size_t(d) * 4);
      }
      h.swap(next);
    }
  }
  return out;
}

}  // namespace

void add_decode_parity(const std::string& dir, ParityReport& report, Device device) {
  namespace fs = std::filesystem;
  WeightStore batch = WeightStore::open((fs::path(dir) / "batch.safetensors").string());
  WeightStore expected = WeightStore::open((fs::path(dir) / "expected.safetensors").string());
  if (!expected.has("logits")) return;
  Tensor tokens = batch.get("tokens");
  DSV3_CHECK(tokens.ndim() == 2 && tokens.dtype() == DType::I32,
             "{}: tokens must be [B, T] int32", batch.where());
  const int64_t b = tokens.dim(0), t = tokens.dim(1);
  const Tensor ref = expected.get("logits");
  const std::string prefix = device == Device::CUDA ? "cuda " : "";
  auto add = [&](std::string q, double err, double tol) {
    report.checks.push_back({prefix + q, err, tol, "max-rel", err <= tol});
  };

  struct Mode {
    const char* name;
    Precision precision;
    DType cache;
    double tol;
  };
  for (const Mode& mode : {Mode{"f32", Precision::F32, DType::F32, kDecodeF32Tol},
                           Mode{"bf16", Precision::BF16, DType::BF16, kBf16DecodeTol}}) {
    Engine eng(InferWeights::load(dir, mode.precision), device);
    const ModelConfig& c = eng.config();
    const int64_t v = c.vocab_size;
    DecodeRun run = token_by_token(eng, tokens, mode.cache);
    add(fmt::format("decode[{}].logits (token by token)", mode.name), max_rel(run.logits.data(), ref),
        mode.tol);
    for (int k = 1; k <= eng.mtp_depths(); ++k) {
      std::string name = fmt::format("mtp_logits.{}", k);
      if (expected.has(name))
        add(fmt::format("decode[{}].{} (token by token)", mode.name, name),
            max_rel(run.mtp[size_t(k - 1)].data(), expected.get(name)), mode.tol);
    }
    if (mode.precision != Precision::F32) continue;
    // One-pass prefill of each sequence.
    std::vector<float> got(size_t(b * t * v));
    for (int64_t s = 0; s < b; ++s) {
      LatentCache cache = eng.make_cache(int(t), mode.cache);
      Chunk ch{&cache, tokens.i32() + s * t, int(t)};
      eng.forward({&ch, 1}, LogitsFor::All);
      std::memcpy(&got[size_t(s * t * v)], eng.logits(), size_t(t * v) * 4);
    }
    add(fmt::format("decode[{}].logits (one-pass prefill)", mode.name), max_rel(got.data(), ref),
        mode.tol);
    // All sequences decoded together, one token each per step; then a split prefill (half the
    // prompt in one pass, the rest in a second pass over the cache).
    std::vector<LatentCache> caches;
    for (int64_t s = 0; s < b; ++s) caches.push_back(eng.make_cache(int(t), mode.cache));
    for (int64_t i = 0; i < t; ++i) {
      std::vector<Chunk> chunks;
      for (int64_t s = 0; s < b; ++s) chunks.push_back({&caches[size_t(s)], tokens.i32() + s * t + i, 1});
      eng.forward(chunks, LogitsFor::All);
      for (int64_t s = 0; s < b; ++s)
        std::memcpy(&got[size_t((s * t + i) * v)], eng.logits() + s * v, size_t(v) * 4);
    }
    add(fmt::format("decode[{}].logits (batch of {} decoded together)", mode.name, b),
        max_rel(got.data(), ref), mode.tol);
    for (int64_t s = 0; s < b; ++s) {
      LatentCache cache = eng.make_cache(int(t), mode.cache);
      const int64_t half = t / 2;
      Chunk first{&cache, tokens.i32() + s * t, int(half)};
      eng.forward({&first, 1}, LogitsFor::All);
      std::memcpy(&got[size_t(s * t * v)], eng.logits(), size_t(half * v) * 4);
      Chunk second{&cache, tokens.i32() + s * t + half, int(t - half)};
      eng.forward({&second, 1}, LogitsFor::All);
      std::memcpy(&got[size_t((s * t + half) * v)], eng.logits(), size_t((t - half) * v) * 4);
    }
    add(fmt::format("decode[{}].logits (prefill in two passes)", mode.name), max_rel(got.data(), ref),
        mode.tol);
  }
}

}  // namespace dsv3::infer
