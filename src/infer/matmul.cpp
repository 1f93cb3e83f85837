#include "infer/matmul.h"

#include <omp.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "core/x86_intrinsics.h"
#include "kernels/ops.h"

namespace dsv3::infer {

MatRef MatRef::of(const Tensor& t) {
  DSV3_CHECK(t.ndim() == 2, "matmul: weight of shape {} is not 2-D", t.shape().str());
  DSV3_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16,
             "matmul: weights of dtype {} are not supported (F32 or BF16)", dtype_name(t.dtype()));
  return {t.data(), t.dtype(), t.dim(0), t.dim(1), t.dim(1)};
}

MatRef MatRef::row_block(int64_t begin, int64_t count) const {
  DSV3_CHECK(begin >= 0 && count >= 0 && begin + count <= rows,
             "matmul: row block [{}, {}) outside a matrix of {} rows", begin, begin + count, rows);
  MatRef r = *this;
  r.data = static_cast<const char*>(data) + size_t(begin * ld) * dtype_size(dtype);
  r.rows = count;
  return r;
}

namespace {

// ---- Streaming kernel for a few activation rows against BF16 weights ----
#if defined(__AVX512F__)

inline __m512 load_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline __m512 load_bf16_masked(const uint16_t* p, __mmask16 mask) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p)), 16));
}

inline __m512 load_w(const uint16_t* p) { return load_bf16(p); }
inline __m512 load_w_masked(const uint16_t* p, __mmask16 m) { return load_bf16_masked(p, m); }
inline __m512 load_w(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_w_masked(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

// Output rows [r0, r1) of y[M, n] = x[M, k] . w^T. RB weight rows are processed together so
// that each activation vector loaded serves RB rows; RB * M accumulators stay in registers.
// Each output element is summed in the same order whatever M and RB are, so a row's result
// does not depend on which other rows share the call (decode, verification and batches agree
// bit for bit). `Op` says how one step of kStep values of k is loaded and multiplied.
template <int M, int RB, typename Op>
void row_kernel(const Op& op, int64_t k, int64_t r0, int64_t r1, float* y, int64_t ldy,
                bool accumulate) {
  constexpr int64_t kStep = Op::kStep;
  const int64_t full = k / kStep * kStep, rest = k - full;
  int64_t r = r0;
  for (; r + RB <= r1; r += RB) {
    __m512 acc[RB][M];
    for (int a = 0; a < RB; ++a)
      for (int i = 0; i < M; ++i) acc[a][i] = _mm512_setzero_ps();
    auto step = [&](int64_t kk, int64_t count) {
      typename Op::Weights wv[RB];
      for (int a = 0; a < RB; ++a) wv[a] = op.weights(r + a, kk, count);
      for (int i = 0; i < M; ++i) {
        const typename Op::Activations xv = op.activations(i, kk, count);
        for (int a = 0; a < RB; ++a) acc[a][i] = Op::madd(acc[a][i], wv[a], xv);
      }
    };
    for (int64_t kk = 0; kk < full; kk += kStep) step(kk, kStep);
    if (rest) step(full, rest);
    for (int a = 0; a < RB; ++a)
      for (int i = 0; i < M; ++i) {
        float v = _mm512_reduce_add_ps(acc[a][i]);
        float& out = y[i * ldy + r + a];
        out = accumulate ? out + v : v;
      }
  }
  if constexpr (RB > 1)
    if (r < r1) row_kernel<M, 1>(op, k, r, r1, y, ldy, accumulate);
}

// F32 activations x [M, ldx] against F32 or BF16 weights (widened exactly): 16 values a step.
template <typename W>
struct WidenedOperands {
  static constexpr int64_t kStep = 16;
  using Weights = __m512;
  using Activations = __m512;
  const float* x;
  int64_t ldx;
  const W* w;
  int64_t ld;
  static __mmask16 mask(int64_t count) { return __mmask16((1u << count) - 1u); }
  __m512 weights(int64_t row, int64_t kk, int64_t count) const {
    return count == kStep ? load_w(w + row * ld + kk) : load_w_masked(w + row * ld + kk, mask(count));
  }
  __m512 activations(int i, int64_t kk, int64_t count) const {
    return count == kStep ? _mm512_loadu_ps(x + i * ldx + kk)
                          : _mm512_maskz_loadu_ps(mask(count), x + i * ldx + kk);
  }
  static __m512 madd(__m512 acc, __m512 wv, __m512 xv) { return _mm512_fmadd_ps(wv, xv, acc); }
};

template <int M, int RB, typename W>
void gemv_block(const float* x, int64_t ldx, const W* w, int64_t ld, int64_t k, int64_t r0,
                int64_t r1, float* y, int64_t ldy, bool accumulate) {
  row_kernel<M, RB>(WidenedOperands<W>{x, ldx, w, ld}, k, r0, r1, y, ldy, accumulate);
}

#if defined(__AVX512BF16__)
// BF16 weights on CPUs with AVX512-BF16: the activations are rounded to BF16 once per product
// (`xb` [M, kp], kp = k rounded up to 32, zero-padded) and each instruction multiplies 32
// weight/activation pairs with F32 accumulation (vdpbf16ps), half the instructions of widening
// the weights.
struct Bf16DotOperands {
  static constexpr int64_t kStep = 32;
  using Weights = __m512bh;
  using Activations = __m512bh;
  const uint16_t* xb;
  int64_t kp;
  const uint16_t* w;
  int64_t ld;
  __m512bh weights(int64_t row, int64_t kk, int64_t count) const {
    const uint16_t* p = w + row * ld + kk;
    return count == kStep
               ? (__m512bh)_mm512_loadu_si512(p)
               : (__m512bh)_mm512_maskz_loadu_epi16(__mmask32((uint64_t(1) << count) - 1u), p);
  }
  // The padding is zero, so a partial step reads whole vectors.
  __m512bh activations(int i, int64_t kk, int64_t) const {
    return (__m512bh)_mm512_loadu_si512(xb + i * kp + kk);
  }
  static __m512 madd(__m512 acc, __m512bh wv, __m512bh xv) { return _mm512_dpbf16_ps(acc, wv, xv); }
};

template <int M, int RB>
void gemv_block_dp(const uint16_t* xb, int64_t kp, const uint16_t* w, int64_t ld, int64_t k,
                   int64_t r0, int64_t r1, float* y, int64_t ldy, bool accumulate) {
  row_kernel<M, RB>(Bf16DotOperands{xb, kp, w, ld}, k, r0, r1, y, ldy, accumulate);
}
#define DSV3_GEMV_BF16_DOT 1
#endif

#else
// Portable version for builds without AVX-512 (DSV3_NATIVE=OFF, other CPUs): the same contract
// (each output summed in 16 lanes in a fixed order, independent of M and RB), plain loops.
inline float weight_value(const uint16_t* w, int64_t i) { return bf16_to_f32(w[i]); }
inline float weight_value(const float* w, int64_t i) { return w[i]; }

template <int M, int RB, typename W>
void gemv_block(const float* x, int64_t ldx, const W* w, int64_t ld, int64_t k, int64_t r0,
                int64_t r1, float* y, int64_t ldy, bool accumulate) {
  for (int64_t r = r0; r < r1; ++r)
    for (int i = 0; i < M; ++i) {
      float lanes[16] = {};
      for (int64_t kk = 0; kk < k; ++kk) lanes[kk % 16] += weight_value(w, r * ld + kk) * x[i * ldx + kk];
      float v = 0.0f;
      for (float lane : lanes) v += lane;
      float& out = y[i * ldy + r];
      out = accumulate ? out + v : v;
    }
}
#endif

// Calls kernel.template operator()<M, RB>() for m rows (1..kSmallRows): M activation rows held
// in registers, RB weight rows per step (as many accumulators as fit: RB * M <= 8).
template <typename Kernel>
void with_row_blocking(int64_t m, Kernel&& kernel) {
  switch (m) {
    case 1: return kernel.template operator()<1, 4>();
    case 2: return kernel.template operator()<2, 4>();
    case 3: return kernel.template operator()<3, 2>();
    case 4: return kernel.template operator()<4, 2>();
    case 5: return kernel.template operator()<5, 1>();
    case 6: return kernel.template operator()<6, 1>();
    case 7: return kernel.template operator()<7, 1>();
    default: return kernel.template operator()<8, 1>();
  }
}

// Output rows [r0, r1) of one product of m <= kSmallRows rows.
template <typename W>
void rows_of(const float* x, int64_t m, int64_t ldx, const MatRef& w, int64_t r0, int64_t r1,
             float* y, int64_t ldy, bool acc) {
  const W* p = static_cast<const W*>(w.data);
  with_row_blocking(m, [&]<int M, int RB>() {
    gemv_block<M, RB>(x, ldx, p, w.ld, w.cols, r0, r1, y, ldy, acc);
  });
}

#if defined(DSV3_GEMV_BF16_DOT)
// Output rows [r0, r1) of one product against BF16 weights, from BF16 activations xb [m, kp].
void rows_of_dp(const uint16_t* xb, int64_t kp, int64_t m, const MatRef& w, int64_t r0, int64_t r1,
                float* y, int64_t ldy, bool acc) {
  const uint16_t* p = static_cast<const uint16_t*>(w.data);
  with_row_blocking(m, [&]<int M, int RB>() {
    gemv_block_dp<M, RB>(xb, kp, p, w.ld, w.cols, r0, r1, y, ldy, acc);
  });
}
#endif

// The activations of every BF16-weight job rounded to BF16 once ([m, kp] each, zero-padded to
// a multiple of 32 columns), before the rows are shared out.
struct Bf16Activations {
  std::vector<uint16_t> data;
  std::vector<size_t> offset;  // per job; unused for F32-weight jobs
  std::vector<int64_t> kp;

  void prepare(std::span<const GemvJob> jobs) {
#if defined(DSV3_GEMV_BF16_DOT)
    size_t total = 0;
    offset.assign(jobs.size(), 0);
    kp.assign(jobs.size(), 0);
    for (size_t i = 0; i < jobs.size(); ++i) {
      if (jobs[i].w.dtype != DType::BF16) continue;
      kp[i] = (jobs[i].w.cols + 31) / 32 * 32;
      offset[i] = total;
      total += size_t(jobs[i].m * kp[i]);
    }
    if (data.size() < total) data.resize(total);
    for (size_t i = 0; i < jobs.size(); ++i) {
      const GemvJob& j = jobs[i];
      if (j.w.dtype != DType::BF16) continue;
      for (int64_t r = 0; r < j.m; ++r) {
        uint16_t* dst = data.data() + offset[i] + size_t(r * kp[i]);
        convert_from_f32(j.x + r * j.ldx, DType::BF16, dst, size_t(j.w.cols));
        std::fill(dst + j.w.cols, dst + kp[i], uint16_t(0));
      }
    }
#else
    (void)jobs;
#endif
  }
};

void job_rows(const GemvJob& j, [[maybe_unused]] const Bf16Activations& xb, [[maybe_unused]] size_t index,
              int64_t r0, int64_t r1) {
  if (j.w.dtype == DType::BF16) {
#if defined(DSV3_GEMV_BF16_DOT)
    return rows_of_dp(xb.data.data() + xb.offset[index], xb.kp[index], j.m, j.w, r0, r1, j.y,
                      j.ldy, j.accumulate);
#else
    return rows_of<uint16_t>(j.x, j.m, j.ldx, j.w, r0, r1, j.y, j.ldy, j.accumulate);
#endif
  }
  rows_of<float>(j.x, j.m, j.ldx, j.w, r0, r1, j.y, j.ldy, j.accumulate);
}

// Output rows are cut in chunks of 16 (a multiple of every RB) and all chunks of all jobs are
// shared out in one parallel region.
constexpr int64_t kChunk = 16;

void run_jobs(std::span<const GemvJob> jobs) {
  int64_t total = 0, work = 0;
  for (const GemvJob& j : jobs) {
    total += (j.w.rows + kChunk - 1) / kChunk;
    work += j.w.rows * j.w.cols;
  }
  thread_local Bf16Activations calling_thread;
  const Bf16Activations& xb = calling_thread;  // the workers read the caller's copy
  calling_thread.prepare(jobs);
  const bool parallel = work >= 32768 && omp_get_max_threads() > 1 && !omp_in_parallel();
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t c = 0; c < total; ++c) {
    int64_t rest = c;
    size_t i = 0;
    while (rest >= (jobs[i].w.rows + kChunk - 1) / kChunk) rest -= (jobs[i++].w.rows + kChunk - 1) / kChunk;
    const int64_t r0 = rest * kChunk, r1 = std::min(jobs[i].w.rows, r0 + kChunk);
    job_rows(jobs[i], xb, i, r0, r1);
  }
}

// ---- oneDNN BF16 matmul for many rows ----

struct DnnlState {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  // (plain, n, k, ld, ldy, accumulate) -> primitive (the row count m is a runtime dimension)
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool>, dnnl::matmul> cache;
  // oneDNN builds BF16 matmuls only for CPUs with AVX-512 (it refuses them on AVX2-only ones):
  // then every BF16 product takes the widening path below.
  bool no_bf16_matmul = false;
  bool force_widened = false;  // force_widened_bf16_gemm
  std::mutex mutex;
};
DnnlState& dnnl_state() {
  static DnnlState s;
  return s;
}

// The product of large_bf16 where oneDNN has no BF16 matmul: the BF16 operands widened to
// float32 (exactly) and multiplied by the float32 GEMM, the weights a block of output columns
// at a time so that no float32 copy of a whole matrix is made. Each product of two BF16 values
// is exact in float32, so this is large_bf16's arithmetic up to the order of the sums.
void widened_bf16(const uint16_t* xb, int64_t m, int64_t k, int64_t n, const MatRef& w, float* y,
                  int64_t ldy, bool accumulate, bool plain) {
  constexpr int64_t kBlockCols = 256;
  thread_local std::vector<float> xf, wf;
  xf.resize(size_t(m * k));
  wf.resize(size_t(k * std::min(n, kBlockCols)));
  convert_to_f32(DType::BF16, xb, xf.data(), xf.size());
  const uint16_t* wp = static_cast<const uint16_t*>(w.data);
  const float beta = accumulate ? 1.0f : 0.0f;
  for (int64_t c0 = 0; c0 < n; c0 += kBlockCols) {
    const int64_t nb = std::min(kBlockCols, n - c0);
    if (plain) {  // w [k, n]: columns c0 .. c0 + nb of each row, as wf [k, nb]
      for (int64_t r = 0; r < k; ++r)
        convert_to_f32(DType::BF16, wp + r * w.ld + c0, wf.data() + r * nb, size_t(nb));
      ops::gemm(false, false, m, nb, k, 1.0f, xf.data(), k, wf.data(), nb, beta, y + c0, ldy);
    } else {  // w [n, k]: rows c0 .. c0 + nb, as wf [nb, k]
      for (int64_t r = 0; r < nb; ++r)
        convert_to_f32(DType::BF16, wp + (c0 + r) * w.ld, wf.data() + r * k, size_t(k));
      ops::gemm(false, true, m, nb, k, 1.0f, xf.data(), k, wf.data(), k, beta, y + c0, ldy);
    }
  }
}

// y[m, n] (= or +=) x[m, k] . W with BF16 operands and F32 accumulation, where W [k, n] is
// w^T (the linear layer: w is [n, k]) or, with `plain`, w itself (w is [k, n]).
void large_bf16(const float* x, int64_t m, int64_t ldx, const MatRef& w, float* y, int64_t ldy,
                bool accumulate, bool plain = false) {
  using dt = dnnl::memory::data_type;
  const int64_t n = plain ? w.cols : w.rows, k = plain ? w.rows : w.cols;
  thread_local std::vector<uint16_t> xb;
  if (xb.size() < size_t(m * k)) xb.resize(size_t(m * k));
  for (int64_t i = 0; i < m; ++i) convert_from_f32(x + i * ldx, DType::BF16, xb.data() + i * k, size_t(k));
  DnnlState& s = dnnl_state();
  // The row count is a runtime dimension: one primitive per weight shape serves every prompt
  // length and expert group size (the cache stays small however long a session runs).
  const dnnl::memory::dim rt = DNNL_RUNTIME_DIM_VAL;
  dnnl::memory::desc src_md({m, k}, dt::bf16, dnnl::memory::dims{k, 1});
  dnnl::memory::desc wei_md({k, n}, dt::bf16,
                            plain ? dnnl::memory::dims{w.ld, 1} : dnnl::memory::dims{1, w.ld});
  dnnl::memory::desc dst_md({m, n}, dt::f32, dnnl::memory::dims{ldy, 1});
  dnnl::matmul prim;  // stays empty where the product takes the widening way
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    auto key = std::make_tuple(int64_t(plain), n, k, w.ld, ldy, accumulate);
    auto it = s.cache.find(key);
    if (it == s.cache.end() && !s.no_bf16_matmul && !s.force_widened) {
      dnnl::primitive_attr attr;
      if (accumulate) {
        dnnl::post_ops po;
        po.append_sum(1.0f);
        attr.set_post_ops(po);
      }
      dnnl::memory::desc src_rt({rt, k}, dt::bf16, dnnl::memory::dims{k, 1});
      dnnl::memory::desc dst_rt({rt, n}, dt::f32, dnnl::memory::dims{ldy, 1});
      dnnl::matmul::desc d(src_rt, wei_md, dst_rt);
      try {
        dnnl::matmul::primitive_desc pd(d, attr, s.engine);
        it = s.cache.emplace(key, dnnl::matmul(pd)).first;
      } catch (const dnnl::error&) {
        s.no_bf16_matmul = true;  // this CPU has none (every shape is refused alike)
      }
    }
    if (it != s.cache.end() && !s.force_widened) prim = it->second;
  }
  if (!prim) return widened_bf16(xb.data(), m, k, n, w, y, ldy, accumulate, plain);
  dnnl::memory src(src_md, s.engine, xb.data());
  dnnl::memory wei(wei_md, s.engine, const_cast<void*>(w.data));
  dnnl::memory dst(dst_md, s.engine, y);
  // One stream per thread: products may run concurrently, one per thread, from inside a
  // parallel region (then each runs on its own thread).
  thread_local dnnl::stream stream{s.engine};
  prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
  stream.wait();
}

}  // namespace

void force_widened_bf16_gemm(bool on) {
  DnnlState& s = dnnl_state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.force_widened = on;
}

void matmul_wt(const float* x, int64_t m, int64_t ldx, const MatRef& w, float* y, int64_t ldy,
               bool accumulate) {
  if (m == 0 || w.rows == 0) return;
  if (m <= kSmallRows) {
    DSV3_CHECK(w.dtype == DType::F32 || w.dtype == DType::BF16,
               "matmul: weights of dtype {} are not supported", dtype_name(w.dtype));
    GemvJob job{x, m, ldx, w, y, ldy, accumulate};
    return run_jobs({&job, 1});
  }
  if (w.dtype == DType::F32) {
    ops::gemm(false, true, m, w.rows, w.cols, 1.0f, x, ldx, static_cast<const float*>(w.data),
              w.ld, accumulate ? 1.0f : 0.0f, y, ldy);
    return;
  }
  DSV3_CHECK(w.dtype == DType::BF16, "matmul: weights of dtype {} are not supported",
             dtype_name(w.dtype));
  large_bf16(x, m, ldx, w, y, ldy, accumulate);
}

void matmul_wt_jobs(std::span<const GemvJob> jobs) {
  bool small = true;
  for (const GemvJob& j : jobs) {
    DSV3_CHECK(j.w.dtype == DType::F32 || j.w.dtype == DType::BF16,
               "matmul: weights of dtype {} are not supported", dtype_name(j.w.dtype));
    small &= j.m <= kSmallRows;
  }
  if (small) {
    std::vector<GemvJob> live;
    for (const GemvJob& j : jobs)
      if (j.m > 0 && j.w.rows > 0) live.push_back(j);
    return run_jobs(live);
  }
  // Many jobs (the per-head value products of a prefill): one whole job per thread at a time,
  // each GEMM on its own thread, rather than every small GEMM synchronising all threads.
  // Few jobs: one after another, each GEMM parallel inside.
  const int threads = omp_get_max_threads();
  if (threads > 1 && !omp_in_parallel() && int64_t(jobs.size()) >= 2 * threads) {
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < jobs.size(); ++i) {
      const GemvJob& j = jobs[i];
      matmul_wt(j.x, j.m, j.ldx, j.w, j.y, j.ldy, j.accumulate);
    }
    return;
  }
  for (const GemvJob& j : jobs) matmul_wt(j.x, j.m, j.ldx, j.w, j.y, j.ldy, j.accumulate);
}

void matmul_w(const float* x, int64_t m, int64_t ldx, const MatRef& w, float* y, int64_t ldy) {
  if (m == 0 || w.cols == 0) return;
  if (w.dtype == DType::F32 && m <= kSmallRows) {
    const float* wp = static_cast<const float*>(w.data);
    for (int64_t i = 0; i < m; ++i) {
      float* yi = y + i * ldy;
      for (int64_t c = 0; c < w.cols; ++c) yi[c] = 0.0f;
      for (int64_t r = 0; r < w.rows; ++r) {
        const float a = x[i * ldx + r];
        const float* wr = wp + r * w.ld;
        for (int64_t c = 0; c < w.cols; ++c) yi[c] += a * wr[c];
      }
    }
    return;
  }
  if (w.dtype == DType::F32) {
    ops::gemm(false, false, m, w.cols, w.rows, 1.0f, x, ldx, static_cast<const float*>(w.data),
              w.ld, 0.0f, y, ldy);
    return;
  }
  DSV3_CHECK(w.dtype == DType::BF16, "matmul: weights of dtype {} are not supported",
             dtype_name(w.dtype));
  const uint16_t* wp = static_cast<const uint16_t*>(w.data);
  if (m > kSmallRows) return large_bf16(x, m, ldx, w, y, ldy, false, /*plain=*/true);
  // y_i = sum_r x_i[r] * w[r, :], exact F32 products of the widened weights.
  int64_t c0 = 0;
#if defined(__AVX512F__)
  // Blocks of 128 outputs stay in 8 registers while the rows stream by.
  constexpr int kBlock = 8;
  for (; c0 + 16 * kBlock <= w.cols; c0 += 16 * kBlock)
    for (int64_t i = 0; i < m; ++i) {
      __m512 acc[kBlock];
      for (int b = 0; b < kBlock; ++b) acc[b] = _mm512_setzero_ps();
      for (int64_t r = 0; r < w.rows; ++r) {
        const __m512 a = _mm512_set1_ps(x[i * ldx + r]);
        const uint16_t* wr = wp + r * w.ld + c0;
        for (int b = 0; b < kBlock; ++b) acc[b] = _mm512_fmadd_ps(a, load_bf16(wr + 16 * b), acc[b]);
      }
      for (int b = 0; b < kBlock; ++b) _mm512_storeu_ps(y + i * ldy + c0 + 16 * b, acc[b]);
    }
#endif
  for (int64_t i = 0; i < m; ++i) {
    float* yi = y + i * ldy;
    for (int64_t c = c0; c < w.cols; ++c) yi[c] = 0.0f;
    for (int64_t r = 0; r < w.rows; ++r) {
      const float a = x[i * ldx + r];
      const uint16_t* wr = wp + r * w.ld;
      for (int64_t c = c0; c < w.cols; ++c) yi[c] += a * bf16_to_f32(wr[c]);
    }
  }
}

}  // namespace dsv3::infer
