// Finite-difference checks of the model-level backwards built on the op table: the dense FFN,
// the router (gating weights and the sequence-wise balance loss) and a whole MoE layer (router,
// routed experts, shared experts). The float64 forwards here are written from DESIGN.md
// section 2 with the reference ops (kernels/reference.h); the analytic gradients come from the
// model code (model/ffn, model/router, model/moe) in float32.
//
// Routing is piecewise constant: a perturbation that changed the chosen experts would make the
// finite difference meaningless. The selection scores of random inputs are separated by ~1e-2
// while the perturbations move them by ~1e-5, and every float64 forward checks that it chose the
// same experts as the fast forward did; a flip is an error, never a silent pass.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>

#include <gtest/gtest.h>

#include "kernels/op_cases.h"
#include "kernels/reference.h"
#include "model/ffn.h"
#include "model/moe.h"
#include "model/router.h"

namespace dsv3::optest {
namespace {

void log(const std::string& what, const TestResult& r) {
  if (std::getenv("DSV3_OPTEST_LOG")) std::printf("%s\n%s", what.c_str(), r.log.c_str());
}

using ref::t::linear_forward;
using ref::t::swiglu_forward;

std::vector<double> value(const Problem& p, const Vars& v, const std::string& name) {
  auto it = v.find(name);
  if (it != v.end()) return it->second;
  const Tensor& t = p[name];
  return std::vector<double>(t.f32(), t.f32() + t.numel());
}

double dot(const std::vector<double>& y, const Tensor& r) {
  double s = 0.0;
  for (size_t i = 0; i < y.size(); ++i) s += y[i] * double(r.f32()[i]);
  return s;
}

// A Param whose value views the problem's tensor (so the fast code sees the same numbers).
Param param_of(Problem& p, const std::string& name) {
  return Param{p[name], Tensor::zeros(p[name].shape()), Tensor()};  // float32: no BF16 copy
}

// ---- The SwiGLU FFN: down(silu(gate(x)) * up(x)) ----

void add_swiglu(Problem& p, const std::string& prefix, int64_t hidden, int64_t width, Rng& rng) {
  p.tensors[prefix + "gate_up"] = randn({2 * width, hidden}, rng, 0.5);
  p.tensors[prefix + "down"] = randn({hidden, width}, rng, 0.5);
}

SwigluWeights swiglu_of(Problem& p, const std::string& prefix) {
  SwigluWeights w;
  w.gate_up = param_of(p, prefix + "gate_up");
  w.down = param_of(p, prefix + "down");
  w.width = int(w.down.value.dim(1));
  return w;
}

void store_swiglu_grads(Problem& p, const std::string& prefix, const SwigluWeights& w) {
  p.tensors["d_" + prefix + "gate_up"] = w.gate_up.grad;
  p.tensors["d_" + prefix + "down"] = w.down.grad;
}

// y[rows, hidden] = FFN(x[rows, hidden]) in float64.
std::vector<double> ffn64(const Problem& p, const Vars& v, const std::string& prefix,
                          const double* x, int64_t rows) {
  const Tensor& down = p[prefix + "down"];
  const int64_t hidden = down.dim(0), width = down.dim(1);
  std::vector<double> gu(size_t(rows * 2 * width)), h(size_t(rows * width)),
      y(size_t(rows * hidden));
  linear_forward(x, value(p, v, prefix + "gate_up").data(), rows, hidden, 2 * width, gu.data());
  swiglu_forward(gu.data(), rows, width, h.data());
  linear_forward(h.data(), value(p, v, prefix + "down").data(), rows, width, hidden, y.data());
  return y;
}

TEST(FfnGradMode, BackwardMatchesFiniteDifferences) {
  for (Dims d : std::vector<Dims>{{1, 3, 2}, {5, 8, 6}, {7, 5, 11}}) {
    const int64_t rows = d[0], hidden = d[1], width = d[2];
    Rng rng(uint64_t(rows * 100 + hidden));
    Problem base;
    base.tensors["x"] = randn({rows, hidden}, rng);
    add_swiglu(base, "", hidden, width, rng);
    base.tensors["r"] = randn({rows, hidden}, rng);
    auto loss = [](const Problem& p, const Vars& v) {
      const std::vector<double> x = value(p, v, "x");
      return dot(ffn64(p, v, "", x.data(), p["x"].dim(0)), p["r"]);
    };
    auto backward = [&](Problem& p) {
      SwigluWeights w = swiglu_of(p, "");
      Arena arena(2 * 64 * (rows * 3 * width + 64));
      FfnActivations act(arena, rows, width), scratch(arena, rows, width);
      Tensor out = Tensor::zeros({rows, hidden});
      ffn_forward(w, p["x"], act, out);
      p.tensors["d_x"] = Tensor::zeros({rows, hidden});
      ffn_backward(w, p["x"], act, p["r"], scratch, p["d_x"], false);
      store_swiglu_grads(p, "", w);
    };
    TestResult r = check_gradients(base, {"x", "gate_up", "down"}, loss, backward, 1e-4, 7);
    log("ffn", r);
    EXPECT_TRUE(r.ok) << "ffn rows " << rows << " hidden " << hidden << " width " << width
                      << "\n" << r.log;
  }
}

// ---- The router and the MoE layer ----

struct MoeSetup {
  const char* name;
  ModelConfig config;
  int64_t batch, seq;
  float alpha;               // balance-loss weight (large, so its gradient is visible)
  bool weights_cotangent;    // false: the loss is the balance term alone
};

void PrintTo(const MoeSetup& s, std::ostream* os) { *os << s.name; }

ModelConfig small_moe(bool sigmoid_grouped) {
  ModelConfig c;
  c.hidden_size = 8;
  c.n_routed_experts = 8;
  c.moe_intermediate_size = 3;
  c.num_experts_per_tok = 3;
  c.routed_scaling_factor = 2.5;
  if (sigmoid_grouped) {  // DeepSeek-V3: sigmoid, correction bias, 4 groups keep 2, normalized
    c.scoring_func = ScoringFunc::Sigmoid;
    c.topk_method = "noaux_tc";
    c.n_group = 4;
    c.topk_group = 2;
    c.norm_topk_prob = true;
    c.n_shared_experts = 1;
  } else {  // DeepSeek-V2 style: softmax, greedy, unnormalized, no shared expert
    c.scoring_func = ScoringFunc::Softmax;
    c.topk_method = "greedy";
    c.n_group = 1;
    c.topk_group = 1;
    c.norm_topk_prob = false;
    c.n_shared_experts = 0;
  }
  return c;
}

std::vector<MoeSetup> moe_setups() {
  return {{"v3_sigmoid_grouped", small_moe(true), 2, 3, 1.0f, true},
          {"v2_softmax_greedy", small_moe(false), 1, 5, 1.0f, true},
          {"balance_only", small_moe(true), 3, 2, 1.0f, false}};
}

Problem make_moe_problem(const MoeSetup& s, Rng& rng, bool with_experts) {
  const ModelConfig& c = s.config;
  const int64_t n = s.batch * s.seq, d = c.hidden_size, e = c.n_routed_experts;
  Problem p;
  p.tensors["x"] = randn({n, d}, rng);
  p.tensors["gate"] = randn({e, d}, rng, 0.5);
  p.tensors["bias"] = c.has_bias() ? randn({e}, rng, 0.1) : Tensor::zeros({e});
  if (with_experts) {
    for (int64_t i = 0; i < e; ++i)
      add_swiglu(p, "e" + std::to_string(i) + ".", d, c.moe_intermediate_size, rng);
    if (c.n_shared_experts > 0)
      add_swiglu(p, "shared.", d, int64_t(c.n_shared_experts) * c.moe_intermediate_size, rng);
    p.tensors["r_out"] = randn({n, d}, rng);
  }
  const int64_t k = c.num_experts_per_tok;
  p.tensors["r_weights"] = s.weights_cotangent ? randn({n, k}, rng) : Tensor::zeros({n, k});
  return p;
}

struct Routing64 {
  std::vector<int32_t> indices;  // [N, K] ascending
  std::vector<double> weights;   // [N, K]
  double balance = 0;
};

// The router of DESIGN.md section 2, in float64, written independently of model/router.cpp.
Routing64 route64(const MoeSetup& s, const Problem& p, const Vars& v) {
  const ModelConfig& c = s.config;
  const int64_t n = s.batch * s.seq, d = c.hidden_size, e = c.n_routed_experts,
                k = c.num_experts_per_tok, groups = c.n_group, per_group = e / groups;
  const std::vector<double> x = value(p, v, "x");
  std::vector<double> logits(size_t(n * e));
  linear_forward(x.data(), value(p, v, "gate").data(), n, d, e, logits.data());
  std::vector<double> scores(logits.size());
  for (int64_t t = 0; t < n; ++t) {
    const double* l = &logits[size_t(t * e)];
    double* sc = &scores[size_t(t * e)];
    if (c.scoring_func == ScoringFunc::Sigmoid) {
      for (int64_t i = 0; i < e; ++i) sc[i] = 1.0 / (1.0 + std::exp(-l[i]));
    } else {
      const double mx = *std::max_element(l, l + e);
      double sum = 0.0;
      for (int64_t i = 0; i < e; ++i) sum += (sc[i] = std::exp(l[i] - mx));
      for (int64_t i = 0; i < e; ++i) sc[i] /= sum;
    }
  }
  Routing64 r;
  r.indices.resize(size_t(n * k));
  r.weights.resize(size_t(n * k));
  std::vector<double> counts(size_t(s.batch * e), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    const double* sc = &scores[size_t(t * e)];
    std::vector<double> sel(static_cast<size_t>(e));
    for (int64_t i = 0; i < e; ++i) sel[size_t(i)] = sc[i] + (c.has_bias() ? p["bias"].f32()[i] : 0.0);
    // Group limit: rank groups by the sum of their top two (noaux_tc) or their best score.
    std::vector<bool> allowed(static_cast<size_t>(e), true);
    if (groups > 1) {
      std::vector<double> gscore(static_cast<size_t>(groups));
      for (int64_t g = 0; g < groups; ++g) {
        std::vector<double> m(sel.begin() + g * per_group, sel.begin() + (g + 1) * per_group);
        std::sort(m.rbegin(), m.rend());
        gscore[size_t(g)] = c.topk_method == "noaux_tc" && per_group >= 2 ? m[0] + m[1] : m[0];
      }
      std::vector<int64_t> order(static_cast<size_t>(groups));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return gscore[size_t(a)] > gscore[size_t(b)]; });
      std::fill(allowed.begin(), allowed.end(), false);
      for (int64_t j = 0; j < c.topk_group; ++j)
        for (int64_t i = 0; i < per_group; ++i) allowed[size_t(order[size_t(j)] * per_group + i)] = true;
    }
    std::vector<int64_t> order;
    for (int64_t i = 0; i < e; ++i)
      if (allowed[size_t(i)]) order.push_back(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return sel[size_t(a)] > sel[size_t(b)]; });
    order.resize(size_t(k));
    std::sort(order.begin(), order.end());
    double sum = 0.0;
    for (int64_t j = 0; j < k; ++j) sum += sc[order[size_t(j)]];
    for (int64_t j = 0; j < k; ++j) {
      r.indices[size_t(t * k + j)] = int32_t(order[size_t(j)]);
      double w = sc[order[size_t(j)]];
      if (c.norm_topk_prob) w /= sum + 1e-20;
      r.weights[size_t(t * k + j)] = w * c.routed_scaling_factor;
      counts[size_t((t / s.seq) * e + order[size_t(j)])] += 1.0;
    }
  }
  // Balance: mean over sequences of sum_i f_i P_i, f_i = E / (K T) * count_i,
  // P_i = mean over the sequence of s_i / sum_j s_j.
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t i = 0; i < e; ++i) {
      double pi = 0.0;
      for (int64_t t = b * s.seq; t < (b + 1) * s.seq; ++t) {
        const double* sc = &scores[size_t(t * e)];
        pi += sc[i] / std::accumulate(sc, sc + e, 0.0);
      }
      pi /= double(s.seq);
      const double f = double(e) / double(k * s.seq) * counts[size_t(b * e + i)];
      r.balance += f * pi / double(s.batch);
    }
  return r;
}

void expect_same_routing(const Routing64& r, const Tensor& fast_indices) {
  for (size_t i = 0; i < r.indices.size(); ++i)
    DSV3_CHECK(r.indices[i] == fast_indices.i32()[i],
               "routing changed under a finite-difference perturbation (assignment {}: {} vs {}); "
               "the scores are not separated enough for this check",
               i, r.indices[i], fast_indices.i32()[i]);
}

MoeWeights moe_weights_of(Problem& p, const ModelConfig& c, bool with_experts) {
  MoeWeights w;
  w.gate = param_of(p, "gate");
  w.bias = p["bias"];
  if (with_experts) {
    for (int64_t i = 0; i < c.n_routed_experts; ++i)
      w.experts.push_back(swiglu_of(p, "e" + std::to_string(i) + "."));
    if (c.n_shared_experts > 0) w.shared = swiglu_of(p, "shared.");
  }
  return w;
}


class MoeGradMode : public ::testing::TestWithParam<MoeSetup> {};

TEST_P(MoeGradMode, RouterBackwardMatchesFiniteDifferences) {
  const MoeSetup s = GetParam();
  const ModelConfig& c = s.config;
  Rng rng(11);
  Problem base = make_moe_problem(s, rng, false);
  StepContext ctx{&c, nullptr, s.batch, s.seq, nullptr};
  Arena measure = Arena::measuring();
  RouterActivations(measure, c, s.batch, s.seq);
  RouterScratch(measure, c, s.batch, s.seq);
  Arena arena(measure.used());
  RouterActivations act(arena, c, s.batch, s.seq);
  RouterScratch scratch(arena, c, s.batch, s.seq);
  auto backward = [&](Problem& p) {
    MoeWeights w = moe_weights_of(p, c, false);
    upload_router_bias(w, act);
    router_forward(ctx, w, p["x"], act);
    scratch.d_weights.copy_from(p["r_weights"]);
    p.tensors["d_x"] = Tensor::zeros(p["x"].shape());
    router_backward(ctx, w, p["x"], act, s.alpha, scratch, p["d_x"]);
    p.tensors["d_gate"] = w.gate.grad;
  };
  auto loss = [&](const Problem& p, const Vars& v) {
    Routing64 r = route64(s, p, v);
    expect_same_routing(r, act.indices);
    return dot(r.weights, p["r_weights"]) + double(s.alpha) * r.balance;
  };
  TestResult r = check_gradients(base, {"x", "gate"}, loss, backward, 1e-4, 3);
  log(std::string("router ") + s.name, r);
  EXPECT_TRUE(r.ok) << r.log;
  // The float32 forward agrees with the float64 one, balance term included.
  Routing64 r64 = route64(s, base, {});
  EXPECT_NEAR(act.balance, r64.balance, 1e-5 * std::fabs(r64.balance));
  for (size_t i = 0; i < r64.weights.size(); ++i)
    EXPECT_NEAR(act.weights.f32()[i], r64.weights[i], 1e-5 * (1 + std::fabs(r64.weights[i])));
}

TEST_P(MoeGradMode, MoeBackwardMatchesFiniteDifferences) {
  const MoeSetup s = GetParam();
  const ModelConfig& c = s.config;
  const int64_t n = s.batch * s.seq, d = c.hidden_size;
  Rng rng(13);
  Problem base = make_moe_problem(s, rng, true);
  StepContext ctx{&c, nullptr, s.batch, s.seq, nullptr};
  Arena measure = Arena::measuring();
  MoeActivations(measure, c, s.batch, s.seq);
  MoeScratch(measure, c, s.batch, s.seq);
  Arena arena(measure.used());
  MoeActivations act(arena, c, s.batch, s.seq);
  MoeScratch scratch(arena, c, s.batch, s.seq);
  std::vector<std::string> wrt = {"x", "gate"};
  for (int64_t i = 0; i < c.n_routed_experts; ++i)
    for (const char* part : {"gate_up", "down"}) wrt.push_back("e" + std::to_string(i) + "." + part);
  if (c.n_shared_experts > 0) wrt.insert(wrt.end(), {"shared.gate_up", "shared.down"});

  auto backward = [&](Problem& p) {
    MoeWeights w = moe_weights_of(p, c, true);
    Tensor out = Tensor::zeros({n, d});
    upload_router_bias(w, act.router);
    moe_forward(ctx, w, p["x"], p["x"], act, out);
    p.tensors["d_x"] = Tensor::zeros({n, d});
    moe_backward(ctx, w, p["x"], p["x"], act, p["r_out"], p["r_out"], s.alpha, scratch, p["d_x"]);
    p.tensors["d_gate"] = w.gate.grad;
    for (int64_t i = 0; i < c.n_routed_experts; ++i)
      store_swiglu_grads(p, "e" + std::to_string(i) + ".", w.experts[size_t(i)]);
    if (c.n_shared_experts > 0) store_swiglu_grads(p, "shared.", w.shared);
  };
  // L = sum r_out * (shared(x) + sum_j w_j expert_j(x)) + alpha * balance
  auto loss = [&](const Problem& p, const Vars& v) {
    Routing64 r = route64(s, p, v);
    expect_same_routing(r, act.router.indices);
    const std::vector<double> x = value(p, v, "x");
    std::vector<double> out(size_t(n * d), 0.0);
    if (c.n_shared_experts > 0) out = ffn64(p, v, "shared.", x.data(), n);
    const int64_t k = c.num_experts_per_tok;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const std::string e = "e" + std::to_string(r.indices[size_t(t * k + j)]) + ".";
        const std::vector<double> y = ffn64(p, v, e, &x[size_t(t * d)], 1);
        for (int64_t i = 0; i < d; ++i) out[size_t(t * d + i)] += r.weights[size_t(t * k + j)] * y[size_t(i)];
      }
    return dot(out, p["r_out"]) + double(s.alpha) * r.balance;
  };
  TestResult r = check_gradients(base, wrt, loss, backward, 1e-4, 5);
  log(std::string("moe ") + s.name, r);
  EXPECT_TRUE(r.ok) << r.log;
}

INSTANTIATE_TEST_SUITE_P(Model, MoeGradMode, ::testing::ValuesIn(moe_setups()),
                         [](const ::testing::TestParamInfo<MoeSetup>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace dsv3::optest
