#include "model/parity.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>

#include "model/safetensors.h"
#include "model/transformer.h"
#include "train/adamw.h"

namespace dsv3 {

double max_rel(const float* got, const float* ref, size_t n) {
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(double(got[i]) - ref[i]);
    if (std::isnan(d)) return INFINITY;
    max_diff = std::max(max_diff, d);
    max_ref = std::max(max_ref, std::fabs(double(ref[i])));
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

namespace {

// Tolerances for a float32 implementation of a float64 reference (fixtures' README).
constexpr double kForwardTolF32 = 1e-5;  // logits, losses: max|diff| / max|ref|
constexpr double kGradTolF32 = 1e-4;     // gradients, updated parameters: ||diff|| / ||ref||
// One AdamW step, end to end in float64 or from the reference's own gradients in float32.
constexpr double kOptimizerTol = 1e-5;
// The float64 step (--precision f64) is judged against float32-rounded expectations, whose own
// rounding is 6e-8 relative: these leave room for that and for float64 sums in another order,
// and are 10x tighter than float32's.
constexpr double kForwardTolF64 = 1e-6;
constexpr double kGradTolF64 = 1e-5;
// BF16 mixed precision (GEMM operands rounded to 8 significant bits, at most 2^-8 = 4e-3
// relative each, float32 accumulation) through a few layers: set before measuring, from that
// rounding grown by depth and by the softmax/CE amplification, with routing still exact.
constexpr double kForwardTolBf16 = 2e-2;
constexpr double kGradTolBf16 = 5e-2;
struct Tolerances {
  double forward, grad;
};

double max_rel(const Tensor& got, const Tensor& ref) {
  return dsv3::max_rel(got.f32(), ref.f32(), size_t(ref.numel()));
}

double l2_rel(const Tensor& got, const Tensor& ref) {
  double diff = 0, norm = 0;
  const float* g = got.f32();
  const float* r = ref.f32();
  for (int64_t i = 0; i < ref.numel(); ++i) {
    double d = double(g[i]) - r[i];
    diff += d * d;
    norm += double(r[i]) * r[i];
  }
  if (std::isnan(diff)) return INFINITY;
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

double scalar_rel(double got, double ref) {
  double d = std::fabs(got - ref);
  if (std::isnan(d)) return INFINITY;
  return std::fabs(ref) > 0 ? d / std::fabs(ref) : d;
}

Tensor as_f32(const Tensor& t) { return t.dtype() == DType::F32 ? t : t.to_f32(); }

class Checker {
 public:
  Checker(ParityReport& r, Tolerances tol) : r_(r), tol_(tol) {}
  void add(std::string q, double err, double tol, const char* metric) {
    r_.checks.push_back({std::move(q), err, tol, metric, err <= tol});
  }
  // grad_like: l2-rel at the gradient tolerance, else max-rel at the forward one; `tol`
  // (optional) overrides the tolerance.
  void tensor(const std::string& q, const Tensor& got_anywhere, const Tensor& ref, bool grad_like,
              double tol = -1) {
    const Tensor got = as_f32(got_anywhere.to(Device::CPU));
    if (got.numel() != ref.numel()) {
      r_.checks.push_back({q + " (shape " + got.shape().str() + " vs " + ref.shape().str() + ")",
                           INFINITY, 0, "shape", false});
      return;
    }
    if (grad_like)
      add(q, l2_rel(got, ref), tol >= 0 ? tol : tol_.grad, "l2-rel");
    else
      add(q, max_rel(got, ref), tol >= 0 ? tol : tol_.forward, "max-rel");
  }
  void exact(const std::string& q, const Tensor& got_anywhere, const Tensor& ref) {
    const Tensor got = got_anywhere.to(Device::CPU);
    int64_t mismatches = got.numel() == ref.numel() ? 0 : std::max(got.numel(), ref.numel());
    if (!mismatches) {
      Tensor g = got.dtype() == DType::I32 ? got : got.to_f32();
      Tensor e = ref.dtype() == DType::I32 ? ref : ref.to_f32();
      for (int64_t i = 0; i < ref.numel(); ++i) {
        bool same = g.dtype() == DType::I32 && e.dtype() == DType::I32
                        ? g.i32()[i] == e.i32()[i]
                        : (g.dtype() == DType::I32 ? float(g.i32()[i]) : g.f32()[i]) ==
                              (e.dtype() == DType::I32 ? float(e.i32()[i]) : e.f32()[i]);
        mismatches += !same;
      }
    }
    add(q, double(mismatches), 0, "mismatches");
  }

 private:
  ParityReport& r_;
  Tolerances tol_;
};

}  // namespace

bool ParityReport::all_pass() const {
  return !checks.empty() &&
         std::all_of(checks.begin(), checks.end(), [](const ParityCheck& c) { return c.pass; });
}

std::string ParityReport::table(bool failures_only) const {
  size_t width = 8;
  for (const auto& c : checks) width = std::max(width, c.quantity.size());
  std::string out = fmt::format("{:<{}}  {:>11}  {:>9}  {:<10}  {}\n", "quantity", width, "error",
                                "tolerance", "metric", "result");
  size_t failed = 0;
  for (const auto& c : checks) {
    failed += !c.pass;
    if (failures_only && c.pass) continue;
    out += fmt::format("{:<{}}  {:>11.3e}  {:>9.1e}  {:<10}  {}\n", c.quantity, width, c.error,
                       c.tolerance, c.metric, c.pass ? "pass" : "FAIL");
  }
  out += fmt::format("{}: {} checks, {} passed, {} failed\n", fixture, checks.size(),
                     checks.size() - failed, failed);
  return out;
}

namespace {

// The optimizer settings the fixture's step was taken with (its config's "train" block).
AdamWSettings fixture_adamw(const ModelConfig& c) {
  return {c.train.lr, c.train.beta1, c.train.beta2, c.train.eps, c.train.weight_decay,
          c.train.clip};
}

// One training step of a fixture's model at a precision: F32 or BF16 (on `device`), or F64
// (the float64 step on the CPU).
struct FixtureStep {
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<Transformer> model;
  StepResult result;
};

// The fixture's parameters (model.safetensors), on the CPU in float32.
std::unique_ptr<ModelWeights> fixture_weights(const std::string& dir, const ModelConfig& config) {
  auto w = std::make_unique<ModelWeights>(config);
  w->load(WeightStore::open((std::filesystem::path(dir) / "model.safetensors").string()));
  return w;
}

FixtureStep run_fixture_step(const std::string& dir, const ModelConfig& config, Device device,
                             DType precision, const Tensor& tokens, const Tensor& labels,
                             bool backward) {
  FixtureStep s;
  s.weights = fixture_weights(dir, config);
  if (precision == DType::F64) {
    DSV3_CHECK(device == Device::CPU, "the float64 step runs on the CPU (--device cpu)");
    s.weights->to_float64();
  } else {
    s.weights->to_device(device);
    s.weights->set_compute_dtype(precision);
  }
  s.model = std::make_unique<Transformer>(*s.weights, tokens.dim(0), tokens.dim(1));
  const LossWeights lw{config.train.mtp_lambda, config.train.balance_alpha};
  s.weights->discard_grads();  // the step overwrites them, as training does
  s.result = s.model->step(tokens.i32(), labels.i32(), lw, backward);
  return s;
}

// Where the adamw.* rows' expected parameters come from.
enum class UpdateReference {
  Fixture,       // the fixture's own step
  OwnGradients,  // a float64 AdamW step from the gradients this step computed
};

// The parameters a float64 AdamW step from `weights`' current gradients lands on, in
// named_tensors() order, as float32. The fixture's parameters are the starting point.
std::vector<Tensor> float64_update_from(const std::string& dir, const ModelConfig& config,
                                        const ModelWeights& weights) {
  const std::unique_ptr<ModelWeights> wide_weights = fixture_weights(dir, config);
  ModelWeights& wide = *wide_weights;
  wide.to_float64();
  wide.zero_grads();
  const auto grads = weights.named_grads();
  const auto wide_grads = wide.named_grads();
  DSV3_CHECK(grads.size() == wide_grads.size(), "parity: {} gradients, {} float64 ones",
             grads.size(), wide_grads.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    DSV3_CHECK(grads[i].first == wide_grads[i].first, "parity: gradient {} is {} in float64",
               grads[i].first, wide_grads[i].first);
    const Tensor g = as_f32(grads[i].second.to(Device::CPU));
    double* out = wide_grads[i].second.f64();
    for (int64_t j = 0; j < g.numel(); ++j) out[j] = g.f32()[j];
  }
  AdamW(wide).step(fixture_adamw(config), config.train.lr);
  std::vector<Tensor> updated;
  for (const auto& [name, v] : wide.named_tensors()) updated.push_back(v.to_f32());
  return updated;
}

// grad_norm (at tol.forward) and the bias update of `step` against the fixture, then one AdamW
// step: judged at tol.grad against the fixture's step, or at kOptimizerTol against a float64
// step from the same gradients (UpdateReference). `suffix` labels the rows when they come from
// another precision than the rest of the table.
void check_optimizer_step(const std::string& dir, const ModelConfig& config, FixtureStep& step,
                          const WeightStore& expected, Checker& check, Tolerances tol,
                          UpdateReference reference, const std::string& suffix) {
  ModelWeights& weights = *step.weights;
  AdamW opt(weights);
  const AdamWSettings s = fixture_adamw(config);
  // Bias update uses this step's routing, before parameters change.
  for (auto& [name, bias] : weights.biases()) {
    // name: model.layers.{l}.mlp.gate.e_score_correction_bias
    int layer = std::stoi(name.substr(std::string("model.layers.").size()));
    const RouterActivations* r = step.model->routing(layer);
    if (!r) continue;
    Tensor updated = bias->clone();
    update_balance_bias(updated, r->load, config.train.bias_gamma);
    if (expected.has("bias_after." + name))
      check.exact("bias_after." + name + suffix, updated,
                  as_f32(expected.get("bias_after." + name)));
  }
  std::vector<Tensor> own_reference;
  if (reference == UpdateReference::OwnGradients)
    own_reference = float64_update_from(dir, config, weights);
  double norm = opt.step(s, config.train.lr);
  if (expected.has("grad_norm"))
    check.add("grad_norm" + suffix, scalar_rel(norm, as_f32(expected.get("grad_norm")).f32()[0]),
              tol.forward, "rel");
  const auto params = weights.named_tensors();
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [name, v] = params[i];
    if (!expected.has("adamw." + name)) continue;
    if (reference == UpdateReference::Fixture)
      check.tensor("adamw." + name + suffix, v, as_f32(expected.get("adamw." + name)), true,
                   tol.grad);
    else
      check.tensor("adamw." + name + " (from this step's gradients)" + suffix, v,
                   own_reference[i], true, kOptimizerTol);
  }
}

}  // namespace

ParityReport run_parity(const std::string& dir, const std::string& dump_path, bool with_optimizer,
                        Device device, DType precision) {
  DSV3_CHECK(precision == DType::F32 || precision == DType::BF16 || precision == DType::F64,
             "parity precision {}: f32, bf16 or f64", dtype_name(precision));
  const Tolerances tol = precision == DType::BF16  ? Tolerances{kForwardTolBf16, kGradTolBf16}
                         : precision == DType::F64 ? Tolerances{kForwardTolF64, kGradTolF64}
                                                   : Tolerances{kForwardTolF32, kGradTolF32};
  namespace fs = std::filesystem;
  ParityReport report;
  report.fixture = dir;
  for (const char* f :
       {"config.json", "model.safetensors", "batch.safetensors", "expected.safetensors"})
    DSV3_CHECK(fs::exists(fs::path(dir) / f),
               "{}: missing {} (a parity fixture needs "
               "config.json, model.safetensors, batch.safetensors, expected.safetensors)",
               dir, f);
  ModelConfig config = ModelConfig::load(dir);
  WeightStore batch = WeightStore::open((fs::path(dir) / "batch.safetensors").string());
  WeightStore expected = WeightStore::open((fs::path(dir) / "expected.safetensors").string());

  Tensor tokens = batch.get("tokens");
  Tensor labels = batch.get("labels");
  DSV3_CHECK(tokens.ndim() == 2 && tokens.dtype() == DType::I32 &&
                 labels.shape() == tokens.shape() && labels.dtype() == DType::I32,
             "{}: tokens and labels must be [B, T] int32", batch.where());

  bool wants_grads = false;
  for (const auto& name : expected.names())
    wants_grads |= name.rfind("grad.", 0) == 0 || name.rfind("adamw.", 0) == 0;

  FixtureStep step = run_fixture_step(dir, config, device, precision, tokens, labels, wants_grads);
  const Transformer& model = *step.model;
  const StepResult& res = step.result;

  Checker check(report, tol);
  // Forward outputs.
  if (expected.has("logits"))
    check.tensor("logits", model.logits(), as_f32(expected.get("logits")), false);
  for (int k = 1; k <= config.num_nextn_predict_layers; ++k) {
    std::string name = fmt::format("mtp_logits.{}", k);
    if (expected.has(name))
      check.tensor(name, model.mtp_logits(k), as_f32(expected.get(name)), false);
  }
  auto scalar = [&](const std::string& name, double got) {
    if (expected.has(name))
      check.add(name, scalar_rel(got, as_f32(expected.get(name)).f32()[0]), tol.forward, "rel");
  };
  scalar("loss.main", res.main);
  for (int k = 1; k <= int(res.mtp.size()); ++k)
    scalar(fmt::format("loss.mtp_{}", k), res.mtp[size_t(k - 1)]);
  scalar("loss.balance_sum", res.balance_sum);
  scalar("loss.total", res.total);
  // Routing.
  const int layers = config.num_hidden_layers + config.num_nextn_predict_layers;
  for (int l = 0; l < layers; ++l) {
    const RouterActivations* r = model.routing(l);
    std::string p = fmt::format("routing.{}.", l);
    if (!r) continue;
    if (expected.has(p + "indices"))
      check.exact(p + "indices", r->indices, expected.get(p + "indices"));
    if (expected.has(p + "load")) check.exact(p + "load", r->load, expected.get(p + "load"));
    if (expected.has(p + "balance"))
      check.add(p + "balance", scalar_rel(r->balance, as_f32(expected.get(p + "balance")).f32()[0]),
                tol.forward, "rel");
  }
  std::vector<std::pair<std::string, Tensor>> dump;
  auto write_dump = [&]() {
    if (dump_path.empty()) return;
    dump.emplace_back("logits", as_f32(model.logits().to(Device::CPU)));
    write_safetensors(dump_path, dump);
  };
  if (!wants_grads) {
    write_dump();
    return report;
  }

  // Gradients. Parameters the reference left without a gradient (experts no token reached)
  // must have exactly zero gradient here.
  auto grads = step.weights->named_grads();
  int64_t unlisted_nonzero = 0, unlisted = 0;
  for (const auto& [name, g_anywhere] : grads) {
    const Tensor g = as_f32(g_anywhere.to(Device::CPU));
    if (!dump_path.empty()) dump.emplace_back("grad." + name, g.clone());
    if (expected.has("grad." + name)) {
      check.tensor("grad." + name, g, as_f32(expected.get("grad." + name)), true);
    } else {
      ++unlisted;
      for (int64_t i = 0; i < g.numel(); ++i) unlisted_nonzero += g.f32()[i] != 0.0f;
    }
  }
  if (unlisted)
    check.add(
        fmt::format("grad of {} tensors without reference gradient (nonzero count)", unlisted),
        double(unlisted_nonzero), 0, "exact");

  if (!with_optimizer) {
    write_dump();
    return report;
  }
  // One optimizer step and one bias update, end to end. AdamW's g / (|g| + eps) turns a
  // gradient element near eps into a large part of its update, so a float32 step cannot meet
  // 1e-5 where such an element carries float32 rounding (docs/model.md). The float64 step
  // can: a float32 run on the CPU checks the optimizer end to end in float64, and the float32
  // optimizer alone from the fixture's gradients (below). A GPU, which has no float64 step,
  // is judged in two links: its gradients against the fixture (the grad.* rows above), and its
  // AdamW step against a float64 step from those same gradients.
  if (precision == DType::F32 && device == Device::CPU) {
    FixtureStep wide = run_fixture_step(dir, config, Device::CPU, DType::F64, tokens, labels, true);
    check_optimizer_step(dir, config, wide, expected, check, {kForwardTolF32, kOptimizerTol},
                         UpdateReference::Fixture, " (float64 step)");
  } else if (precision == DType::F64) {
    check_optimizer_step(dir, config, step, expected, check, {tol.forward, kOptimizerTol},
                         UpdateReference::Fixture, "");
  } else {
    check_optimizer_step(dir, config, step, expected, check, tol, UpdateReference::OwnGradients,
                         "");
  }

  // The optimizer alone: the same step taken from the fixture's own gradients (float64 values
  // rounded once to float32) must land on its parameters to 1e-5. The end-to-end rows above
  // also carry the gradients' error, which AdamW's g / (|g| + eps) amplifies for gradients near
  // eps; this row separates the float32 optimizer from that.
  bool has_adamw = false;
  for (const auto& name : expected.names()) has_adamw |= name.rfind("adamw.", 0) == 0;
  if (has_adamw) {
    const std::unique_ptr<ModelWeights> fresh_weights = fixture_weights(dir, config);
    ModelWeights& fresh = *fresh_weights;
    fresh.zero_grads();
    for (auto& [name, g] : fresh.named_grads())
      if (expected.has("grad." + name)) {
        const Tensor ref = as_f32(expected.get("grad." + name));
        DSV3_CHECK(ref.numel() == g.numel(), "{}: grad.{} has {} values, the parameter {}",
                   expected.where(), name, ref.numel(), g.numel());
        std::copy(ref.f32(), ref.f32() + ref.numel(), g.f32());
      }  // no reference gradient: no token reached it, zero
    AdamW ref_opt(fresh);
    const AdamWSettings s = fixture_adamw(config);
    ref_opt.step(s, config.train.lr);
    double worst = 0;
    std::string worst_name;
    for (const auto& [name, v] : fresh.named_tensors()) {
      if (!expected.has("adamw." + name)) continue;
      const double e = l2_rel(v, as_f32(expected.get("adamw." + name)));
      if (e >= worst) worst = e, worst_name = name;
    }
    check.add(fmt::format("adamw from the reference gradients (worst: {})", worst_name), worst,
              kOptimizerTol, "l2-rel");
  }
  write_dump();
  return report;
}

}  // namespace dsv3
