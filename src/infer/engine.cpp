#include "infer/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "infer/device_forward.h"
#include "infer/scratch.h"
#include "model/router.h"

namespace dsv3::infer {

void rmsnorm_rows(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y,
                  int64_t ldx, int64_t ldy) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    float sum = 0.0f;
    for (int64_t i = 0; i < dim; ++i) sum += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(sum / float(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

Engine::Engine(std::shared_ptr<const InferWeights> weights, Device device)
    : w_(std::move(weights)), device_(device), s_(std::make_unique<Scratch>()) {
  rope_ = build_rope_tables(w_->config(), w_->config().max_position_embeddings);
  if (device == Device::CUDA) gpu_ = make_cuda_forward(w_, rope_);
}

Engine::~Engine() = default;

LatentCache Engine::make_cache(int capacity, DType dtype, int depth) const {
  const ModelConfig& c = config();
  DSV3_CHECK(capacity <= c.max_position_embeddings,
             "a context of {} positions exceeds the model's max_position_embeddings = {}",
             capacity, c.max_position_embeddings);
  DSV3_CHECK(depth >= 0 && depth <= mtp_depths(), "MTP depth {} not in the model ({} depths)",
             depth, mtp_depths());
  return LatentCache(c, depth == 0 ? c.num_hidden_layers : 1, capacity, dtype, device_);
}

void Engine::check_chunks(std::span<const Chunk> chunks, bool mtp) const {
  const ModelConfig& c = config();
  DSV3_CHECK(!chunks.empty(), "forward: no sequences to run");
  for (const Chunk& ch : chunks) {
    DSV3_CHECK(ch.cache != nullptr && ch.n > 0, "forward: a chunk needs a cache and tokens");
    DSV3_CHECK(ch.cache->len() + ch.n <= ch.cache->capacity(),
               "the sequence needs {} positions but its context holds {} (prompt plus new tokens "
               "longer than the context)",
               ch.cache->len() + ch.n, ch.cache->capacity());
    DSV3_CHECK(ch.cache->len() + ch.n <= c.max_position_embeddings,
               "the sequence needs {} positions, more than max_position_embeddings = {}",
               ch.cache->len() + ch.n, c.max_position_embeddings);
    for (int i = 0; i < ch.n; ++i)
      DSV3_CHECK(ch.tokens[i] < c.vocab_size && (ch.tokens[i] >= 0 || (mtp && ch.tokens[i] == -1)),
                 "token id {} is outside the vocabulary [0, {})", ch.tokens[i], c.vocab_size);
  }
}

void Engine::ffn(const FfnWeights& f, const float* x, int64_t n, float* out, bool accumulate) {
  const int64_t width = f.gate.rows;
  ffn_into(f, x, n, out, accumulate, grow(s_->gate, n * width), grow(s_->up, n * width));
}

void Engine::ffn_into(const FfnWeights& f, const float* x, int64_t n, float* out, bool accumulate,
                      float* g, float* u) const {
  const int64_t d = config().hidden_size, width = f.gate.rows;
  GemvJob gate_up[2] = {{x, n, d, f.gate, g, width}, {x, n, d, f.up, u, width}};
  matmul_wt_jobs(gate_up);
  for (int64_t i = 0; i < n * width; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  matmul_wt(g, n, width, f.down, out, d, accumulate);
}

void Engine::moe(const LayerWeights& l, const float* xn, int64_t n, float* out) {
  const ModelConfig& c = config();
  Scratch& s = *s_;
  const int64_t d = c.hidden_size, e = c.n_routed_experts, k = c.num_experts_per_tok;
  DSV3_CHECK(c.n_group <= 64, "n_group = {} exceeds the 64 groups dsv3 supports", c.n_group);
  // Router: scores, group-limited top-k on scores + bias, weights from the unbiased scores.
  float* logits = grow(s.router, n * e);
  int32_t* chosen = grow(s.chosen, n * k);
  float* gates = grow(s.gates, n * k);
  std::optional<profile::Phase> ph;
  ph.emplace(DSV3_PHASE_NAME(n, "moe.router"), Device::CPU);
  matmul_wt(xn, n, d, l.router, logits, e);
  std::vector<float> selection(size_t(e) + 0), groups(size_t(std::max(1, c.n_group)));
  const float* bias = l.router_bias.f32();
  for (int64_t t = 0; t < n; ++t) {
    float* sc = logits + t * e;
    if (c.scoring_func == ScoringFunc::Sigmoid) {
      for (int64_t i = 0; i < e; ++i) sc[i] = 1.0f / (1.0f + std::exp(-sc[i]));
    } else {
      float mx = *std::max_element(sc, sc + e), sum = 0.0f;
      for (int64_t i = 0; i < e; ++i) sum += (sc[i] = std::exp(sc[i] - mx));
      for (int64_t i = 0; i < e; ++i) sc[i] /= sum;
    }
    for (int64_t i = 0; i < e; ++i) selection[size_t(i)] = sc[i] + bias[i];
    int32_t* ch = chosen + t * k;
    select_experts(c, selection.data(), groups.data(), ch);
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += (gates[t * k + j] = sc[ch[j]]);
    float scale = float(c.routed_scaling_factor);
    if (c.norm_topk_prob) scale /= (sum + 1e-20f);
    for (int64_t j = 0; j < k; ++j) gates[t * k + j] *= scale;
  }
  ph.emplace(DSV3_PHASE_NAME(n, "moe.experts"), Device::CPU);
  // Shared experts write the output; routed experts add their weighted rows.
  if (!l.has_shared) std::fill(out, out + n * d, 0.0f);
  else if (n > kSmallRows) ffn(l.shared, xn, n, out, false);
  int64_t* off = grow(s.expert_off, e + 1);
  int32_t* rows = grow(s.expert_rows, n * k);
  int32_t* slot = grow(s.slot, n * k);
  std::fill(off, off + e + 1, 0);
  for (int64_t a = 0; a < n * k; ++a) off[chosen[a] + 1]++;
  for (int64_t i = 0; i < e; ++i) off[i + 1] += off[i];
  std::vector<int64_t> cursor(off, off + e);
  for (int64_t a = 0; a < n * k; ++a) {
    int64_t p = cursor[size_t(chosen[a])]++;
    rows[p] = int32_t(a / k);
    slot[p] = int32_t(a);
  }
  if (n > kSmallRows) {
    // Many rows (prefill): the experts share out over the threads, one whole expert (gather,
    // gate/up, SwiGLU, down) per thread at a time, each product on its own thread: a few rows
    // per expert make one multi-threaded GEMM per product mostly synchronisation. Then every
    // token adds its experts' weighted rows, in its own order of choice.
    const int64_t width = c.moe_intermediate_size;
    float* xin = grow(s.ex_in, n * k * d);   // [n*k, D] rows grouped by expert
    float* y = grow(s.ex_out, n * k * d);    // [n*k, D]
    float* g = grow(s.gate, n * k * width);  // [n*k, I]
    float* u = grow(s.up, n * k * width);    // [n*k, I]
    int32_t* grouped_of = grow(s.grouped_of, n * k);  // choice a = t*K + j -> grouped row
    for (int64_t p = 0; p < n * k; ++p) grouped_of[slot[p]] = int32_t(p);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < e; ++i) {
      const int64_t m = off[i + 1] - off[i];
      if (m == 0) continue;
      for (int64_t j = 0; j < m; ++j)
        std::memcpy(xin + (off[i] + j) * d, xn + int64_t(rows[off[i] + j]) * d, size_t(d) * 4);
      ffn_into(l.experts[size_t(i)], xin + off[i] * d, m, y + off[i] * d, false,
               g + off[i] * width, u + off[i] * width);
    }
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      float* o = out + t * d;
      for (int64_t j = 0; j < k; ++j) {
        const float gw = gates[t * k + j];
        const float* yr = y + int64_t(grouped_of[t * k + j]) * d;
        for (int64_t q = 0; q < d; ++q) o[q] += gw * yr[q];
      }
    }
    return;
  }
  // Few rows (decode, verification): every chosen expert's gate and up projections, and the
  // shared experts', in one parallel pass; then all down projections in another.
  const int64_t width = c.moe_intermediate_size;
  float* xin = grow(s.ex_in, n * k * d);
  float* y = grow(s.ex_out, n * k * d);
  float* g = grow(s.gate, n * k * width);
  float* u = grow(s.up, n * k * width);
  for (int64_t p = 0; p < n * k; ++p)
    std::memcpy(xin + p * d, xn + int64_t(rows[p]) * d, size_t(d) * 4);
  std::vector<GemvJob> jobs;
  for (int64_t i = 0; i < e; ++i) {
    const int64_t m = off[i + 1] - off[i];
    if (m == 0) continue;
    const FfnWeights& f = l.experts[size_t(i)];
    jobs.push_back({xin + off[i] * d, m, d, f.gate, g + off[i] * width, width});
    jobs.push_back({xin + off[i] * d, m, d, f.up, u + off[i] * width, width});
  }
  const int64_t sw = l.has_shared ? l.shared.gate.rows : 0;
  float* sg = grow(s.sh_gate, n * std::max<int64_t>(sw, 1));
  float* su = grow(s.sh_up, n * std::max<int64_t>(sw, 1));
  if (l.has_shared) {
    jobs.push_back({xn, n, d, l.shared.gate, sg, sw});
    jobs.push_back({xn, n, d, l.shared.up, su, sw});
  }
  matmul_wt_jobs(jobs);
  for (int64_t i = 0; i < n * k * width; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  for (int64_t i = 0; i < n * sw; ++i) sg[i] = sg[i] / (1.0f + std::exp(-sg[i])) * su[i];
  jobs.clear();
  for (int64_t i = 0; i < e; ++i) {
    const int64_t m = off[i + 1] - off[i];
    if (m == 0) continue;
    jobs.push_back({g + off[i] * width, m, width, l.experts[size_t(i)].down, y + off[i] * d, d});
  }
  if (l.has_shared) jobs.push_back({sg, n, sw, l.shared.down, out, d});
  matmul_wt_jobs(jobs);
  for (int64_t p = 0; p < n * k; ++p) {
    const float gw = gates[slot[p]];
    float* o = out + int64_t(rows[p]) * d;
    const float* yr = y + p * d;
    for (int64_t t = 0; t < d; ++t) o[t] += gw * yr[t];
  }
}

void Engine::block(const LayerWeights& l, int cache_layer, std::span<const Chunk> chunks,
                   float* x) {
  const ModelConfig& c = config();
  const int64_t n = rows_, d = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  float* xn = grow(s_->xn, n * d);
  float* sub = grow(s_->sub, n * d);
  rmsnorm_rows(x, l.input_norm.f32(), n, d, eps, xn, d, d);
  attention(l.attn, cache_layer, chunks, xn, sub);
  for (int64_t i = 0; i < n * d; ++i) x[i] += sub[i];
  rmsnorm_rows(x, l.post_attention_norm.f32(), n, d, eps, xn, d, d);
  if (l.moe) {
    moe(l, xn, n, sub);
  } else {
    profile::Phase ph(DSV3_PHASE_NAME(n, "dense_ffn"), Device::CPU);
    ffn(l.dense, xn, n, sub, false);
  }
  for (int64_t i = 0; i < n * d; ++i) x[i] += sub[i];
}

void Engine::head(std::span<const Chunk> chunks, const float* x, const Tensor& norm,
                  LogitsFor which) {
  const ModelConfig& c = config();
  const int64_t n = rows_, d = c.hidden_size, v = c.vocab_size;
  profile::Phase ph(DSV3_PHASE_NAME(n, "head"), Device::CPU);
  float* h = grow(hidden_, n * d);
  rmsnorm_rows(x, norm.f32(), n, d, float(c.rms_norm_eps), h, d, d);
  if (which == LogitsFor::None) {
    logits_rows_ = 0;
    return;
  }
  if (which == LogitsFor::All) {
    logits_rows_ = int(n);
    matmul_wt(h, n, d, w_->lm_head, grow(logits_, n * v), v);
    return;
  }
  // The last row of each chunk, gathered so that one product serves them all.
  logits_rows_ = int(chunks.size());
  float* last = grow(s_->ex_in, int64_t(chunks.size()) * d);
  int64_t row = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    row += chunks[i].n;
    std::memcpy(last + int64_t(i) * d, h + (row - 1) * d, size_t(d) * 4);
  }
  matmul_wt(last, int64_t(chunks.size()), d, w_->lm_head, grow(logits_, int64_t(chunks.size()) * v), v);
}

namespace {
void embed_rows(const MatRef& table, const int32_t* ids, int64_t n, float* out) {
  const int64_t d = table.cols;
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0) {
      std::fill(out + i * d, out + (i + 1) * d, 0.0f);
      continue;
    }
    const char* row = static_cast<const char*>(table.data) +
                      size_t(int64_t(ids[i]) * table.ld) * dtype_size(table.dtype);
    convert_to_f32(table.dtype, row, out + i * d, size_t(d));
  }
}
}  // namespace

void Engine::forward_on_device(int depth, std::span<const Chunk> chunks, const float* h_prev,
                               LogitsFor which) {
  rows_ = 0;
  for (const Chunk& ch : chunks) rows_ += ch.n;
  gpu_->forward(depth, chunks, h_prev, which, hidden_, logits_, logits_rows_);
  for (const Chunk& ch : chunks) ch.cache->set_len(ch.cache->len() + ch.n);
}

void Engine::forward(std::span<const Chunk> chunks, LogitsFor which) {
  check_chunks(chunks, false);
  if (gpu_) return forward_on_device(0, chunks, nullptr, which);
  const ModelConfig& c = config();
  const int64_t d = c.hidden_size;
  rows_ = 0;
  for (const Chunk& ch : chunks) rows_ += ch.n;
  int32_t* pos = grow(s_->positions, rows_);
  float* x = grow(s_->x, int64_t(rows_) * d);
  int64_t row = 0;
  for (const Chunk& ch : chunks) {
    for (int i = 0; i < ch.n; ++i) pos[row + i] = ch.cache->len() + i;
    embed_rows(w_->embed, ch.tokens, ch.n, x + row * d);
    row += ch.n;
  }
  for (int l = 0; l < c.num_hidden_layers; ++l) block(w_->layers[size_t(l)], l, chunks, x);
  for (const Chunk& ch : chunks) ch.cache->set_len(ch.cache->len() + ch.n);
  head(chunks, x, w_->norm, which);
}

void Engine::forward_mtp(int depth, std::span<const Chunk> chunks, const float* h_prev,
                         LogitsFor which) {
  DSV3_CHECK(depth >= 1 && depth <= mtp_depths(), "MTP depth {} not in the model ({} depths)",
             depth, mtp_depths());
  check_chunks(chunks, true);
  if (gpu_) return forward_on_device(depth, chunks, h_prev, which);
  const ModelConfig& c = config();
  const MtpModuleWeights& m = w_->mtp[size_t(depth - 1)];
  const int64_t d = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  rows_ = 0;
  for (const Chunk& ch : chunks) rows_ += ch.n;
  const int64_t n = rows_;
  int32_t* pos = grow(s_->positions, n);
  float* emb = grow(s_->emb, n * d);
  float* cat = grow(s_->cat, n * 2 * d);
  float* x = grow(s_->x, n * d);
  int64_t row = 0;
  for (const Chunk& ch : chunks) {
    for (int i = 0; i < ch.n; ++i) pos[row + i] = ch.cache->len() + i;
    embed_rows(w_->embed, ch.tokens, ch.n, emb + row * d);
    row += ch.n;
  }
  // x = eh_proj([enorm(Emb(t_{i+k})) | hnorm(h^{k-1}_i)])
  rmsnorm_rows(emb, m.enorm.f32(), n, d, eps, cat, d, 2 * d);
  rmsnorm_rows(h_prev, m.hnorm.f32(), n, d, eps, cat + d, d, 2 * d);
  matmul_wt(cat, n, 2 * d, m.eh_proj, x, d);
  block(m.block, 0, chunks, x);
  for (const Chunk& ch : chunks) ch.cache->set_len(ch.cache->len() + ch.n);
  head(chunks, x, m.head_norm, which);
}

}  // namespace dsv3::infer
