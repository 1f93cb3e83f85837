// MLA's attention on its token-major projections (kernels/ops.h, mla_attention_*): the BF16
// attention kernels (attention_bf16*.cu) pointed at the projections' rows through HeadRows
// strides, so that no head-major copy is made on either side; and the rope rotation into the
// BF16 queries and rope key those kernels read.
#include <cuda_runtime.h>

#include "kernels/cuda/context.h"
#include "kernels/cuda/index_errors.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/scratch.h"

namespace dsv3::cuda_ops {
namespace {

using cuda::check;
using cuda::HeadRows;
using cuda::Scratch;
using cuda::stream;

// Where each operand's rows lie. Row t of head h of sequence b in a token-major [B T, H w]
// buffer: (b T + t) H w + h w; a per-token vector shared by the heads: (b T + t) w.
struct MlaRows {
  int64_t n, dq, dkv;    // rows (B T); q's and kv's per-head widths
  HeadRows q, kv, k_pe, o, k_pe_heads;
  explicit MlaRows(const ops::MlaAttentionShape& s)
      : n(s.batch * s.seq), dq(s.nope + s.rope), dkv(s.nope + s.v) {
    const int64_t h = s.heads, t = s.seq;
    q = {h * dq, dq, t * h * dq};
    kv = {h * dkv, dkv, t * h * dkv};
    k_pe = {s.rope, 0, t * s.rope};
    o = {h * s.v, s.v, t * h * s.v};
    k_pe_heads = {s.rope, t * s.rope, h * t * s.rope};  // head-major [B, H, T, rope] scratch
  }
};

void check_tensor(const Tensor& t, DType dtype, int64_t numel, const char* op, const char* name) {
  DSV3_CHECK(t.device() == Device::CUDA && t.dtype() == dtype && t.numel() == numel,
             "{}: {} is {} {} on the {}; expected {} values of {} on cuda", op, name,
             t.shape().str(), dtype_name(t.dtype()), device_name(t.device()), numel,
             dtype_name(dtype));
  DSV3_CHECK(reinterpret_cast<uintptr_t>(t.data()) % 16 == 0,
             "{}: {} is not 16-byte aligned (the kernels load 16-byte chunks)", op, name);
}

// Checks the shape is one the kernels take and the inputs the forward and backward share.
void check_inputs(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const Tensor& lse,
                  const Tensor& o, const ops::MlaAttentionShape& s, const char* op) {
  DSV3_CHECK(cuda_ops::mla_attention_token_major(s),
             "{}: heads {} with nope {}, rope {}, v {} are not taken by the token-major BF16 "
             "kernels (each a multiple of 8, nope + rope and v within 192 / 128)",
             op, s.heads, s.nope, s.rope, s.v);
  DSV3_CHECK(s.batch * s.heads <= 65535, "{}: batch x heads = {} exceeds the grid's 65535", op,
             s.batch * s.heads);
  const MlaRows r(s);
  check_tensor(q, DType::BF16, r.n * s.heads * r.dq, op, "q");
  check_tensor(kv, DType::BF16, r.n * s.heads * r.dkv, op, "kv");
  check_tensor(k_pe, DType::BF16, r.n * s.rope, op, "k_pe");
  check_tensor(lse, DType::F32, s.batch * s.heads * s.seq, op, "lse");
  check_tensor(o, DType::BF16, r.n * s.heads * s.v, op, "o");
}

// The operands both directions read: q, the key from kv's nope columns and k_pe, v from kv's
// v columns.
template <typename Params>
void set_inputs(Params& p, const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                const ops::MlaAttentionShape& s, float scale) {
  const MlaRows r(s);
  p.q = q.bf16();
  p.k = kv.bf16();
  p.k2 = k_pe.bf16();
  p.v = kv.bf16() + s.nope;
  p.q_rows = r.q;
  p.k_rows = p.v_rows = r.kv;
  p.k2_rows = r.k_pe;
  p.o_rows = r.o;
  p.bh = s.batch * s.heads;
  p.heads = s.heads;
  p.seq = s.seq;
  p.qk_dim = r.dq;
  p.k_split = s.nope;
  p.v_dim = s.v;
  p.scale = scale;
}
}  // namespace

bool mla_attention_token_major(const ops::MlaAttentionShape& s) {
  const int64_t dq = s.nope + s.rope;
  if (s.nope % 8 || s.rope % 8 || s.v % 8 || s.nope < 8 || s.rope < 8 || s.heads < 1) return false;
  if (!cuda::attention_bf16_forward_supported(dq, s.v) ||
      !cuda::attention_bf16_backward_supported(dq, s.v))
    return false;
  const char* op = "mla_attention";
  return cuda::smem_fits(cuda::attention_bf16_forward_smem_bytes(dq, s.v), op) &&
         cuda::smem_fits(cuda::attention_bf16_backward_smem_bytes(dq, s.v), op);
}

void mla_attention_forward(const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                           const ops::MlaAttentionShape& s, float scale, Tensor& lse, Tensor& o) {
  const char* op = "mla_attention_forward";
  check_inputs(q, kv, k_pe, lse, o, s, op);
  cuda::AttentionForwardBf16 p;
  set_inputs(p, q, kv, k_pe, s, scale);
  p.o = o.data();
  p.lse = lse.f32();
  check(cuda::attention_forward_bf16(p, stream()), op);
}

void mla_attention_backward(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const Tensor& o,
                            const Tensor& lse, const Tensor& d_o, const ops::MlaAttentionShape& s,
                            float scale, Tensor& d_q, Tensor& d_kv, Tensor& d_k_pe,
                            const ops::QueryRope* rotate_back) {
  const char* op = "mla_attention_backward";
  check_inputs(q, kv, k_pe, lse, o, s, op);
  const MlaRows r(s);
  check_tensor(d_o, DType::BF16, o.numel(), op, "d_o");
  check_tensor(d_q, rotate_back ? DType::BF16 : DType::F32, q.numel(), op, "d_q");
  check_tensor(d_kv, DType::BF16, kv.numel(), op, "d_kv");
  check_tensor(d_k_pe, DType::F32, k_pe.numel(), op, "d_k_pe");
  // Each head's rope-key gradient [B, H, T, rope], summed over the heads afterwards.
  Scratch k_pe_heads(size_t(r.n * s.heads * s.rope) * sizeof(float), op);
  Scratch rows(size_t(s.batch * s.heads * s.seq) * sizeof(float), op);
  cuda::AttentionBackwardBf16 p;
  set_inputs(p, q, kv, k_pe, s, scale);
  p.o = o.data();
  p.lse = lse.f32();
  p.d_o = d_o.bf16();
  p.d_o_rows = r.o;
  p.d_rows = rows.as<float>();
  p.d_q_rows = r.q;
  if (rotate_back) {
    // The dq kernel rotates each rope pair in its store: the pairs start at column nope (a
    // multiple of 8, so even) of each head.
    const Tensor &cos = *rotate_back->cos, &sin = *rotate_back->sin;
    DSV3_CHECK(cos.device() == Device::CUDA && sin.device() == Device::CUDA &&
                   cos.dtype() == DType::F32 && cos.ndim() == 2 && cos.dim(1) == s.rope / 2 &&
                   sin.shape() == cos.shape() && sin.dtype() == DType::F32,
               "{}: rope tables cos {} and sin {} must be float32 [positions, {}] on cuda", op,
               cos.shape().str(), sin.shape().str(), s.rope / 2);
    p.d_q_bf16 = d_q.bf16();
    p.positions = rotate_back->positions;
    p.rope_cos = cos.f32();
    p.rope_sin = sin.f32();
    p.max_pos = cos.dim(0);
    p.rope_offset = s.nope;
    p.rope_dim = s.rope;
    p.error = cuda::index_error_record();
  } else {
    p.d_q = d_q.f32();
  }
  p.d_k = d_kv.bf16();
  p.d_v = d_kv.bf16() + s.nope;
  p.d_k_rows = p.d_v_rows = r.kv;
  p.d_k2 = k_pe_heads.as<float>();
  p.d_k2_rows = r.k_pe_heads;
  p.d_kv_bf16 = true;
  check(cuda::attention_backward_bf16(p, stream()), op);
  const ops::HeadCopy sum_heads{s.batch, s.seq, s.heads, s.rope, s.rope, 0, 0, s.rope, 0};
  cuda_ops::heads_to_tokens(k_pe_heads.as<float>(), d_k_pe.f32(), sum_heads, false);
}

void rope_to_bf16(const Tensor& x, const ops::RopeSlice& s, const int32_t* positions,
                  const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out) {
  const char* op = inverse ? "rope_backward_bf16" : "rope_forward_bf16";
  const int64_t numel = s.rows * s.heads * s.head_stride;
  DSV3_CHECK(x.device() == Device::CUDA && x.dtype() == DType::F32 && x.numel() == numel &&
                 out.device() == Device::CUDA && out.dtype() == DType::BF16 &&
                 out.numel() == numel && cos.device() == Device::CUDA &&
                 sin.device() == Device::CUDA,
             "{}: x {} {} and out {} {} must be float32 and bfloat16 on cuda, both of {} values "
             "([rows {}, heads {}, head_stride {}]), with the tables on cuda",
             op, x.shape().str(), dtype_name(x.dtype()), out.shape().str(),
             dtype_name(out.dtype()), numel, s.rows, s.heads, s.head_stride);
  // rope() checks the slice against the tables and launches; x is only read (Rope::out_bf16).
  rope(const_cast<float*>(x.f32()), s, positions, cos, sin, inverse, out.bf16());
}

}  // namespace dsv3::cuda_ops
