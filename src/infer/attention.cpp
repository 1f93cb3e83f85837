// Absorbed MLA attention over the latent cache (see engine.h for the form).

#include <cmath>
#include <cstring>

#include "core/x86_intrinsics.h"
#include "infer/scratch.h"
#include "kernels/ops.h"

namespace dsv3::infer {

namespace {
#if defined(__AVX512F__)
// Dot products of one query row with N consecutive cache rows (stride w), scaled. Each row is
// summed in 16 lanes in the same order whatever N, so a score does not depend on whether its row
// fell in a group of four or in the remainder.
template <int N>
inline void dots(const float* q, const float* k0, int64_t w, float scale, float* out) {
  const int64_t w16 = w / 16 * 16;
  const __mmask16 tail = __mmask16((1u << (w - w16)) - 1u);
  __m512 acc[N];
  for (int n = 0; n < N; ++n) acc[n] = _mm512_setzero_ps();
  for (int64_t c = 0; c < w16; c += 16) {
    const __m512 qv = _mm512_loadu_ps(q + c);
    for (int n = 0; n < N; ++n) acc[n] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k0 + n * w + c), acc[n]);
  }
  if (w16 < w) {
    const __m512 qv = _mm512_maskz_loadu_ps(tail, q + w16);
    for (int n = 0; n < N; ++n)
      acc[n] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(tail, k0 + n * w + w16), acc[n]);
  }
  for (int n = 0; n < N; ++n) out[n] = scale * _mm512_reduce_add_ps(acc[n]);
}
#endif

// Scores of m query rows against cache rows [0, start + t] (row t), scaled; the same arithmetic
// for any m, so a token's scores do not depend on the rows beside it.
void scores_rows(const float* q, int64_t ldq, int64_t m, const float* kv, int64_t w,
                 int64_t start, float scale, float* sc, int64_t ldsc) {
  for (int64_t t = 0; t < m; ++t) {
    const float* qt = q + t * ldq;
    const int64_t valid = start + t + 1;
    int64_t j = 0;
#if defined(__AVX512F__)
    for (; j + 4 <= valid; j += 4) dots<4>(qt, kv + j * w, w, scale, sc + t * ldsc + j);
    for (; j < valid; ++j) dots<1>(qt, kv + j * w, w, scale, sc + t * ldsc + j);
#else
    for (; j < valid; ++j) {
      const float* kj = kv + j * w;
      float dot = 0.0f;
      for (int64_t c = 0; c < w; ++c) dot += qt[c] * kj[c];
      sc[t * ldsc + j] = scale * dot;
    }
#endif
  }
}

// Softmax of each row t over its causal window [0, start + t]; the rest of the row is zeroed.
void softmax_causal(float* sc, int64_t m, int64_t ctx, int64_t start) {
  for (int64_t t = 0; t < m; ++t) {
    float* row = sc + t * ctx;
    const int64_t valid = start + t + 1;
    float mx = row[0];
    for (int64_t j = 1; j < valid; ++j) mx = std::max(mx, row[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < valid; ++j) sum += (row[j] = std::exp(row[j] - mx));
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < valid; ++j) row[j] *= inv;
    for (int64_t j = valid; j < ctx; ++j) row[j] = 0.0f;
  }
}

// out[t] = sum over the causal window of p[t, j] * latent_j (the first r values of cache row j).
void weighted_latent(const float* p, int64_t m, int64_t ctx, int64_t start, const float* kv,
                     int64_t w, int64_t r, float* out, int64_t ldo) {
  for (int64_t t = 0; t < m; ++t) {
    float* o = out + t * ldo;
    const float* pt = p + t * ctx;
    const int64_t valid = start + t + 1;
    int64_t c0 = 0;
#if defined(__AVX512F__)
    // Blocks of 128 latent values stay in 8 registers over the whole window.
    constexpr int kBlock = 8;
    for (; c0 + 16 * kBlock <= r; c0 += 16 * kBlock) {
      __m512 acc[kBlock];
      for (int b = 0; b < kBlock; ++b) acc[b] = _mm512_setzero_ps();
      for (int64_t j = 0; j < valid; ++j) {
        const __m512 pj = _mm512_set1_ps(pt[j]);
        const float* kj = kv + j * w + c0;
        for (int b = 0; b < kBlock; ++b) acc[b] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(kj + 16 * b), acc[b]);
      }
      for (int b = 0; b < kBlock; ++b) _mm512_storeu_ps(o + c0 + 16 * b, acc[b]);
    }
#endif
    for (int64_t c = c0; c < r; ++c) o[c] = 0.0f;
    for (int64_t j = 0; j < valid; ++j) {
      const float pj = pt[j];
      const float* kj = kv + j * w;
      for (int64_t c = c0; c < r; ++c) o[c] += pj * kj[c];
    }
  }
}
}  // namespace

void Engine::attention(const AttentionWeights& a, int cache_layer, std::span<const Chunk> chunks,
                       const float* xn, float* out) {
  const ModelConfig& c = config();
  Scratch& s = *s_;
  const int64_t n = rows_, d = c.hidden_size, h = c.num_attention_heads, dn = c.qk_nope_head_dim,
                dr = c.qk_rope_head_dim, dq = dn + dr, dv = c.v_head_dim, r = c.kv_lora_rank,
                w = r + dr;
  const float eps = float(c.rms_norm_eps);
  const int32_t* pos = s.positions.data();

  // Queries [n, H, nope | rope], rope rotated.
  // Both down-projections of x (query LoRA and latent) in one pass.
  float* q = grow(s.q, n * h * dq);
  float* kv_a = grow(s.kv_a, n * w);
  float* c_norm = grow(s.c_norm, n * r);
  // Consecutive phases: each emplace ends the previous one.
  std::optional<profile::Phase> ph;
  ph.emplace(DSV3_PHASE_NAME(n, "attn.q_kv"), Device::CPU);
  if (c.q_lora_rank) {
    const int64_t qr = *c.q_lora_rank;
    float* qa = grow(s.q_a, n * qr);
    GemvJob down[2] = {{xn, n, d, a.q_a, qa, qr}, {xn, n, d, a.kv_a, kv_a, w}};
    matmul_wt_jobs(down);
    rmsnorm_rows(qa, a.q_a_norm.f32(), n, qr, eps, qa, qr, qr);
    matmul_wt(qa, n, qr, a.q_b, q, h * dq);
  } else {
    GemvJob down[2] = {{xn, n, d, a.q_proj, q, h * dq}, {xn, n, d, a.kv_a, kv_a, w}};
    matmul_wt_jobs(down);
  }
  ops::rope_forward(q, {n, h, dq, dn, dr}, pos, rope_.cos, rope_.sin);

  // The latent and the shared rope key of the new tokens, into the caches.
  rmsnorm_rows(kv_a, a.kv_a_norm.f32(), n, r, eps, c_norm, w, r);
  ops::rope_forward(kv_a, {n, 1, w, r, dr}, pos, rope_.cos, rope_.sin);
  {
    int64_t row = 0;
    for (const Chunk& ch : chunks) {
      for (int i = 0; i < ch.n; ++i)
        ch.cache->write(cache_layer, ch.cache->len() + i, c_norm + (row + i) * r,
                        kv_a + (row + i) * w + r);
      row += ch.n;
    }
  }

  ph.emplace(DSV3_PHASE_NAME(n, "attn.absorb_q"), Device::CPU);
  // Absorbed queries: [q_nope . W_uk(h) | q_pe] per head, [n, H, R + rope].
  std::vector<MatRef> w_uk(static_cast<size_t>(h)), w_uv(static_cast<size_t>(h));
  for (int64_t i = 0; i < h; ++i) {
    w_uk[size_t(i)] = a.kv_b.row_block(i * (dn + dv), dn);
    w_uv[size_t(i)] = a.kv_b.row_block(i * (dn + dv) + dn, dv);
  }
  float* qcat = grow(s.qcat, n * h * w);
  auto absorb_head = [&](int64_t i) {
    matmul_w(q + i * dq, n, h * dq, w_uk[size_t(i)], qcat + i * w, h * w);
    for (int64_t t = 0; t < n; ++t)
      std::memcpy(qcat + (t * h + i) * w + r, q + (t * h + i) * dq + dn, size_t(dr) * 4);
  };
  // One head per thread at a time (a prefill's GEMMs then run one per thread: a GEMM called
  // from inside a parallel region runs on the calling thread).
  if (n <= kSmallRows) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < h; ++i) absorb_head(i);
  } else {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < h; ++i) absorb_head(i);
  }

  ph.emplace(DSV3_PHASE_NAME(n, "attn.scores_latent"), Device::CPU);
  // Scores and weighted latents, chunk by chunk over each chunk's own cache.
  float* olat = grow(s.olat, n * h * r);
  const float scale = rope_.softmax_scale;
  int64_t row0 = 0;
  for (const Chunk& ch : chunks) {
    const int64_t start = ch.cache->len(), m = ch.n, ctx = start + m;
    const float* kv = ch.cache->read(cache_layer, int(ctx), grow(s.kv_read, ctx * w));
    float* scores = grow(s.scores, h * m * ctx);
    const bool small = m <= kSmallRows;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < h; ++i) {
      float* sc = scores + i * m * ctx;
      if (small)
        scores_rows(qcat + (row0 * h + i) * w, h * w, m, kv, w, start, scale, sc, ctx);
      else
        ops::gemm(false, true, m, ctx, w, scale, qcat + (row0 * h + i) * w, h * w, kv, w, 0.0f,
                  sc, ctx);
      softmax_causal(sc, m, ctx, start);
      if (small)
        weighted_latent(sc, m, ctx, start, kv, w, r, olat + (row0 * h + i) * r, h * r);
      else
        ops::gemm(false, false, m, r, ctx, 1.0f, sc, ctx, kv, w, 0.0f, olat + (row0 * h + i) * r,
                  h * r);
    }
    row0 += m;
  }

  ph.emplace(DSV3_PHASE_NAME(n, "attn.values_o"), Device::CPU);
  // Values: o(h) = latent(h) . W_uv(h)^T, then the output projection.
  float* o = grow(s.o, n * h * dv);
  std::vector<GemvJob> uv;
  for (int64_t i = 0; i < h; ++i) uv.push_back({olat + i * r, n, h * r, w_uv[size_t(i)], o + i * dv, h * dv});
  matmul_wt_jobs(uv);
  matmul_wt(o, n, h * dv, a.o, out, d);
}

}  // namespace dsv3::infer
