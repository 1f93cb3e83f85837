// MLA's attention on its token-major projections (kernels/ops.h). A GPU path only: the BF16
// kernels read the projections in place; the CPU runs MLA through head-major copies
// (model/mla.cpp), so these entry points only check where their tensors are.
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"

namespace dsv3::ops {
namespace {
void need_gpu(const char* op, const Tensor& t) {
  DSV3_CHECK(t.device() == Device::CUDA,
             "{}: runs on a GPU only (the CPU attention reads head-major copies); got a tensor on "
             "the {}",
             op, device_name(t.device()));
}
}  // namespace

bool mla_attention_token_major(const MlaAttentionShape& s) {
  return cuda_ops::mla_attention_token_major(s);
}

void mla_attention_forward(const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                           const MlaAttentionShape& s, double scale, Tensor& lse, Tensor& o) {
  need_gpu("mla_attention_forward", q);
  cuda_ops::mla_attention_forward(q, kv, k_pe, s, float(scale), lse, o);
}

void mla_attention_backward(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const Tensor& o,
                            const Tensor& lse, const Tensor& d_o, const MlaAttentionShape& s,
                            double scale, Tensor& d_q, Tensor& d_kv, Tensor& d_k_pe,
                            const QueryRope* rotate_back) {
  need_gpu("mla_attention_backward", q);
  cuda_ops::mla_attention_backward(q, kv, k_pe, o, lse, d_o, s, float(scale), d_q, d_kv, d_k_pe,
                                   rotate_back);
}

void rope_forward_bf16(const Tensor& x, const RopeSlice& s, const int32_t* positions,
                       const Tensor& cos, const Tensor& sin, Tensor& out) {
  need_gpu("rope_forward_bf16", x);
  cuda_ops::rope_to_bf16(x, s, positions, cos, sin, false, out);
}

void rope_backward_bf16(const Tensor& d_x, const RopeSlice& s, const int32_t* positions,
                        const Tensor& cos, const Tensor& sin, Tensor& out) {
  need_gpu("rope_backward_bf16", d_x);
  cuda_ops::rope_to_bf16(d_x, s, positions, cos, sin, true, out);
}

}  // namespace dsv3::ops
