// Op cases for the MoE permutation moves and the optimizer arithmetic (kernels/ops.h), in the
// same three modes as op_cases.cpp (see kernels/op_cases.h).
//
// The MoE cases route tokens the way the layer does: K distinct experts per token, permuted
// into expert order by a counting sort stable in token order (model/moe.cpp). Edge cases: one
// token, K = 1, row lengths that are no multiple of 4 or 16 (the CUDA gather's float4 path and
// its scalar fallback), and far more experts than assignments, so that most experts get no
// rows at all.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/op_cases.h"
#include "kernels/reference.h"

namespace dsv3::optest {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The permutation of N tokens' K assignments into expert order.
struct Routing {
  std::vector<int32_t> src_row;  // [N*K] token feeding permuted row r
  std::vector<int32_t> row_of;   // [N*K] permuted row of assignment (t, j) at t*K + j
};

Routing route(Rng& rng, int64_t n, int64_t k, int64_t experts) {
  std::vector<int32_t> idx(static_cast<size_t>(n * k)), pool(static_cast<size_t>(experts));
  for (int64_t t = 0; t < n; ++t) {
    std::iota(pool.begin(), pool.end(), 0);
    for (int64_t j = 0; j < k; ++j) {  // partial Fisher-Yates: K distinct experts, as top-k
      std::swap(pool[size_t(j)], pool[size_t(uniform_int(rng, j, experts - 1))]);
      idx[size_t(t * k + j)] = pool[size_t(j)];
    }
  }
  std::vector<int64_t> off(size_t(experts + 1), 0);
  for (int32_t e : idx) off[size_t(e + 1)]++;
  for (int64_t e = 0; e < experts; ++e) off[size_t(e + 1)] += off[size_t(e)];
  Routing r{std::vector<int32_t>(idx.size()), std::vector<int32_t>(idx.size())};
  for (int64_t a = 0; a < n * k; ++a) {
    const int64_t row = off[size_t(idx[size_t(a)])]++;
    r.src_row[size_t(row)] = int32_t(a / k);
    r.row_of[size_t(a)] = int32_t(row);
  }
  return r;
}

// dims: tokens N, experts per token K, row length d, experts E (E >= K)
Problem make_routed(const Dims& dims, Rng& rng) {
  const Routing r = route(rng, dims[0], dims[1], dims[3]);
  Problem p;
  p.tensors["src_row"] = int_tensor(r.src_row);
  p.tensors["row_of"] = int_tensor(r.row_of);
  return p;
}

std::function<std::vector<Dims>(Rng&)> moe_shapes() {
  return shapes({{1, 1, 1, 1},
                 {1, 1, 5, 4},
                 {3, 1, 17, 1},
                 {5, 2, 3, 8},
                 {7, 4, 33, 64},
                 {16, 8, 64, 16},
                 {33, 6, 130, 9},
                 {4, 8, 256, 256},
                 {3, 20, 12, 24}},  // more picks than the CUDA sums keep in registers
                4, [](Rng& r) {
                  const int64_t k = uniform_int(r, 1, 8);
                  return Dims{uniform_int(r, 1, 80), k, uniform_int(r, 1, 300),
                              uniform_int(r, k, 70)};
                });
}

// A perf shape: 2048 tokens, V3's 8 of 64 experts, a 1024-wide hidden state.
const Dims kMoeBench{2048, 8, 1024, 64};

double moe_bytes(const Dims& d, double permuted_rows_moved, double token_rows_moved) {
  return 4.0 * d[2] * (permuted_rows_moved * d[0] * d[1] + token_rows_moved * d[0]);
}

Tensor zeros_like(const Tensor& t) { return Tensor::zeros(t.shape(), t.dtype(), t.device()); }

std::vector<double> f64(const Tensor& t) {
  return std::vector<double>(t.f32(), t.f32() + t.numel());
}

std::vector<double> value(const Problem& p, const Vars& vars, const std::string& name) {
  auto it = vars.find(name);
  return it != vars.end() ? it->second : f64(p[name]);
}

// Inputs of one AdamW step as the optimizer computes them (train/adamw.cpp) for step `step`,
// with weight decay or without, clipped or not.
ops::AdamWScalars adamw_scalars(const Problem& p) {
  const double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, step = p.scalar("step");
  const double bc1 = 1.0 - std::pow(beta1, step), bc2 = 1.0 - std::pow(beta2, step);
  ops::AdamWScalars s{};
  s.decay = p.scalar("decay") != 0 ? float(1.0 - lr * 0.1) : 1.0f;
  s.b1 = float(beta1);
  s.b2 = float(beta2);
  s.clip_scale = float(p.scalar("clip_scale"));
  s.step_size = float(lr / bc1);
  s.inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  s.eps = 1e-8f;
  return s;
}

}  // namespace

std::vector<OpCase> moe_optimizer_op_cases() {
  std::vector<OpCase> cases;
  const Tolerance kExact{0, 0};
  // Up to K = 8 float32 roundings, each of a term no larger than the output (plus the value
  // accumulated into): a few ulps of the output's scale. A wrong row, weight or a missing term
  // moves an element by a whole term, about 1e5 times this.
  const Tolerance kSumK{2e-6, 2e-6};
  // A dot product over d <= 300 values (see op_cases.cpp: sqrt(d) * 6e-8 of the terms' scale).
  const Tolerance kDot{1e-5, 1e-5};
  const std::string dims = "tokens, experts per token, dim, experts";

  cases.push_back(OpCase{
      "moe_gather_rows", dims, moe_shapes(),
      [](const Dims& d, Rng& rng) {
        Problem p = make_routed(d, rng);
        p.tensors["x"] = randn({d[0], d[2]}, rng);
        p.tensors["x_perm"] = filled({d[0] * d[1], d[2]}, kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.moe_gather_rows(p["x"], p["src_row"].i32(), p["x_perm"]);
      },
      {"x_perm"}, {kExact, kExact}, "a copy", kMoeBench, [](const Dims&) { return 0.0; },
      [](const Dims& d) { return moe_bytes(d, 2, 0); }});

  // The combine, accumulating into out, and into the MoE block's output: out = residual + (out
  // + the weighted picks).
  for (const bool with_residual : {false, true}) {
    cases.push_back(OpCase{
        with_residual ? "moe_combine_residual" : "moe_combine", dims, moe_shapes(),
        [with_residual](const Dims& d, Rng& rng) {
          Problem p = make_routed(d, rng);
          p.tensors["y_perm"] = randn({d[0] * d[1], d[2]}, rng);
          p.tensors["weights"] = randn({d[0], d[1]}, rng);
          p.tensors["out"] = randn({d[0], d[2]}, rng);  // accumulated into
          if (with_residual) p.tensors["residual"] = randn({d[0], d[2]}, rng);
          return p;
        },
        [with_residual](const OpSet& o, Problem& p) {
          o.moe_combine(p["y_perm"], p["row_of"].i32(), p["weights"], p["out"],
                        with_residual ? &p["residual"] : nullptr);
        },
        {"out"}, {kSumK, kSumK}, "K float32 products (and the residual) added in order",
        kMoeBench,
        [with_residual](const Dims& d) {
          return 2.0 * d[0] * d[1] * d[2] + (with_residual ? d[0] * d[2] : 0);
        },
        [with_residual](const Dims& d) { return moe_bytes(d, 1, with_residual ? 3 : 2); }});
  }

  cases.push_back(OpCase{
      "moe_combine_backward", dims, moe_shapes(),
      [](const Dims& d, Rng& rng) {
        Problem p = make_routed(d, rng);
        p.tensors["d_out"] = randn({d[0], d[2]}, rng);
        p.tensors["y_perm"] = randn({d[0] * d[1], d[2]}, rng);
        p.tensors["weights"] = randn({d[0], d[1]}, rng);
        p.tensors["d_y_perm"] = filled({d[0] * d[1], d[2]}, kNaN);
        p.tensors["d_weights"] = filled({d[0], d[1]}, kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.moe_combine_backward(p["d_out"], p["y_perm"], p["row_of"].i32(), p["weights"],
                               p["d_y_perm"], p["d_weights"]);
      },
      {"d_y_perm", "d_weights"}, {kDot, kDot},
      "d_y_perm is one rounded product (exact); d_weights a float32 dot product over dim",
      kMoeBench, [](const Dims& d) { return 3.0 * d[0] * d[1] * d[2]; },
      [](const Dims& d) { return moe_bytes(d, 2, 1); }});

  cases.push_back(OpCase{
      "moe_scatter_add", dims, moe_shapes(),
      [](const Dims& d, Rng& rng) {
        Problem p = make_routed(d, rng);
        p.tensors["d_x_perm"] = randn({d[0] * d[1], d[2]}, rng);
        p.tensors["d_x"] = randn({d[0], d[2]}, rng);  // accumulated into
        p.scalars["k"] = double(d[1]);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.moe_scatter_add(p["d_x_perm"], p["row_of"].i32(), int64_t(p.scalar("k")), p["d_x"]);
      },
      {"d_x"}, {kSumK, kSumK}, "K float32 additions to the output in order", kMoeBench,
      [](const Dims& d) { return 1.0 * d[0] * d[1] * d[2]; },
      [](const Dims& d) { return moe_bytes(d, 1, 2); }});

  // sum_squares: sizes around the CPU's 64 chunks and the CUDA grid's 65536 threads, and a
  // nonzero starting value. The float64 result is compared after rounding to float32: a
  // missing or doubled element changes it by g_i^2 / sum, about 1/n, far above float32's 6e-8
  // for every n drawn here.
  cases.push_back(OpCase{
      "sum_squares", "n, with starting value",
      shapes({{1, 0}, {17, 1}, {63, 0}, {64, 0}, {65, 1}, {65536, 0}, {65537, 1}}, 3,
             [](Rng& r) { return Dims{uniform_int(r, 1, 300000), uniform_int(r, 0, 1)}; }),
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["g"] = randn({d[0]}, rng, 1e-2);
        p.tensors["sum"] = filled({1}, kNaN);
        p.scalars["acc"] = d[1] ? 0.125 * double(d[0]) * 1e-4 : 0.0;
        return p;
      },
      [](const OpSet& o, Problem& p) {
        // The sum is a host value on every backend: it replaces the (host) "sum" tensor.
        Tensor sum = Tensor::zeros({1});
        sum.f32()[0] = float(o.sum_squares(p["g"], p.scalar("acc")));
        p.tensors["sum"] = sum;
      },
      {"sum"}, {{2.4e-7, 0}, {2.4e-7, 0}},
      "float64 sums in a different order, then one rounding to float32 (an ulp either way)",
      {1 << 24, 0}, [](const Dims& d) { return 2.0 * d[0]; },
      [](const Dims& d) { return 4.0 * d[0]; }});

  cases.push_back(OpCase{
      "scale_inplace", "n", shapes({{1}, {17}, {4096}}, 2, [](Rng& r) {
        return Dims{uniform_int(r, 1, 100000)};
      }),
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["x"] = randn({d[0]}, rng);
        return p;
      },
      [](const OpSet& o, Problem& p) { o.scale_inplace(p["x"], 1.0f / 3.0f); }, {"x"},
      {kExact, kExact}, "one correctly rounded float32 product", {1 << 22},
      [](const Dims& d) { return double(d[0]); }, [](const Dims& d) { return 8.0 * d[0]; }});

  // AdamW: early steps (strong bias correction) and late ones, with and without decay and
  // clipping. Every 7th element has a zero gradient and zero moments (a parameter the batch
  // did not touch): its update must be exactly the decay.
  cases.push_back(OpCase{
      "adamw_update", "n, step, decay, clipped",
      shapes({{1, 1, 0, 0}, {7, 1, 1, 1}, {17, 2, 1, 0}, {1000, 500, 0, 1}}, 4,
             [](Rng& r) {
               return Dims{uniform_int(r, 1, 100000), uniform_int(r, 1, 3000),
                           uniform_int(r, 0, 1), uniform_int(r, 0, 1)};
             }),
      [](const Dims& d, Rng& rng) {
        Problem p;
        Tensor g = randn({d[0]}, rng, 1e-2), m = randn({d[0]}, rng, 1e-3);
        Tensor v = randn({d[0]}, rng, 1e-4);
        for (int64_t i = 0; i < d[0]; ++i) {
          v.f32()[i] = v.f32()[i] * v.f32()[i];  // second moments are squares
          if (i % 7 == 6) g.f32()[i] = m.f32()[i] = v.f32()[i] = 0.0f;
        }
        p.tensors["p"] = randn({d[0]}, rng, 0.02);
        p.tensors["g"] = g;
        p.tensors["m"] = m;
        p.tensors["v"] = v;
        p.scalars["step"] = double(d[1]);
        p.scalars["decay"] = double(d[2]);
        p.scalars["clip_scale"] = d[3] ? 0.37 : 1.0;
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.adamw_update(p["p"], p["g"], p["m"], p["v"], adamw_scalars(p));
      },
      {"p", "m", "v"}, {{2e-6, 2e-6}, {2e-6, 2e-6}},
      "a chain of about eight float32 roundings (moments, sqrt, division) per element",
      {1 << 24, 100, 1, 1}, [](const Dims& d) { return 14.0 * d[0]; },
      [](const Dims& d) { return 28.0 * d[0]; }});

  return cases;
}

std::vector<GradCase> moe_grad_cases() {
  std::vector<GradCase> cases;
  // The combine is bilinear in (y_perm, weights): its backward against central differences of
  // the float64 reference combine.
  cases.push_back(GradCase{
      "moe_combine", {{1, 1, 1, 1}, {3, 2, 5, 4}, {5, 3, 7, 9}},
      [](const Dims& d, Rng& rng) {
        Problem p = make_routed(d, rng);
        p.tensors["y_perm"] = randn({d[0] * d[1], d[2]}, rng);
        p.tensors["weights"] = randn({d[0], d[1]}, rng);
        p.tensors["r_out"] = randn({d[0], d[2]}, rng);
        return p;
      },
      {"y_perm", "weights"},
      [](const Problem& p, const Vars& v) {
        const Dims& d = p.dims;
        std::vector<double> out(size_t(d[0] * d[2]), 0.0);
        ref::t::moe_combine(value(p, v, "y_perm").data(), p["row_of"].i32(),
                            value(p, v, "weights").data(), d[0], d[1], d[2], out.data());
        double s = 0.0;
        for (size_t i = 0; i < out.size(); ++i) s += out[i] * double(p["r_out"].f32()[i]);
        return s;
      },
      [](const OpSet& o, Problem& p) {
        p.tensors["d_y_perm"] = zeros_like(p["y_perm"]);
        p.tensors["d_weights"] = zeros_like(p["weights"]);
        o.moe_combine_backward(p["r_out"], p["y_perm"], p["row_of"].i32(), p["weights"],
                               p["d_y_perm"], p["d_weights"]);
      }});

  // The gather's adjoint is the scatter-add over the inverse permutation.
  cases.push_back(GradCase{
      "moe_gather_rows", {{1, 1, 1, 1}, {3, 2, 5, 4}, {6, 3, 4, 11}},
      [](const Dims& d, Rng& rng) {
        Problem p = make_routed(d, rng);
        p.tensors["x"] = randn({d[0], d[2]}, rng);
        p.tensors["r_x_perm"] = randn({d[0] * d[1], d[2]}, rng);
        return p;
      },
      {"x"},
      [](const Problem& p, const Vars& v) {
        const Dims& d = p.dims;
        const std::vector<double> x = value(p, v, "x");
        const int32_t* src = p["src_row"].i32();
        double s = 0.0;
        for (int64_t r = 0; r < d[0] * d[1]; ++r)
          for (int64_t i = 0; i < d[2]; ++i)
            s += double(p["r_x_perm"].f32()[r * d[2] + i]) * x[size_t(src[r] * d[2] + i)];
        return s;
      },
      [](const OpSet& o, Problem& p) {
        p.tensors["d_x"] = zeros_like(p["x"]);
        o.moe_scatter_add(p["r_x_perm"], p["row_of"].i32(), p.dims[1], p["d_x"]);
      }});
  return cases;
}

}  // namespace dsv3::optest
