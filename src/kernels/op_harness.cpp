// The op-test harness: backends, problems, the comparison with its tolerance, and the test,
// perf and finite-difference modes (kernels/op_cases.h). The cases themselves are in
// op_cases.cpp.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include <fmt/format.h>

#include "core/device.h"
#include "kernels/op_cases.h"
#include "kernels/reference.h"

namespace dsv3::optest {

std::string_view backend_name(Backend b) {
  switch (b) {
    case Backend::CPU: return "cpu";
    case Backend::CUDA: return "cuda";
  }
  return "?";
}

std::vector<Backend> available_backends() {
  if (device::cuda_built()) return {Backend::CPU, Backend::CUDA};
  return {Backend::CPU};
}

std::string backend_unusable(Backend b) {
  if (b == Backend::CUDA && device::cuda_device_count() == 0)
    return "CUDA backend built but no CUDA device is visible: the CUDA op cases run on a GPU "
           "machine (ctest -C gpu -L gpu, or dsv3_tests there)";
  return "";
}

const OpSet& fast_ops() {
  static const OpSet set{
      &ops::gemm,           &ops::linear_forward,    &ops::linear_backward,
      &ops::rmsnorm_forward, &ops::rmsnorm_backward, &ops::rope_forward,
      &ops::rope_backward,  &ops::swiglu_forward,    &ops::swiglu_backward,
      &ops::attention_forward, &ops::attention_backward,
      &ops::attention_forward_lse, &ops::attention_backward_lse, &ops::cross_entropy,
      &ops::embedding_forward, &ops::embedding_backward, &ops::add,
      &ops::tokens_to_heads, &ops::heads_to_tokens,  &ops::copy_columns,
      &ops::put_columns,     &ops::moe_gather_rows,   &ops::moe_combine,
      &ops::moe_combine_backward, &ops::moe_scatter_add, &ops::sum_squares,
      &ops::scale_inplace,   &ops::adamw_update,      &ops::grouped_linear_forward,
      &ops::grouped_linear_backward, &ops::cross_entropy_rows};
  return set;
}

const OpSet& reference_ops() {
  static const OpSet set{
      &ref::gemm,           &ref::linear_forward,    &ref::linear_backward,
      &ref::rmsnorm_forward, &ref::rmsnorm_backward, &ref::rope_forward,
      &ref::rope_backward,  &ref::swiglu_forward,    &ref::swiglu_backward,
      &ref::attention_forward, &ref::attention_backward,
      &ref::attention_forward_lse, &ref::attention_backward_lse, &ref::cross_entropy,
      &ref::embedding_forward, &ref::embedding_backward, &ref::add,
      &ref::tokens_to_heads, &ref::heads_to_tokens,  &ref::copy_columns,
      &ref::put_columns,     &ref::moe_gather_rows,   &ref::moe_combine,
      &ref::moe_combine_backward, &ref::moe_scatter_add, &ref::sum_squares,
      &ref::scale_inplace,   &ref::adamw_update,      &ref::grouped_linear_forward,
      &ref::grouped_linear_backward, &ref::cross_entropy_rows};
  return set;
}

// ---- Problems ----

Tensor& Problem::operator[](const std::string& name) {
  auto it = tensors.find(name);
  DSV3_CHECK(it != tensors.end(), "op problem has no tensor '{}'", name);
  return it->second;
}

const Tensor& Problem::operator[](const std::string& name) const {
  auto it = tensors.find(name);
  DSV3_CHECK(it != tensors.end(), "op problem has no tensor '{}'", name);
  return it->second;
}

double Problem::scalar(const std::string& name) const {
  auto it = scalars.find(name);
  DSV3_CHECK(it != scalars.end(), "op problem has no scalar '{}'", name);
  return it->second;
}

Problem Problem::clone() const {
  Problem p;
  p.dims = dims;
  p.scalars = scalars;
  for (const auto& [name, t] : tensors) p.tensors[name] = t.clone();
  return p;
}

Problem to_backend(const Problem& host, Backend b) {
  switch (b) {
    case Backend::CPU: return host.clone();
    case Backend::CUDA: {
      Problem p;
      p.dims = host.dims;
      p.scalars = host.scalars;
      for (const auto& [name, t] : host.tensors) p.tensors[name] = t.to(Device::CUDA);
      return p;
    }
  }
  fail("to_backend: backend {} is not built", backend_name(b));
}

Tensor to_host(const Tensor& t) { return t.to(Device::CPU); }

Tensor randn(const Shape& shape, Rng& rng, double stddev) {
  Tensor t = Tensor::zeros(shape);
  std::normal_distribution<double> dist(0.0, stddev);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(dist(rng));
  return t;
}

int64_t uniform_int(Rng& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

Tensor filled(const Shape& shape, float v) {
  Tensor t = Tensor::zeros(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = v;
  return t;
}

Tensor int_tensor(const std::vector<int32_t>& v) {
  Tensor t = Tensor::zeros({int64_t(v.size())}, DType::I32);
  for (size_t i = 0; i < v.size(); ++i) t.i32()[i] = v[i];
  return t;
}

std::function<std::vector<Dims>(Rng&)> shapes(std::vector<Dims> fixed, int n,
                                              std::function<Dims(Rng&)> draw) {
  return [fixed, n, draw](Rng& rng) {
    std::vector<Dims> all = fixed;
    for (int i = 0; i < n; ++i) all.push_back(draw(rng));
    return all;
  };
}

// ---- Comparison ----

Comparison compare(const std::string& what, const Tensor& fast_t, const Tensor& ref_t,
                   Tolerance tol) {
  Comparison c;
  Tensor fast = to_host(fast_t).to_f32(), ref = to_host(ref_t).to_f32();
  if (fast.numel() != ref.numel()) {
    c.ok = false;
    c.bad = 1;
    c.message = fmt::format("{}: fast has {} elements, reference {}", what, fast.numel(),
                            ref.numel());
    return c;
  }
  const float* f = fast.f32();
  const float* r = ref.f32();
  const int64_t n = ref.numel();
  double sq = 0.0;
  for (int64_t i = 0; i < n; ++i)
    if (std::isfinite(r[i])) sq += double(r[i]) * double(r[i]);
  const double rms = n ? std::sqrt(sq / double(n)) : 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double err = std::fabs(double(f[i]) - double(r[i]));
    const double allowed = tol.rel * std::fabs(double(r[i])) + tol.abs * rms;
    // Written so that NaN fails: every comparison with NaN is false.
    const bool pass = std::isfinite(f[i]) && std::isfinite(r[i]) && err <= allowed;
    if (std::isfinite(err)) {
      c.max_err = std::max(c.max_err, err);
      if (allowed > 0) c.max_ratio = std::max(c.max_ratio, err / allowed);
      else if (err > 0) c.max_ratio = INFINITY;
    }
    if (!pass) {
      if (c.bad == 0)
        c.message = fmt::format("{}[{}]: fast {} vs reference {} (|diff| {:.3g} > allowed {:.3g})",
                                what, i, f[i], r[i], err, allowed);
      ++c.bad;
      c.ok = false;
    }
  }
  if (!c.ok) c.message += fmt::format(" ; {} of {} elements fail", c.bad, n);
  return c;
}

// ---- Test mode ----

TestResult run_test(const OpCase& c, Backend backend, const Dims& dims, uint64_t seed) {
  Rng rng(seed);
  Problem host = c.make(dims, rng);
  host.dims = dims;
  Problem dev = to_backend(host, backend);
  Problem ref = host.clone();
  c.run(fast_ops(), dev);
  c.run(reference_ops(), ref);
  TestResult result;
  std::string shape = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) shape += ", ";  // appended apart: GCC 12 warns falsely (-Wrestrict) on ", " + to_string
    shape += std::to_string(dims[i]);
  }
  shape += "]";
  for (const auto& out : c.outputs) {
    Comparison cmp = compare(out, dev[out], ref[out], c.tol.for_dtype(c.dtype));
    result.ok &= cmp.ok;
    result.log += fmt::format("{} {} ({}) {}: max|diff| {:.3g}, {:.3f} of the tolerance{}{}\n",
                              c.name, shape, c.dims, out, cmp.max_err, cmp.max_ratio,
                              cmp.ok ? "" : " FAIL: ", cmp.message);
  }
  return result;
}

// ---- Perf mode ----

namespace {
// Seconds per call of f, over at least `min_reps` calls and `min_seconds`. With `warm_up`, one
// untimed call first (first touch, caches, oneDNN's kernel selection); without, a first call
// that alone takes min_seconds is the answer (the slow reference runs once).
template <typename F>
double seconds_per_call(F&& f, double min_seconds, int min_reps, bool warm_up) {
  using clock = std::chrono::steady_clock;
  if (warm_up) f();
  int reps = 0;
  auto start = clock::now();
  double elapsed = 0.0;
  while (reps < min_reps || elapsed < min_seconds) {
    f();
    ++reps;
    elapsed = std::chrono::duration<double>(clock::now() - start).count();
  }
  return elapsed / reps;
}
}  // namespace

PerfResult run_perf(const OpCase& c, Backend backend, double min_seconds) {
  Rng rng(1234);
  Problem host = c.make(c.bench, rng);
  host.dims = c.bench;
  Problem dev = to_backend(host, backend);
  Problem ref = host.clone();
  PerfResult r;
  // Ops that accumulate or work in place change their buffers between calls; the work per call
  // is the same, which is all that is timed here.
  // Device ops are asynchronous: each timed call waits for its kernels to finish.
  const Device device = backend == Backend::CUDA ? Device::CUDA : Device::CPU;
  r.fast_s = seconds_per_call(
      [&] {
        c.run(fast_ops(), dev);
        device::synchronize(device);
      },
      min_seconds, 3, true);
  r.ref_s = seconds_per_call([&] { c.run(reference_ops(), ref); }, min_seconds / 2, 1, false);
  r.flops = c.flops ? c.flops(c.bench) : 0.0;
  r.bytes = c.bytes ? c.bytes(c.bench) : 0.0;
  return r;
}

// ---- Grad mode ----

TestResult check_gradients(const Problem& base, const std::vector<std::string>& wrt,
                           const std::function<double(const Problem&, const Vars&)>& loss,
                           const std::function<void(Problem&)>& backward, double tol,
                           uint64_t seed, int max_probes) {
  Problem analytic = base.clone();
  backward(analytic);
  Vars vars;
  for (const auto& name : wrt) {
    const Tensor& t = base[name];
    vars[name].assign(t.f32(), t.f32() + t.numel());
  }
  Rng rng(seed);
  TestResult result;
  for (const auto& name : wrt) {
    const Tensor& g = analytic["d_" + name];
    std::vector<double>& x = vars[name];
    const int64_t n = int64_t(x.size());
    std::vector<int64_t> probes(static_cast<size_t>(n));
    std::iota(probes.begin(), probes.end(), 0);
    if (n > max_probes) {
      std::shuffle(probes.begin(), probes.end(), rng);
      probes.resize(size_t(max_probes));
    }
    // Central differences in float64: truncation error ~h^2 f''' and rounding ~1e-16 |L| / h
    // are both near 1e-10 at this step, far below the float32 error of the analytic side.
    std::vector<double> numeric(probes.size());
    for (size_t p = 0; p < probes.size(); ++p) {
      double& xi = x[size_t(probes[p])];
      const double orig = xi, h = 1e-5 * std::max(1.0, std::fabs(orig));
      xi = orig + h;
      const double up = loss(base, vars);
      xi = orig - h;
      const double down = loss(base, vars);
      xi = orig;
      numeric[p] = (up - down) / (2.0 * h);
    }
    double sq = 0.0;
    for (double v : numeric) sq += v * v;
    const double rms = numeric.empty() ? 0.0 : std::sqrt(sq / double(numeric.size()));
    int64_t bad = 0;
    double worst = 0.0;
    std::string first;
    for (size_t p = 0; p < probes.size(); ++p) {
      const double a = g.f32()[probes[p]], num = numeric[p];
      const double err = std::fabs(a - num), allowed = tol * (std::fabs(num) + rms);
      if (std::isfinite(err) && allowed > 0) worst = std::max(worst, err / allowed);
      if (!(std::isfinite(a) && std::isfinite(num) && err <= allowed)) {
        if (bad++ == 0)
          first = fmt::format(" FAIL: d_{}[{}] analytic {} vs numeric {}", name, probes[p], a, num);
      }
    }
    result.ok &= bad == 0;
    result.log += fmt::format("d_{}: {} of {} elements probed, rms {:.3g}, {:.3f} of the "
                              "tolerance{}{}\n",
                              name, probes.size(), n, rms, worst, first,
                              bad ? fmt::format(" ({} fail)", bad) : "");
  }
  return result;
}

}  // namespace dsv3::optest
