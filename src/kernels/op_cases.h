#pragma once
// The op-test table (DESIGN.md section 3, habits 1 and 3): every op of kernels/ops.h as a case
// that runs on every backend against the float64 reference (kernels/reference.h), in three
// modes:
//   test  - random shapes (odd sizes, single rows, dims that are no multiple of 16, seq 1), each
//           output compared elementwise with a tolerance written down per dtype; NaN never passes;
//   perf  - one representative shape, the fast op timed against the reference (`dsv3 bench ops`);
//   grad  - each backward against central differences of the float64 reference forward.
// tests/ops/ runs the test and grad modes under GoogleTest. A new backend (CUDA) adds a Backend
// value, moves a Problem's tensors to its device and back, and every case runs on it unchanged.
#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace dsv3::optest {

// ---- Backends ----
enum class Backend { CPU, CUDA };
std::string_view backend_name(Backend b);
// The backends this build contains (CUDA when built with it, whether or not a GPU is visible).
std::vector<Backend> available_backends();
// Empty when the backend can run here; else why not (a CUDA build on a machine without a GPU),
// for the tests to report as skipped.
std::string backend_unusable(Backend b);

// ---- The ops, as a table of function pointers: the fast set or the reference set ----
// A case is written once against an OpSet and run with both.
// The pointer forms of the rotation and the layout moves (ops.h also has Tensor forms).
using RopeFn = void (*)(float*, const ops::RopeSlice&, const int32_t*, const Tensor&,
                        const Tensor&);
using ToHeadsFn = void (*)(const float*, float*, const ops::HeadCopy&);
using ToTokensFn = void (*)(const float*, float*, const ops::HeadCopy&, bool);
using CopyColumnsFn = void (*)(const float*, int64_t, int64_t, int64_t, float*, int64_t);
using PutColumnsFn = void (*)(const float*, int64_t, float*, int64_t, int64_t, int64_t);
struct OpSet {
  decltype(&ops::gemm) gemm;
  decltype(&ops::linear_forward) linear_forward;
  decltype(&ops::linear_backward) linear_backward;
  decltype(&ops::rmsnorm_forward) rmsnorm_forward;
  decltype(&ops::rmsnorm_backward) rmsnorm_backward;
  RopeFn rope_forward;
  RopeFn rope_backward;
  decltype(&ops::swiglu_forward) swiglu_forward;
  decltype(&ops::swiglu_backward) swiglu_backward;
  decltype(&ops::attention_forward) attention_forward;
  decltype(&ops::attention_backward) attention_backward;
  decltype(&ops::attention_forward_lse) attention_forward_lse;
  decltype(&ops::attention_backward_lse) attention_backward_lse;
  decltype(&ops::cross_entropy) cross_entropy;
  decltype(&ops::embedding_forward) embedding_forward;
  decltype(&ops::embedding_backward) embedding_backward;
  decltype(&ops::add) add;
  ToHeadsFn tokens_to_heads;
  ToTokensFn heads_to_tokens;
  CopyColumnsFn copy_columns;
  PutColumnsFn put_columns;
  decltype(&ops::moe_gather_rows) moe_gather_rows;
  decltype(&ops::moe_combine) moe_combine;
  decltype(&ops::moe_combine_backward) moe_combine_backward;
  decltype(&ops::moe_scatter_add) moe_scatter_add;
  decltype(&ops::sum_squares) sum_squares;
  decltype(&ops::scale_inplace) scale_inplace;
  decltype(&ops::adamw_update) adamw_update;
  decltype(&ops::grouped_linear_forward) grouped_linear_forward;
  decltype(&ops::grouped_linear_backward) grouped_linear_backward;
  decltype(&ops::cross_entropy_rows) cross_entropy_rows;
};
const OpSet& fast_ops();       // dsv3::ops (dispatching on the tensors' device)
const OpSet& reference_ops();  // dsv3::ref

// ---- Problems: the named tensors and scalars of one op instance ----
using Dims = std::vector<int64_t>;  // a case's shape parameters; each case documents its own
using Rng = std::mt19937_64;

struct Problem {
  Dims dims;                              // the case's shape parameters (set by the harness)
  std::map<std::string, Tensor> tensors;  // inputs and output buffers (pre-filled for "+=")
  std::map<std::string, double> scalars;  // eps, scale, flags, ...
  Tensor& operator[](const std::string& name);
  const Tensor& operator[](const std::string& name) const;
  double scalar(const std::string& name) const;
  Problem clone() const;  // deep copy
};

// Copies a host problem to a backend's device, and a device tensor back to the host. On a
// device backend every tensor moves, the integer ones (ids, targets, positions) included: an
// op's raw pointer arguments then point into device memory as its tensors do.
Problem to_backend(const Problem& host, Backend b);
Tensor to_host(const Tensor& t);

// Helpers shared by the case files.
Tensor randn(const Shape& shape, Rng& rng, double stddev = 1.0);
int64_t uniform_int(Rng& rng, int64_t lo, int64_t hi);  // inclusive
Tensor filled(const Shape& shape, float v);             // float32, every element v
Tensor int_tensor(const std::vector<int32_t>& v);       // int32 [v.size()]
// Fixed edge cases followed by `n` random draws.
std::function<std::vector<Dims>(Rng&)> shapes(std::vector<Dims> fixed, int n,
                                              std::function<Dims(Rng&)> draw);

// ---- Tolerances ----
// An element passes when |fast - ref| <= rel * |ref| + abs * rms(ref) (rms over the whole
// output, so that values near zero, which carry the rounding error of their large terms, are
// judged on the output's scale). A NaN or infinity on either side never passes.
struct Tolerance {
  double rel = 0, abs = 0;
};
struct Tolerances {
  Tolerance f32;   // float32 kernels (the CPU backend today)
  Tolerance bf16;  // bfloat16 kernels, when a backend computes in bf16
  Tolerance for_dtype(DType d) const { return d == DType::BF16 ? bf16 : f32; }
};

struct Comparison {
  bool ok = true;
  double max_err = 0;        // largest |fast - ref|
  double max_ratio = 0;      // largest |fast - ref| / allowed (<= 1 passes)
  int64_t bad = 0;           // failing elements (NaN included)
  std::string message;       // the first failure, empty when ok
};
Comparison compare(const std::string& what, const Tensor& fast, const Tensor& ref, Tolerance tol);

// ---- Test and perf mode: an op case ----
struct OpCase {
  std::string name;  // "<op>" ; test names append the backend
  std::string dims;  // what the Dims mean, e.g. "rows, dim"
  std::function<std::vector<Dims>(Rng&)> shapes;  // fixed edge cases plus random draws
  std::function<Problem(const Dims&, Rng&)> make;  // host inputs and output buffers
  std::function<void(const OpSet&, Problem&)> run;
  std::vector<std::string> outputs;  // tensors compared after run
  Tolerances tol;
  std::string why;  // why the tolerance is what it is
  // Perf mode: a representative shape and the work it does.
  Dims bench;
  std::function<double(const Dims&)> flops;  // 0: memory-bound, report bytes
  std::function<double(const Dims&)> bytes;
  // The dtype the op computes in on a device backend: picks tol.f32 or tol.bf16.
  DType dtype = DType::F32;
};
const std::vector<OpCase>& op_cases();
// The MoE permutation moves and the optimizer (op_cases_moe_adamw.cpp), part of op_cases().
std::vector<OpCase> moe_optimizer_op_cases();
// The grouped linear ops (op_cases_grouped.cpp), part of op_cases().
std::vector<OpCase> grouped_linear_op_cases();

struct TestResult {
  bool ok = true;
  std::string log;  // one line per output compared
};
// Runs one case on one shape: the fast set on `backend` and the reference set on the host,
// from the same random inputs (seeded by `seed`), and compares every output.
TestResult run_test(const OpCase& c, Backend backend, const Dims& dims, uint64_t seed);

struct PerfResult {
  double fast_s = 0, ref_s = 0;  // seconds per call
  double flops = 0, bytes = 0;
};
PerfResult run_perf(const OpCase& c, Backend backend, double min_seconds);

// ---- Grad mode: finite differences ----
using Vars = std::map<std::string, std::vector<double>>;  // float64 copies of the wrt inputs
struct GradCase {
  std::string name;
  std::vector<Dims> shapes;
  std::function<Problem(const Dims&, Rng&)> make;  // inputs and cotangents
  std::vector<std::string> wrt;                    // differentiable inputs
  // L = sum(cotangent * forward(inputs)) in float64 through the reference forward; `vars`
  // replaces the wrt inputs, everything else is read from the problem.
  std::function<double(const Problem&, const Vars&)> loss;
  // Runs forward then backward with an op set; writes "d_<name>" for each wrt input.
  std::function<void(const OpSet&, Problem&)> backward;
  double tol = 1e-4;  // see check_gradients
};
const std::vector<GradCase>& grad_cases();
// The MoE combine and gather (op_cases_moe_adamw.cpp), part of grad_cases().
std::vector<GradCase> moe_grad_cases();

// Compares the gradients written by `backward` (into "d_<name>") with central differences
// of `loss` in float64: every element of small inputs, `max_probes` random ones of large ones.
// An element passes when |analytic - numeric| <= tol * (|numeric| + rms(numeric)).
TestResult check_gradients(const Problem& base, const std::vector<std::string>& wrt,
                           const std::function<double(const Problem&, const Vars&)>& loss,
                           const std::function<void(Problem&)>& backward, double tol,
                           uint64_t seed, int max_probes = 256);

}  // namespace dsv3::optest
