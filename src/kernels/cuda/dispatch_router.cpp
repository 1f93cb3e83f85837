// The tensor-level CUDA ops of the MoE router (kernels/cuda/ops_cuda.h; kernels in router.cu).
// Shapes were checked by the ops:: entry points (kernels/cpu/router.cpp); here: devices and
// dtypes, the parameter structs, and the float64 scratch of the per-sequence sums.
#include <cuda_runtime.h>

#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/scratch.h"

namespace dsv3::cuda_ops {
namespace {

using cuda::check;
using cuda::Scratch;
using cuda::stream;

void need_cuda(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    DSV3_CHECK(t->device() == Device::CUDA, "{}: an operand is on {}, the others on cuda", op,
               device_name(t->device()));
}

void need_f32(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    DSV3_CHECK(t->dtype() == DType::F32, "{}: an operand is {}; the CUDA router runs in float32",
               op, dtype_name(t->dtype()));
}

// Tokens per chunk of the per-sequence float64 sums (router.cu).
constexpr int64_t kSeqChunk = 64;

// The fields the forward and backward parameters share, from the spec and the token count.
template <typename Params>
void set_routing(Params& p, const ops::RouteSpec& spec, int64_t n) {
  p.select = spec.select;
  p.sigmoid = spec.sigmoid;
  p.norm_topk = spec.norm_topk;
  p.scaling = float(spec.scaling);
  p.n = n;
  p.seq = spec.seq;
  p.batch = n / spec.seq;
}

}  // namespace

void route_forward(const ops::RouteSpec& spec, const Tensor& logits, const Tensor* bias,
                   Tensor& scores, Tensor& indices, Tensor& weights, Tensor& score_sum,
                   Tensor& seq_counts, Tensor& seq_prob) {
  need_cuda("route_forward", {&logits, &scores, &indices, &weights, &score_sum, &seq_counts,
                              &seq_prob});
  need_f32("route_forward", {&logits, &scores, &weights, &score_sum});
  if (bias) need_cuda("route_forward", {bias});
  DSV3_CHECK(spec.select.experts <= cuda::kMaxWarpSelectExperts,
             "route_forward on cuda: {} routed experts; the device router holds up to {}",
             spec.select.experts, cuda::kMaxWarpSelectExperts);
  cuda::RouteForward p{};
  p.logits = logits.f32();
  p.bias = bias ? bias->f32() : nullptr;
  p.scores = scores.f32();
  p.indices = indices.i32();
  p.weights = weights.f32();
  p.score_sum = score_sum.f32();
  p.seq_counts = seq_counts.f32();
  p.seq_prob = seq_prob.f64();
  set_routing(p, spec, score_sum.numel());
  p.chunk = kSeqChunk;
  const int64_t partials = p.batch * cuda::route_seq_chunks(p.seq, p.chunk) * spec.select.experts;
  Scratch partial(size_t(std::max<int64_t>(partials, 1)) * sizeof(double), "route_forward");
  p.seq_partial = partial.as<double>();
  check(cudaMemsetAsync(p.seq_counts, 0, size_t(seq_counts.numel()) * sizeof(float), stream()),
        "route_forward");
  const cudaError_t launched = cuda::route_forward(p, stream());
  check(launched, "route_forward");
}

void route_backward(const ops::RouteSpec& spec, double alpha, const Tensor& scores,
                    const Tensor& indices, const Tensor& score_sum, const Tensor& seq_counts,
                    const Tensor& d_weights, Tensor& d_logits) {
  need_cuda("route_backward", {&scores, &indices, &score_sum, &seq_counts, &d_weights, &d_logits});
  need_f32("route_backward", {&scores, &score_sum, &d_weights, &d_logits});
  cuda::RouteBackward p{};
  p.scores = scores.f32();
  p.indices = indices.i32();
  p.score_sum = score_sum.f32();
  p.seq_counts = seq_counts.f32();
  p.d_weights = d_weights.f32();
  p.d_logits = d_logits.f32();
  set_routing(p, spec, score_sum.numel());
  p.alpha = float(alpha);
  check(cuda::route_backward(p, stream()), "route_backward");
}

void moe_permute(const Tensor& indices, const Tensor& offsets, Tensor& permuted_token,
                 Tensor& permuted_row) {
  need_cuda("moe_permute", {&indices, &offsets, &permuted_token, &permuted_row});
  cuda::MoePermute p{};
  p.indices = indices.i32();
  p.offsets = offsets.i64();
  p.permuted_token = permuted_token.i32();
  p.permuted_row = permuted_row.i32();
  p.assignments = indices.numel();
  p.k = indices.dim(-1);
  p.experts = offsets.numel() - 1;
  check(cuda::moe_permute(p, stream()), "moe_permute");
}

}  // namespace dsv3::cuda_ops
