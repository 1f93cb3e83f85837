// The CUDA ops (kernels/cuda/ops_cuda.h) in a build without the CUDA backend. They are reached
// only when an op is handed device tensors or pointers, which such a build cannot make except
// through a hand-made Tensor::view: each fails with the same message as the allocator.
#include "core/device.h"
#include "kernels/cuda/ops_cuda.h"

namespace dsv3::cuda_ops {
namespace {
[[noreturn]] void unavailable(const char* op) {
  device::require_cuda(op);
  fail("{}: CUDA device requested but dsv3 was built without CUDA", op);
}
}  // namespace

void gemm(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
          int64_t, float, float*, int64_t) {
  unavailable("gemm");
}
void linear_forward(const Tensor&, const Tensor&, Tensor&) { unavailable("linear_forward"); }
void linear_backward(const Tensor&, const Tensor&, const Tensor&, Tensor*, Tensor*, bool, bool) {
  unavailable("linear_backward");
}
void grouped_linear_forward(const Tensor&, const std::vector<const Tensor*>&, const int64_t*,
                            Tensor&) {
  unavailable("grouped_linear_forward");
}
void grouped_linear_backward(const Tensor&, const std::vector<const Tensor*>&, const Tensor&,
                             const int64_t*, Tensor*, const std::vector<Tensor*>&, bool) {
  unavailable("grouped_linear_backward");
}
void rmsnorm_forward(const Tensor&, const Tensor&, float, Tensor&, Tensor&, Tensor*) {
  unavailable("rmsnorm_forward");
}
void rmsnorm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&,
                      bool, bool, Tensor*) {
  unavailable("rmsnorm_backward");
}
void rope(float*, const ops::RopeSlice&, const int32_t*, const Tensor&, const Tensor&, bool,
          uint16_t*) {
  unavailable("rope");
}
void rope_bf16(uint16_t*, const ops::RopeSlice&, const int32_t*, const Tensor&, const Tensor&,
               bool) {
  unavailable("rope");
}
void swiglu_forward(const Tensor&, Tensor&) { unavailable("swiglu_forward"); }
void swiglu_backward(const Tensor&, const Tensor&, Tensor&) { unavailable("swiglu_backward"); }
void attention_forward(const Tensor&, const Tensor&, const Tensor&, float, Tensor&, Tensor&) {
  unavailable("attention_forward");
}
void attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        float, Tensor&, Tensor&, Tensor&, Tensor&) {
  unavailable("attention_backward");
}
void attention_forward_lse(const Tensor&, const Tensor&, const Tensor&, float, Tensor&, Tensor&) {
  unavailable("attention_forward_lse");
}
void attention_backward_lse(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                            const Tensor&, const Tensor&, float, Tensor&, Tensor&, Tensor&) {
  unavailable("attention_backward_lse");
}
double cross_entropy(const Tensor&, const int32_t*, float, Tensor*) {
  unavailable("cross_entropy");
}
void cross_entropy_rows(const Tensor&, const int32_t*, float, Tensor*, Tensor&) {
  unavailable("cross_entropy_rows");
}
void embedding_forward(const Tensor&, const int32_t*, int64_t, Tensor&) {
  unavailable("embedding_forward");
}
void embedding_backward(const int32_t*, int64_t, const Tensor&, Tensor&) {
  unavailable("embedding_backward");
}
void add(const Tensor&, const Tensor&, Tensor&) { unavailable("add"); }
void convert(const Tensor&, Tensor&) { unavailable("convert"); }
void f32_to_bf16_all(const std::vector<std::pair<const Tensor*, Tensor*>>&) {
  unavailable("f32_to_bf16_all");
}
bool mla_attention_token_major(const ops::MlaAttentionShape&) { return false; }
void mla_attention_forward(const Tensor&, const Tensor&, const Tensor&, const ops::MlaAttentionShape&,
                           float, Tensor&, Tensor&) {
  unavailable("mla_attention_forward");
}
void mla_attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                            const Tensor&, const Tensor&, const ops::MlaAttentionShape&, float,
                            Tensor&, Tensor&, Tensor&, const ops::QueryRope*) {
  unavailable("mla_attention_backward");
}
void rope_to_bf16(const Tensor&, const ops::RopeSlice&, const int32_t*, const Tensor&,
                  const Tensor&, bool inverse, Tensor&) {
  unavailable(inverse ? "rope_backward_bf16" : "rope_forward_bf16");
}
void tokens_to_heads(const float*, float*, const ops::HeadCopy&) { unavailable("tokens_to_heads"); }
void heads_to_tokens(const float*, float*, const ops::HeadCopy&, bool) {
  unavailable("heads_to_tokens");
}
void copy_columns(const float*, int64_t, int64_t, int64_t, float*, int64_t) {
  unavailable("copy_columns");
}
void put_columns(const float*, int64_t, float*, int64_t, int64_t, int64_t) {
  unavailable("put_columns");
}
void tokens_to_heads_bf16(const float*, uint16_t*, const ops::HeadCopy&) {
  unavailable("tokens_to_heads");
}
void heads_to_tokens_bf16(const float*, uint16_t*, const ops::HeadCopy&) {
  unavailable("heads_to_tokens");
}
void put_columns_bf16(const float*, int64_t, uint16_t*, int64_t, int64_t, int64_t) {
  unavailable("put_columns");
}
void moe_gather_rows(const Tensor&, const int32_t*, Tensor&) { unavailable("moe_gather_rows"); }
void moe_combine(const Tensor&, const int32_t*, const Tensor&, Tensor&, const Tensor*) {
  unavailable("moe_combine");
}
void moe_combine_backward(const Tensor&, const Tensor&, const int32_t*, const Tensor&, Tensor&,
                          Tensor&) {
  unavailable("moe_combine_backward");
}
void moe_scatter_add(const Tensor&, const int32_t*, int64_t, Tensor&) {
  unavailable("moe_scatter_add");
}
void route_forward(const ops::RouteSpec&, const Tensor&, const Tensor*, Tensor&, Tensor&, Tensor&,
                   Tensor&, Tensor&, Tensor&) {
  unavailable("route_forward");
}
void route_backward(const ops::RouteSpec&, double, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, const Tensor&, Tensor&) {
  unavailable("route_backward");
}
void moe_permute(const Tensor&, const Tensor&, Tensor&, Tensor&) { unavailable("moe_permute"); }
double sum_squares(const Tensor&, double) { unavailable("sum_squares"); }
double sum_squares_all(const std::vector<const Tensor*>&) { unavailable("sum_squares_all"); }
void scale_inplace(Tensor&, float) { unavailable("scale_inplace"); }
void adamw_update(Tensor&, const Tensor&, Tensor&, Tensor&, const ops::AdamWScalars&) {
  unavailable("adamw_update");
}
void adamw_update_all(const std::vector<ops::AdamWTensors>&, const ops::AdamWScalars&) {
  unavailable("adamw_update_all");
}
uint64_t matmul_operand_conversions() { return 0; }

}  // namespace dsv3::cuda_ops
