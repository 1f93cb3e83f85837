#pragma once
// The inference forward pass over the latent cache. One call runs a batch of sequence chunks:
// each chunk is n new tokens of one sequence, at positions cache.len() .. cache.len() + n - 1.
// Prefill is one chunk with the whole prompt, decode a chunk of one token, speculative
// verification a chunk of 1 + draft tokens, and a batch several chunks at once: all rows go
// through the projections and experts together, attention runs per chunk over its own cache.
//
// Attention is the absorbed MLA form (DESIGN.md section 2) for every chunk size: the query's
// no-rope part is multiplied by W_uk (kv_b_proj's key rows) into the latent space, scores are
// taken against the cached [RMSNorm_kv(c_kv) | k_pe], and the probability-weighted latent is
// multiplied by W_uv (kv_b_proj's value rows). Nothing but the latent cache is kept per token.
#include <memory>
#include <span>
#include <vector>

#include "infer/kv_cache.h"
#include "infer/weights.h"
#include "model/rope.h"

namespace dsv3::infer {

struct Chunk {
  LatentCache* cache = nullptr;
  const int32_t* tokens = nullptr;  // n ids (for MTP: the ids t_{i+k}, -1 = no token)
  int n = 0;
};

enum class LogitsFor { None, Last, All };

class DeviceForward;

class Engine {
 public:
  // device CUDA: the weights are copied to the GPU, caches are made in device memory and every
  // pass runs there (infer/device_forward.h); hidden() and logits() are still host memory.
  explicit Engine(std::shared_ptr<const InferWeights> weights, Device device = Device::CPU);
  ~Engine();

  Device device() const { return device_; }

  const ModelConfig& config() const { return w_->config(); }
  const InferWeights& weights() const { return *w_; }
  int mtp_depths() const { return int(w_->mtp.size()); }

  // A cache for the main model (all layers) or for MTP depth `depth` (1-based, one layer).
  LatentCache make_cache(int capacity, DType dtype, int depth = 0) const;

  // Runs the main model over the chunks and appends their latents to the caches. Afterwards
  // hidden() holds every row's output after the final norm [rows, D], and logits() the rows
  // chosen by `which` [rows_out, V] (Last: one row per chunk, in chunk order).
  void forward(std::span<const Chunk> chunks, LogitsFor which);

  // Runs MTP depth `depth` (1-based) over chunks whose caches are that depth's caches. Row r's
  // input is h_prev[r] (the previous depth's hidden state, or the main model's for depth 1) and
  // the embedding of chunk token ids (t_{i+depth}; -1 gives a zero embedding). Afterwards
  // hidden() holds h^depth and logits() the chosen rows.
  void forward_mtp(int depth, std::span<const Chunk> chunks, const float* h_prev,
                   LogitsFor which);

  const float* hidden() const { return hidden_.data(); }
  const float* logits() const { return logits_.data(); }
  int rows() const { return rows_; }
  int logits_rows() const { return logits_rows_; }

 private:
  struct Scratch;
  void check_chunks(std::span<const Chunk> chunks, bool mtp) const;
  // forward / forward_mtp (depth >= 1) on the GPU.
  void forward_on_device(int depth, std::span<const Chunk> chunks, const float* h_prev,
                         LogitsFor which);
  void block(const LayerWeights& l, int cache_layer, std::span<const Chunk> chunks, float* x);
  void attention(const AttentionWeights& a, int cache_layer, std::span<const Chunk> chunks,
                 const float* xn, float* out);
  void ffn(const FfnWeights& f, const float* x, int64_t n, float* out, bool accumulate);
  // The same with the caller's gate/up buffers [n, I] (thread-safe: no shared scratch).
  void ffn_into(const FfnWeights& f, const float* x, int64_t n, float* out, bool accumulate,
                float* g, float* u) const;
  void moe(const LayerWeights& l, const float* xn, int64_t n, float* out);
  void head(std::span<const Chunk> chunks, const float* x, const Tensor& norm, LogitsFor which);

  std::shared_ptr<const InferWeights> w_;
  Device device_ = Device::CPU;
  std::unique_ptr<DeviceForward> gpu_;  // set for Device::CUDA
  RopeTables rope_;
  std::unique_ptr<Scratch> s_;
  std::vector<float> hidden_, logits_;
  int rows_ = 0, logits_rows_ = 0;
};

// RMSNorm of `rows` rows of width `dim`: y = x * rsqrt(mean(x^2) + eps) * w (y may alias x).
void rmsnorm_rows(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y,
                  int64_t ldx, int64_t ldy);

}  // namespace dsv3::infer
