// The decode step's fused launches against the separate kernels they replace, bit for bit:
//   - a GEMV with a fused RMSNorm (Gemv::norm) = rmsnorm_rows, then the GEMV;
//   - the routed experts' GEMV with the shared expert as one more slot = the two GEMVs apart;
//   - experts_down (down projections, weighted sum, residual add) = the down GEMVs, then
//     combine_experts;
//   - the query absorption with the latent write = write_latents, then absorb_query;
//   - router_step (norm, router logits, expert choice) = rmsnorm_rows, then gemv, then route,
//     launched twice in a row (its arrival counts must be back at zero after each launch).
// The fused forms are only worth having if a decode step gives the same tokens with them, so
// equality is exact (memcmp), over float32 and BF16 weights, the vector and scalar paths, and
// the one-row and four-row GEMV blocks.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/device.h"
#include "infer/cuda/decode_kernels.h"
#include "model/expert_selection.h"

namespace dsv3::infer {
namespace {

#define REQUIRE_GPU() \
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device"

// Device allocations freed at the end of a test.
class Arena {
 public:
  ~Arena() {
    for (void* p : ptrs_) cudaFree(p);
  }
  template <typename T>
  T* up(const std::vector<T>& v) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, v.size() * sizeof(T) + 16), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    ptrs_.push_back(p);
    return static_cast<T*>(p);
  }
  float* zeros(size_t n) { return up(std::vector<float>(n, 0.0f)); }

 private:
  std::vector<void*> ptrs_;
};

template <typename T>
std::vector<T> down(const T* p, size_t n) {
  std::vector<T> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

template <typename T>
void expect_same_bits(const std::vector<T>& a, const std::vector<T>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      ADD_FAILURE() << what << " differs at " << i << ": " << a[i] << " vs " << b[i];
      return;
    }
}

std::vector<float> normal(size_t n, std::mt19937_64& rng, float stddev = 1.0f) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Weights [rows, cols] as float32 values, or their BF16 bits (the upper halves).
struct HostMat {
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
};
HostMat weights(int64_t rows, int64_t cols, std::mt19937_64& rng) {
  HostMat m;
  m.f32 = normal(size_t(rows * cols), rng, 0.1f);
  for (float& x : m.f32) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    m.bf16.push_back(uint16_t(u >> 16));
  }
  return m;
}
const void* up_mat(Arena& a, const HostMat& m, bool bf16) {
  return bf16 ? static_cast<const void*>(a.up(m.bf16)) : static_cast<const void*>(a.up(m.f32));
}

TEST(CudaDecodeFusion, NormInTheGemvEqualsTheNormThenTheGemv) {
  REQUIRE_GPU();
  std::mt19937_64 rng(3);
  for (bool bf16 : {false, true}) {
    for (int64_t in : {48, 52, 1536}) {         // 52: the scalar path
      for (int64_t rows : {1, 3, 6}) {          // 6: four-row blocks and a partial one
        for (int mode = 0; mode < 3; ++mode) {  // plain, second matrix, SwiGLU
          SCOPED_TRACE("bf16 " + std::to_string(bf16) + ", in " + std::to_string(in) + ", rows " +
                       std::to_string(rows) + ", mode " + std::to_string(mode));
          const int64_t out = 40, out2 = 24, ldx = in + 4;
          Arena a;
          std::vector<float> xh = normal(size_t(rows * ldx), rng, 3.0f);
          const float* x = a.up(xh);
          const float* nw = a.up(normal(size_t(in), rng));
          const HostMat w = weights(out, in, rng), w2 = weights(out2, in, rng),
                        wu = weights(out, in, rng);
          const void* wd = up_mat(a, w, bf16);
          const void* w2d = up_mat(a, w2, bf16);
          const void* wud = up_mat(a, wu, bf16);
          const float eps = 1e-6f;
          // Separate: the norm, then the GEMV of the normalised rows.
          float* xn = a.zeros(size_t(rows * in));
          ASSERT_EQ(gpu::rmsnorm_rows(x, ldx, nw, rows, in, eps, xn, in, nullptr), cudaSuccess);
          float* y_sep = a.zeros(size_t(rows * out));
          float* y2_sep = a.zeros(size_t(rows * out2));
          gpu::Gemv p;
          p.x = xn;
          p.ldx = in;
          p.w = wd;
          p.w_bf16 = bf16;
          p.in = in;
          p.y = y_sep;
          p.ldy = out;
          p.rows = rows;
          p.out = out;
          if (mode == 1) p.second = {w2d, out2, y2_sep, out2};
          if (mode == 2) {
            p.swiglu = true;
            p.up = wud;
          }
          ASSERT_EQ(gpu::gemv(p, nullptr), cudaSuccess);
          // Fused: the raw rows and the norm's weight.
          float* y_fused = a.zeros(size_t(rows * out));
          float* y2_fused = a.zeros(size_t(rows * out2));
          p.x = x;
          p.ldx = ldx;
          p.y = y_fused;
          if (mode == 1) p.second.y = y2_fused;
          p.norm = {nw, eps};
          ASSERT_EQ(gpu::gemv(p, nullptr), cudaSuccess);
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          expect_same_bits(down(y_fused, size_t(rows * out)), down(y_sep, size_t(rows * out)), "y");
          if (mode == 1)
            expect_same_bits(down(y2_fused, size_t(rows * out2)), down(y2_sep, size_t(rows * out2)),
                             "second y");
        }
      }
    }
  }
}

// A MoE layer's shapes at decode: D inputs, `width` per expert, K picks of E experts per token.
struct ExpertLayer {
  int64_t d, width, experts, k;
};

TEST(CudaDecodeFusion, SharedSlotAndExpertsDownEqualTheSeparateLaunches) {
  REQUIRE_GPU();
  std::mt19937_64 rng(5);
  const std::vector<ExpertLayer> layers = {
      {64, 32, 8, 2}, {40, 24, 16, 6}, {96, 16, 12, 9}, {264, 272, 10, 6}};
  for (const ExpertLayer& L : layers) {
    for (bool bf16 : {false, true}) {
      for (int64_t n : {1, 3}) {
        SCOPED_TRACE("d " + std::to_string(L.d) + ", k " + std::to_string(L.k) + ", bf16 " +
                     std::to_string(bf16) + ", rows " + std::to_string(n));
        Arena a;
        // Expert e: gate, up [width, d], down [d, width]; the shared expert has the same shapes.
        std::vector<HostMat> gate, upm, dn;
        std::vector<const void*> gate_p, up_p, down_p;
        for (int64_t e = 0; e <= L.experts; ++e) {  // entry E: the shared expert
          gate.push_back(weights(L.width, L.d, rng));
          upm.push_back(weights(L.width, L.d, rng));
          dn.push_back(weights(L.d, L.width, rng));
          gate_p.push_back(up_mat(a, gate.back(), bf16));
          up_p.push_back(up_mat(a, upm.back(), bf16));
          down_p.push_back(up_mat(a, dn.back(), bf16));
        }
        const void* shared_gate = gate_p.back();
        const void* shared_up = up_p.back();
        const void* shared_down = down_p.back();
        gate_p.pop_back(), up_p.pop_back(), down_p.pop_back();
        const void* const* gate_t = a.up(gate_p);
        const void* const* up_t = a.up(up_p);
        const void* const* down_t = a.up(down_p);
        std::vector<int32_t> chosen;
        std::uniform_int_distribution<int32_t> pick(0, int32_t(L.experts - 1));
        for (int64_t i = 0; i < n * L.k; ++i) chosen.push_back(pick(rng));
        const int32_t* chosen_d = a.up(chosen);
        const float* gates = a.up(normal(size_t(n * L.k), rng));
        const float* xn = a.up(normal(size_t(n * L.d), rng));
        const std::vector<float> residual0 = normal(size_t(n * L.d), rng);

        // Separate: routed gate/up (K slots per token), shared gate/up, routed downs, shared
        // down, combine.
        float* g_routed = a.zeros(size_t(n * L.k * L.width));
        float* g_shared = a.zeros(size_t(n * L.width));
        gpu::Gemv p;
        p.table_idx = chosen_d;
        p.w_bf16 = bf16;
        p.rows = n * L.k;
        p.x = xn;
        p.ldx = L.d;
        p.x_row_div = int(L.k);
        p.table = gate_t;
        p.up_table = up_t;
        p.swiglu = true;
        p.in = L.d;
        p.y = g_routed;
        p.ldy = L.width;
        p.out = L.width;
        ASSERT_EQ(gpu::gemv(p, nullptr), cudaSuccess);
        gpu::Gemv ps;
        ps.x = xn;
        ps.ldx = L.d;
        ps.w = shared_gate;
        ps.up = shared_up;
        ps.swiglu = true;
        ps.w_bf16 = bf16;
        ps.in = L.d;
        ps.y = g_shared;
        ps.ldy = L.width;
        ps.rows = n;
        ps.out = L.width;
        ASSERT_EQ(gpu::gemv(ps, nullptr), cudaSuccess);
        float* y_routed = a.zeros(size_t(n * L.k * L.d));
        gpu::Gemv pd;
        pd.table_idx = chosen_d;
        pd.table = down_t;
        pd.w_bf16 = bf16;
        pd.rows = n * L.k;
        pd.x = g_routed;
        pd.ldx = L.width;
        pd.in = L.width;
        pd.y = y_routed;
        pd.ldy = L.d;
        pd.out = L.d;
        ASSERT_EQ(gpu::gemv(pd, nullptr), cudaSuccess);
        float* shared_out = a.zeros(size_t(n * L.d));
        gpu::Gemv psd;
        psd.x = g_shared;
        psd.ldx = L.width;
        psd.w = shared_down;
        psd.w_bf16 = bf16;
        psd.in = L.width;
        psd.y = shared_out;
        psd.ldy = L.d;
        psd.rows = n;
        psd.out = L.d;
        ASSERT_EQ(gpu::gemv(psd, nullptr), cudaSuccess);
        float* res_sep = a.up(residual0);
        ASSERT_EQ(gpu::combine_experts(y_routed, nullptr, gates, n, int(L.k), L.d, shared_out,
                                       res_sep, nullptr),
                  cudaSuccess);
        float* res_sep_routed = a.up(residual0);  // the routed experts alone
        ASSERT_EQ(gpu::combine_experts(y_routed, nullptr, gates, n, int(L.k), L.d, nullptr,
                                       res_sep_routed, nullptr),
                  cudaSuccess);

        // Fused: the shared expert as slot K of the gate/up launch ...
        const int64_t slots = L.k + 1;
        float* g_slots = a.zeros(size_t(n * slots * L.width));
        p.rows = n * slots;
        p.x_row_div = int(slots);
        p.y = g_slots;
        p.picks = L.k;
        p.shared_w = shared_gate;
        p.shared_up = shared_up;
        ASSERT_EQ(gpu::gemv(p, nullptr), cudaSuccess);
        const std::vector<float> gs = down(g_slots, size_t(n * slots * L.width));
        const std::vector<float> gr = down(g_routed, size_t(n * L.k * L.width));
        const std::vector<float> gsh = down(g_shared, size_t(n * L.width));
        for (int64_t t = 0; t < n; ++t) {
          const auto row = [&](const std::vector<float>& v, int64_t r) {
            return std::vector<float>(v.begin() + r * L.width, v.begin() + (r + 1) * L.width);
          };
          for (int64_t j = 0; j < L.k; ++j)
            expect_same_bits(row(gs, t * slots + j), row(gr, t * L.k + j), "routed slot");
          expect_same_bits(row(gs, t * slots + L.k), row(gsh, t), "shared slot");
        }
        // ... and experts_down over the slots, from the shared weights or a shared output.
        gpu::ExpertsDown ed;
        ed.g = g_slots;
        ed.width = L.width;
        ed.table = down_t;
        ed.chosen = chosen_d;
        ed.gates = gates;
        ed.w_bf16 = bf16;
        ed.rows = n;
        ed.picks = int(L.k);
        ed.experts = int(L.experts);
        ed.dim = L.d;
        ed.shared_w = shared_down;
        ed.residual = a.up(residual0);
        ASSERT_EQ(gpu::experts_down(ed, nullptr), cudaSuccess);
        expect_same_bits(down(ed.residual, size_t(n * L.d)), down(res_sep, size_t(n * L.d)),
                         "experts_down, shared slot");
        ed.g = g_routed;  // K slots per token
        ed.shared_w = nullptr;
        ed.shared_out = shared_out;
        ed.residual = a.up(residual0);
        ASSERT_EQ(gpu::experts_down(ed, nullptr), cudaSuccess);
        expect_same_bits(down(ed.residual, size_t(n * L.d)), down(res_sep, size_t(n * L.d)),
                         "experts_down, shared output");
        ed.shared_out = nullptr;
        ed.residual = a.up(residual0);
        ASSERT_EQ(gpu::experts_down(ed, nullptr), cudaSuccess);
        expect_same_bits(down(ed.residual, size_t(n * L.d)), down(res_sep_routed, size_t(n * L.d)),
                         "experts_down, no shared expert");
      }
    }
  }
}

TEST(CudaDecodeFusion, LatentWriteInTheAbsorptionEqualsWriteLatents) {
  REQUIRE_GPU();
  std::mt19937_64 rng(7);
  const int heads = 3, nope = 16, v = 8, rank = 40, rope = 8, width = rank + rope, capacity = 12;
  for (bool cache_bf16 : {false, true}) {
    for (int64_t rows : {1, 2}) {
      SCOPED_TRACE("bf16 cache " + std::to_string(cache_bf16) + ", rows " + std::to_string(rows));
      Arena a;
      const size_t cache_bytes = size_t(2 * capacity * width) * (cache_bf16 ? 2 : 4);  // 2 layers
      std::vector<void*> bases;
      std::vector<int32_t> pos, caps;
      for (int64_t r = 0; r < rows; ++r) {
        bases.push_back(a.zeros(cache_bytes / 4));
        pos.push_back(int32_t(3 + r));
        caps.push_back(capacity);
      }
      const std::vector<float> cos_h = normal(size_t(capacity * rope / 2), rng);
      const std::vector<float> sin_h = normal(size_t(capacity * rope / 2), rng);
      gpu::RopeTable rt{a.up(cos_h), a.up(sin_h), rope};
      gpu::CacheRows cache;
      cache.base = a.up(bases);
      cache.capacity = a.up(caps);
      cache.pos = a.up(pos);
      cache.layer = 1;
      cache.width = width;
      cache.bf16 = cache_bf16;
      const float* kv_a = a.up(normal(size_t(rows * width), rng, 2.0f));
      const float* kv_norm = a.up(normal(size_t(rank), rng));
      const HostMat kv_b = weights(heads * (nope + v), rank, rng);
      gpu::AbsorbQuery aq;
      aq.q = a.up(normal(size_t(rows * heads * (nope + rope)), rng));
      aq.kv_b = a.up(kv_b.f32);
      aq.pos = cache.pos;
      aq.rope = rt;
      aq.rows = rows;
      aq.heads = heads;
      aq.nope = nope;
      aq.v = v;
      aq.rank = rank;
      aq.qcat = a.zeros(size_t(rows * heads * width));
      ASSERT_EQ(gpu::write_latents(kv_a, kv_norm, 1e-6f, rows, rank, rt, cache, nullptr),
                cudaSuccess);
      ASSERT_EQ(gpu::absorb_query(aq, nullptr), cudaSuccess);
      std::vector<std::vector<float>> want;
      for (void* b : bases) {
        want.push_back(down(static_cast<float*>(b), cache_bytes / 4));
        const std::vector<char> zero(cache_bytes, 0);
        ASSERT_EQ(cudaMemcpy(b, zero.data(), cache_bytes, cudaMemcpyHostToDevice), cudaSuccess);
      }
      const std::vector<float> qcat_want = down(aq.qcat, size_t(rows * heads * width));
      aq.kv_a = kv_a;
      aq.kv_a_norm = kv_norm;
      aq.eps = 1e-6f;
      aq.cache = cache;
      aq.qcat = a.zeros(size_t(rows * heads * width));
      ASSERT_EQ(gpu::absorb_query(aq, nullptr), cudaSuccess);
      for (size_t r = 0; r < bases.size(); ++r)
        expect_same_bits(down(static_cast<float*>(bases[r]), cache_bytes / 4), want[r], "cache");
      expect_same_bits(down(aq.qcat, size_t(rows * heads * width)), qcat_want, "qcat");
      // The written row is not all zeros: the check above compares something.
      const std::vector<float> c0 = down(static_cast<float*>(bases[0]), cache_bytes / 4);
      bool nonzero = false;
      for (float x : c0) nonzero = nonzero || x != 0.0f;
      EXPECT_TRUE(nonzero);
    }
  }
}

struct RouterShape {
  std::string name;
  ExpertSelection select;
  bool sigmoid, norm_topk;
  int64_t in;
};

TEST(CudaDecodeFusion, RouterStepEqualsTheNormTheGemvAndTheRoute) {
  REQUIRE_GPU();
  std::mt19937_64 rng(9);
  const std::vector<RouterShape> shapes = {
      {"bench-1b-like", {32, 8, 4, 6, true}, true, true, 1536},
      {"v3-like, 256 experts", {256, 8, 4, 8, true}, true, true, 264},
      {"softmax, scalar path", {64, 1, 1, 6, false}, false, false, 52},
      {"a few experts", {4, 1, 1, 2, true}, true, true, 40},
  };
  for (const RouterShape& sh : shapes) {
    for (bool bf16 : {false, true}) {
      for (int64_t rows : {1, 3}) {
        SCOPED_TRACE(sh.name + ", bf16 " + std::to_string(bf16) + ", rows " + std::to_string(rows));
        const int64_t e = sh.select.experts, k = sh.select.k, in = sh.in;
        Arena a;
        const float* x = a.up(normal(size_t(rows * in), rng, 2.0f));
        const float* nw = a.up(normal(size_t(in), rng));
        const HostMat w = weights(e, in, rng);
        const void* wd = up_mat(a, w, bf16);
        gpu::Route r;
        r.bias = a.up(normal(size_t(e), rng, 0.1f));
        r.rows = rows;
        r.select = sh.select;
        r.sigmoid = sh.sigmoid;
        r.norm_topk = sh.norm_topk;
        r.scaling = 2.5f;
        // Separate: the norm, the logits, the choice.
        float* xn = a.zeros(size_t(rows * in));
        ASSERT_EQ(gpu::rmsnorm_rows(x, in, nw, rows, in, 1e-6f, xn, in, nullptr), cudaSuccess);
        float* logits = a.zeros(size_t(rows * e));
        gpu::Gemv p;
        p.x = xn;
        p.ldx = in;
        p.w = wd;
        p.w_bf16 = bf16;
        p.in = in;
        p.y = logits;
        p.ldy = e;
        p.rows = rows;
        p.out = e;
        ASSERT_EQ(gpu::gemv(p, nullptr), cudaSuccess);
        r.logits = logits;
        r.chosen = a.up(std::vector<int32_t>(size_t(rows * k), -1));
        r.gates = a.zeros(size_t(rows * k));
        ASSERT_EQ(gpu::route(r, nullptr), cudaSuccess);
        const std::vector<int32_t> chosen_want = down(r.chosen, size_t(rows * k));
        const std::vector<float> gates_want = down(r.gates, size_t(rows * k));
        // Fused, twice.
        gpu::RouterStep rs;
        rs.x = x;
        rs.ldx = in;
        rs.norm_w = nw;
        rs.eps = 1e-6f;
        rs.w = wd;
        rs.w_bf16 = bf16;
        rs.in = in;
        rs.logits = a.zeros(size_t(rows * e));
        rs.arrived = a.up(std::vector<unsigned>(size_t(rows), 0u));
        rs.route = r;
        rs.route.logits = nullptr;
        for (int launch = 0; launch < 2; ++launch) {
          SCOPED_TRACE("launch " + std::to_string(launch));
          rs.xn = a.zeros(size_t(rows * in));
          rs.route.chosen = a.up(std::vector<int32_t>(size_t(rows * k), -1));
          rs.route.gates = a.zeros(size_t(rows * k));
          ASSERT_EQ(gpu::router_step(rs, nullptr), cudaSuccess);
          expect_same_bits(down(rs.xn, size_t(rows * in)), down(xn, size_t(rows * in)), "xn");
          expect_same_bits(down(rs.logits, size_t(rows * e)), down(logits, size_t(rows * e)),
                           "logits");
          EXPECT_EQ(down(rs.route.chosen, size_t(rows * k)), chosen_want);
          expect_same_bits(down(rs.route.gates, size_t(rows * k)), gates_want, "gates");
          EXPECT_EQ(down(rs.arrived, size_t(rows)), std::vector<unsigned>(size_t(rows), 0u));
        }
      }
    }
  }
}

TEST(CudaDecodeFusion, RejectsFusionsItCannotDo) {
  REQUIRE_GPU();
  float dummy[8] = {};
  gpu::Gemv p;
  p.x = dummy;
  p.w = dummy;
  p.y = dummy;
  p.in = 8;
  p.rows = 1;
  p.out = 1;
  p.norm.w = dummy;
  p.group = 1;  // a norm with groups
  EXPECT_EQ(gpu::gemv(p, nullptr), cudaErrorInvalidValue);
  p.group = 0;
  p.x_row_div = 2;  // a norm over shared input rows
  EXPECT_EQ(gpu::gemv(p, nullptr), cudaErrorInvalidValue);
  gpu::ExpertsDown ed;
  ed.rows = 1;
  ed.dim = 8;
  ed.picks = 0;  // no picks
  EXPECT_EQ(gpu::experts_down(ed, nullptr), cudaErrorInvalidValue);
  gpu::RouterStep rs;
  rs.in = 8;
  rs.route.rows = 1;
  rs.route.select = {gpu::kMaxRouterExperts + 1, 1, 1, 2, true};  // more experts than it holds
  EXPECT_EQ(gpu::router_step(rs, nullptr), cudaErrorInvalidValue);
  cudaGetLastError();
}

}  // namespace
}  // namespace dsv3::infer
