// The tensor-level CUDA ops (kernels/cuda/ops_cuda.h): check shapes, devices and dtypes, fill
// the kernels' parameter structs (kernels/cuda/params.h), launch, and turn CUDA errors into
// dsv3::Error. The kernels themselves are in the .cu files beside this one, one op a file.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "core/device.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/grouped_padded.h"
#include "kernels/cuda/index_errors.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/scratch.h"

namespace dsv3::cuda_ops {
namespace {

using cuda::check;
using cuda::stream;

void need_device(const Tensor& t, const char* op, const char* name) {
  DSV3_CHECK(t.device() == Device::CUDA, "{}: {} is on {}, the other operands on cuda", op, name,
             device_name(t.device()));
}

void need_devices(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts) need_device(*t, op, "an operand");
}

using cuda::Scratch;

// A host table copied into stream-ordered scratch (the copy stages pageable memory before it
// returns, so `rows` may go once this does).
template <typename T>
void upload_table(const std::vector<T>& rows, const Scratch& dev, const char* op) {
  check(cudaMemcpyAsync(dev.as<T>(), rows.data(), rows.size() * sizeof(T), cudaMemcpyHostToDevice,
                        stream()),
        op);
}

// A tensor a kernel reads or writes as float32, or as BF16 when the tensor is BF16 (outputs
// rounded to nearest even, inputs widened exactly). In mixed precision the activations that
// only BF16 GEMMs read are stored that way, which the GEMM's own rounding of a float32 operand
// would give bit for bit, and so are the FFNs' intermediates (Arena::alloc_ffn_intermediate).
struct F32OrBf16 {
  float* f32 = nullptr;
  uint16_t* bf16 = nullptr;
};
F32OrBf16 f32_or_bf16(const Tensor& t, const char* op, const char* name) {
  if (t.dtype() == DType::BF16) return {nullptr, t.bf16()};
  DSV3_CHECK(t.dtype() == DType::F32, "{}: {} is {}, not float32 or bfloat16", op, name,
             dtype_name(t.dtype()));
  return {t.f32(), nullptr};
}

cudaDataType_t blas_type(DType d, const char* op) {
  switch (d) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    default: fail("{}: dtype {} is not supported on cuda (float32 or bfloat16)", op, dtype_name(d));
  }
}

}  // namespace

// ---- GEMM and linear ----

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cuda::BlasGemm g;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.m = m;
  g.n = n;
  g.k = k;
  g.alpha = alpha;
  g.beta = beta;
  g.a = a;
  g.lda = lda;
  g.b = b;
  g.ldb = ldb;
  g.c = c;
  g.ldc = ldc;
  cuda::blas_gemm(g, "gemm");
}

namespace {
void check_linear(const Tensor& x, const Tensor& w, int64_t rows, const char* op) {
  need_device(x, op, "x");
  need_device(w, op, "W");
  DSV3_CHECK(w.ndim() == 2 && x.numel() == rows * w.dim(1), "{}: x {} does not match W {}", op,
             x.shape().str(), w.shape().str());
  DSV3_CHECK(x.dtype() == w.dtype(), "{}: x is {} but W is {}", op, dtype_name(x.dtype()),
             dtype_name(w.dtype()));
}
}  // namespace

namespace {
std::atomic<uint64_t> operand_conversions{0};

// Mixed precision: float32 activations against a BF16 weight are rounded to BF16 into scratch
// first, so that the GEMM runs on tensor cores with float32 accumulation.
Tensor bf16_operand(const Tensor& t, std::optional<Scratch>& holder, const char* op) {
  if (t.dtype() == DType::BF16) return t;
  operand_conversions.fetch_add(1, std::memory_order_relaxed);
  holder.emplace(size_t(t.numel()) * 2, op);
  Tensor b = Tensor::view(holder->as<void>(), t.shape(), DType::BF16, Device::CUDA);
  convert(t, b);
  return b;
}
}  // namespace

uint64_t matmul_operand_conversions() { return operand_conversions.load(); }

void linear_forward(const Tensor& x_in, const Tensor& w, Tensor& y) {
  std::optional<Scratch> x_bf16;
  const Tensor x = w.dtype() == DType::BF16 && x_in.dtype() == DType::F32
                       ? bf16_operand(x_in, x_bf16, "linear_forward")
                       : x_in;
  const int64_t in = w.dim(1), out = w.dim(0), rows = in ? x.numel() / in : 0;
  check_linear(x, w, rows, "linear_forward");
  need_device(y, "linear_forward", "y");
  DSV3_CHECK(y.numel() == rows * out, "linear_forward: y {} is not [{}, {}]", y.shape().str(),
             rows, out);
  cuda::BlasGemm g;
  g.trans_b = true;  // y = x W^T
  g.m = rows;
  g.n = out;
  g.k = in;
  g.a = x.data();
  g.lda = in;
  g.b = w.data();
  g.ldb = in;
  g.c = y.data();
  g.ldc = out;
  g.ab_type = blas_type(x.dtype(), "linear_forward");
  g.c_type = blas_type(y.dtype(), "linear_forward");
  cuda::blas_gemm(g, "linear_forward");
}

void linear_backward(const Tensor& x_in, const Tensor& w, const Tensor& d_y_in, Tensor* d_x,
                     Tensor* d_w, bool accumulate_d_x, bool accumulate_d_w) {
  // Against BF16 weights each float32 operand is rounded (one may already be stored in BF16).
  std::optional<Scratch> x_bf16, d_y_bf16;
  const bool mixed = w.dtype() == DType::BF16;
  const Tensor x = mixed ? bf16_operand(x_in, x_bf16, "linear_backward") : x_in;
  const Tensor d_y = mixed ? bf16_operand(d_y_in, d_y_bf16, "linear_backward") : d_y_in;
  const int64_t in = w.dim(1), out = w.dim(0), rows = in ? x.numel() / in : 0;
  check_linear(x, w, rows, "linear_backward");
  need_device(d_y, "linear_backward", "d_y");
  DSV3_CHECK(d_y.dtype() == x.dtype() && d_y.numel() == rows * out,
             "linear_backward: d_y {} {} does not match x {}", d_y.shape().str(),
             dtype_name(d_y.dtype()), dtype_name(x.dtype()));
  const cudaDataType_t ab = blas_type(x.dtype(), "linear_backward");
  if (d_x) {  // d_x [rows, in] = d_y [rows, out] W [out, in]
    need_device(*d_x, "linear_backward", "d_x");
    DSV3_CHECK(d_x->numel() == rows * in, "linear_backward: d_x {} is not [{}, {}]",
               d_x->shape().str(), rows, in);
    cuda::BlasGemm g;
    g.m = rows;
    g.n = in;
    g.k = out;
    g.beta = accumulate_d_x ? 1.0f : 0.0f;
    g.a = d_y.data();
    g.lda = out;
    g.b = w.data();
    g.ldb = in;
    g.c = d_x->data();
    g.ldc = in;
    g.ab_type = ab;
    g.c_type = blas_type(d_x->dtype(), "linear_backward");
    cuda::blas_gemm(g, "linear_backward d_x");
  }
  if (d_w) {  // d_w [out, in] (+= or =) d_y^T [out, rows] x [rows, in]
    need_device(*d_w, "linear_backward", "d_w");
    DSV3_CHECK(d_w->shape() == w.shape(), "linear_backward: d_w {} is not W's {}",
               d_w->shape().str(), w.shape().str());
    cuda::BlasGemm g;
    g.trans_a = true;
    g.m = out;
    g.n = in;
    g.k = rows;
    g.beta = accumulate_d_w ? 1.0f : 0.0f;
    g.a = d_y.data();
    g.lda = out;
    g.b = x.data();
    g.ldb = in;
    g.c = d_w->data();
    g.ldc = in;
    g.ab_type = ab;
    g.c_type = blas_type(d_w->dtype(), "linear_backward");
    cuda::blas_gemm(g, "linear_backward d_w");
  }
}

// ---- Grouped linear ----

namespace {
// Checks the groups and returns the rows of x. Every weight has W[0]'s shape and dtype.
int64_t check_grouped(const Tensor& x, const std::vector<const Tensor*>& w, const int64_t* offsets,
                      const char* op) {
  DSV3_CHECK(!w.empty() && w[0] && w[0]->ndim() == 2, "{}: no groups, or W is not 2-D", op);
  need_device(x, op, "x");
  DSV3_CHECK(x.dtype() == DType::F32 || (x.dtype() == DType::BF16 && w[0]->dtype() == DType::BF16),
             "{}: x is {}, not float32 (or bfloat16 against bfloat16 weights)", op,
             dtype_name(x.dtype()));
  const int64_t in = w[0]->dim(1), rows = in ? x.numel() / in : 0;
  DSV3_CHECK(x.numel() == rows * in, "{}: x {} does not match W {}", op, x.shape().str(),
             w[0]->shape().str());
  DSV3_CHECK(offsets != nullptr && offsets[0] == 0 && offsets[w.size()] == rows,
             "{}: {} groups whose offsets do not cover the {} rows of x", op, w.size(), rows);
  for (size_t g = 0; g < w.size(); ++g) {
    DSV3_CHECK(offsets[g + 1] >= offsets[g], "{}: offsets decrease at group {}", op, g);
    DSV3_CHECK(w[g] && w[g]->shape() == w[0]->shape() && w[g]->dtype() == w[0]->dtype(),
               "{}: W of group {} differs from group 0's {} {}", op, g, w[0]->shape().str(),
               dtype_name(w[0]->dtype()));
    need_device(*w[g], op, "W");
  }
  blas_type(w[0]->dtype(), op);
  return rows;
}

// The BF16 operand of a mixed-precision grouped GEMM: the whole [R, cols] buffer rounded once
// (one conversion for all groups) unless it is stored in BF16 already, or the float32 tensor
// itself when the weights are float32.
const void* grouped_operand(const Tensor& t, DType w_dtype, std::optional<Scratch>& holder,
                            const char* op) {
  if (w_dtype == DType::F32) return t.data();
  return bf16_operand(t, holder, op).data();
}

// Row offset of group g in a row-major [R, cols] buffer of `elem` bytes per value.
const void* row_ptr(const void* base, int64_t row, int64_t cols, size_t elem) {
  return static_cast<const char*>(base) + size_t(row * cols) * elem;
}

// A grouped product's output `out` [rows, cols]: float32, or BF16 against BF16 weights (mixed
// precision stores the routed experts' intermediates so: docs/cuda.md).
cuda::GroupedOutput grouped_output(Tensor& out, DType w_dtype, int64_t rows, int64_t cols,
                                   const char* op, const char* name) {
  need_device(out, op, name);
  const bool dtype_ok =
      out.dtype() == DType::F32 || (out.dtype() == DType::BF16 && w_dtype == DType::BF16);
  DSV3_CHECK(dtype_ok && out.numel() == rows * cols,
             "{}: {} {} {} is not [{}, {}] float32 (or bfloat16 against bfloat16 weights)", op,
             name, out.shape().str(), dtype_name(out.dtype()), rows, cols);
  return {out.data(), out.dtype() == DType::BF16};
}
}  // namespace

void grouped_linear_forward(const Tensor& x_in, const std::vector<const Tensor*>& w,
                            const int64_t* offsets, Tensor& y) {
  const char* op = "grouped_linear_forward";
  const int64_t rows = check_grouped(x_in, w, offsets, op);
  const int64_t in = w[0]->dim(1), out = w[0]->dim(0);
  const DType wt = w[0]->dtype();
  const cuda::GroupedOutput y_out = grouped_output(y, wt, rows, out, op, "y");
  std::optional<Scratch> x_bf16;
  const void* x = grouped_operand(x_in, wt, x_bf16, op);
  if (cuda::grouped_linear_forward_padded(x, w, offsets, rows, y_out)) return;
  const size_t xe = wt == DType::BF16 ? 2 : 4;
  cuda::BlasGroupedGemm g;  // per group: y_g [r_g, out] = x_g [r_g, in] W_g^T
  g.trans_b = true;
  g.lda = in;
  g.ldb = in;
  g.ldc = out;
  g.ab_type = blas_type(wt, op);
  g.c_type = blas_type(y.dtype(), op);
  for (size_t e = 0; e < w.size(); ++e) {
    const int64_t b = offsets[e], r = offsets[e + 1] - b;
    if (r == 0) continue;
    g.m.push_back(r);
    g.n.push_back(out);
    g.k.push_back(in);
    g.a.push_back(row_ptr(x, b, in, xe));
    g.b.push_back(w[e]->data());
    g.c.push_back(const_cast<void*>(row_ptr(y_out.data, b, out, y_out.elem_bytes())));
  }
  cuda::blas_grouped_gemm(g, op);
}

void grouped_linear_backward(const Tensor& x_in, const std::vector<const Tensor*>& w,
                             const Tensor& d_y_in, const int64_t* offsets, Tensor* d_x,
                             const std::vector<Tensor*>& d_w, bool accumulate_d_w) {
  const char* op = "grouped_linear_backward";
  const int64_t rows = check_grouped(x_in, w, offsets, op);
  const int64_t in = w[0]->dim(1), out = w[0]->dim(0);
  need_device(d_y_in, op, "d_y");
  const DType wt = w[0]->dtype();
  DSV3_CHECK((d_y_in.dtype() == DType::F32 || (d_y_in.dtype() == DType::BF16 && wt == DType::BF16)) &&
                 d_y_in.numel() == rows * out,
             "{}: d_y {} {} is not [{}, {}] float32 (or bfloat16 against bfloat16 weights)", op,
             d_y_in.shape().str(), dtype_name(d_y_in.dtype()), rows, out);
  DSV3_CHECK(d_w.size() == w.size(), "{}: {} weights but {} gradients", op, w.size(), d_w.size());
  const cuda::GroupedOutput d_x_out =
      d_x ? grouped_output(*d_x, wt, rows, in, op, "d_x") : cuda::GroupedOutput{nullptr, false};
  for (size_t e = 0; e < w.size(); ++e) {
    if (offsets[e + 1] == offsets[e] && accumulate_d_w) continue;  // not touched
    DSV3_CHECK(d_w[e] && d_w[e]->shape() == w[e]->shape() && d_w[e]->dtype() == DType::F32,
               "{}: d_w of group {} is not float32 of W's shape {}", op, e, w[e]->shape().str());
    need_device(*d_w[e], op, "d_w");
  }
  const cudaDataType_t ab = blas_type(wt, op);
  const size_t e_size = wt == DType::BF16 ? 2 : 4;
  std::optional<Scratch> x_bf16, d_y_bf16;
  const void* d_y = grouped_operand(d_y_in, wt, d_y_bf16, op);
  const void* x = grouped_operand(x_in, wt, x_bf16, op);
  // The input gradient as batched products over chunks where that path applies.
  const bool d_x_done = d_x && cuda::grouped_linear_backward_padded(d_y, w, offsets, rows, d_x_out);
  // per group: d_x_g [r_g, in] = d_y_g [r_g, out] W_g [out, in]
  cuda::BlasGroupedGemm gx;
  gx.lda = out;
  gx.ldb = in;
  gx.ldc = in;
  gx.ab_type = ab;
  if (d_x) gx.c_type = blas_type(d_x->dtype(), op);
  if (d_x && !d_x_done) {
    for (size_t e = 0; e < w.size(); ++e) {
      const int64_t b = offsets[e], r = offsets[e + 1] - b;
      if (r == 0) continue;
      gx.m.push_back(r);
      gx.n.push_back(in);
      gx.k.push_back(out);
      gx.a.push_back(row_ptr(d_y, b, out, e_size));
      gx.b.push_back(w[e]->data());
      gx.c.push_back(const_cast<void*>(row_ptr(d_x_out.data, b, in, d_x_out.elem_bytes())));
    }
  }
  // per group: d_w_g [out, in] (+= or =) d_y_g^T [out, r_g] x_g [r_g, in]; an empty group's
  // overwritten gradient is a sum over no rows: zero.
  cuda::BlasGroupedGemm gw;
  gw.trans_a = true;
  gw.beta = accumulate_d_w ? 1.0f : 0.0f;
  gw.lda = out;
  gw.ldb = in;
  gw.ldc = in;
  gw.ab_type = ab;
  gw.c_type = CUDA_R_32F;
  for (size_t e = 0; e < w.size(); ++e) {
    const int64_t b = offsets[e], r = offsets[e + 1] - b;
    if (r == 0) {
      if (!accumulate_d_w) d_w[e]->zero_();
      continue;
    }
    gw.m.push_back(out);
    gw.n.push_back(in);
    gw.k.push_back(r);
    gw.a.push_back(row_ptr(d_y, b, out, e_size));
    gw.b.push_back(row_ptr(x, b, in, e_size));
    gw.c.push_back(d_w[e]->data());
  }
  // The two gradients read the same operands and write apart: one batch of products.
  cuda::blas_grouped_gemms({&gx, &gw}, "grouped_linear_backward");
}

// ---- RMSNorm ----

namespace {
// The BF16 copy a norm writes beside its float32 output `out` ([rows, dim]).
uint16_t* bf16_copy_beside(Tensor& copy, const F32OrBf16& out, int64_t rows, int64_t dim,
                           const char* op, const char* what) {
  need_device(copy, op, "its BF16 copy");
  DSV3_CHECK(out.f32 && copy.dtype() == DType::BF16 && copy.numel() == rows * dim,
             "{}: the copy {} {} is not a BF16 [{}, {}] beside a float32 {}", op,
             copy.shape().str(), dtype_name(copy.dtype()), rows, dim, what);
  return copy.bf16();
}
}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd,
                     Tensor* y_bf16) {
  need_devices("rmsnorm_forward", {&x, &w, &y, &rstd});
  const int64_t dim = w.numel(), rows = dim ? x.numel() / dim : 0;
  DSV3_CHECK(dim > 0 && x.numel() == rows * dim && y.numel() == x.numel() && rstd.numel() == rows,
             "rmsnorm_forward: x {}, w {}, y {}, rstd {} do not match", x.shape().str(),
             w.shape().str(), y.shape().str(), rstd.shape().str());
  const F32OrBf16 out = f32_or_bf16(y, "rmsnorm_forward", "y");
  cuda::RmsNormForward p{x.f32(), w.f32(), out.f32, rstd.f32(), rows, dim, eps};
  p.y_bf16 = out.bf16;
  if (y_bf16) p.y_bf16 = bf16_copy_beside(*y_bf16, out, rows, dim, "rmsnorm_forward", "y");
  check(cuda::rmsnorm_forward(p, stream()), "rmsnorm_forward");
}

void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& d_y,
                      Tensor& d_x, Tensor& d_w, bool accumulate_d_x, bool accumulate_d_w,
                      Tensor* d_x_bf16) {
  need_devices("rmsnorm_backward", {&x, &w, &rstd, &d_y, &d_x, &d_w});
  const int64_t dim = w.numel(), rows = dim ? x.numel() / dim : 0;
  DSV3_CHECK(dim > 0 && x.numel() == rows * dim && d_y.numel() == x.numel() &&
                 d_x.numel() == x.numel() && d_w.numel() == dim && rstd.numel() == rows,
             "rmsnorm_backward: shapes do not match (x {}, w {})", x.shape().str(),
             w.shape().str());
  const F32OrBf16 dx = f32_or_bf16(d_x, "rmsnorm_backward", "d_x");
  DSV3_CHECK(!(dx.bf16 && accumulate_d_x),
             "rmsnorm_backward: d_x is bfloat16, which cannot be accumulated into");
  cuda::RmsNormBackward p{x.f32(),   w.f32(), rstd.f32(), d_y.f32(),      dx.f32,
                          d_w.f32(), rows,    dim,        accumulate_d_x, accumulate_d_w};
  p.d_x_bf16 = dx.bf16;
  if (d_x_bf16)
    p.d_x_bf16 = bf16_copy_beside(*d_x_bf16, dx, rows, dim, "rmsnorm_backward", "d_x");
  Scratch partial(size_t(cuda::rmsnorm_dw_chunks(rows, dim) * dim) * sizeof(float),
                  "rmsnorm_backward");
  p.d_w_partial = partial.as<float>();
  check(cuda::rmsnorm_backward(p, stream()), "rmsnorm_backward");
}

// ---- RoPE ----

namespace {
cuda::Rope rope_params(float* x, const ops::RopeSlice& s, const int32_t* positions,
                       const Tensor& cos, const Tensor& sin, bool inverse) {
  need_device(cos, "rope", "cos");
  need_device(sin, "rope", "sin");
  const int64_t half = s.rope_dim / 2, max_pos = cos.dim(0);
  DSV3_CHECK(s.rope_dim % 2 == 0 && cos.ndim() == 2 && cos.dim(1) == half &&
                 sin.shape() == cos.shape() && s.offset + s.rope_dim <= s.head_stride,
             "rope: slice (offset {}, rope_dim {}, head_stride {}) and table {} do not match",
             s.offset, s.rope_dim, s.head_stride, cos.shape().str());
  // Positions are range-checked on the device (index_errors.h): no copy back, no wait.
  return cuda::Rope{x,          positions, cos.f32(),     sin.f32(),
                    s.rows,     s.heads,   s.head_stride, s.offset,
                    s.rope_dim, inverse,   max_pos,       cuda::index_error_record()};
}
}  // namespace

void rope(float* x, const ops::RopeSlice& s, const int32_t* positions, const Tensor& cos,
          const Tensor& sin, bool inverse, uint16_t* out_bf16) {
  cuda::Rope p = rope_params(x, s, positions, cos, sin, inverse);
  p.out_bf16 = out_bf16;
  check(cuda::rope(p, stream()), "rope");
}

void rope_bf16(uint16_t* x, const ops::RopeSlice& s, const int32_t* positions, const Tensor& cos,
               const Tensor& sin, bool inverse) {
  cuda::Rope p = rope_params(nullptr, s, positions, cos, sin, inverse);
  p.x_bf16 = x;
  check(cuda::rope(p, stream()), "rope");
}

// ---- SwiGLU ----

void swiglu_forward(const Tensor& gate_up, Tensor& h) {
  need_device(gate_up, "swiglu_forward", "gate_up");
  need_device(h, "swiglu_forward", "h");
  const int64_t width = h.dim(-1), rows = width ? h.numel() / width : 0;
  DSV3_CHECK(gate_up.numel() == 2 * h.numel(), "swiglu_forward: gate_up {} is not twice h {}",
             gate_up.shape().str(), h.shape().str());
  const F32OrBf16 out = f32_or_bf16(h, "swiglu_forward", "h");
  const F32OrBf16 in = f32_or_bf16(gate_up, "swiglu_forward", "gate_up");
  cuda::SwiGlu p{in.f32, nullptr, out.f32, nullptr, rows, width};
  p.h_bf16 = out.bf16;
  p.gate_up_bf16 = in.bf16;
  check(cuda::swiglu_forward(p, stream()), "swiglu_forward");
}

void swiglu_backward(const Tensor& gate_up, const Tensor& d_h, Tensor& d_gate_up) {
  need_devices("swiglu_backward", {&gate_up, &d_h, &d_gate_up});
  const int64_t width = d_h.dim(-1), rows = width ? d_h.numel() / width : 0;
  DSV3_CHECK(gate_up.numel() == 2 * d_h.numel() && d_gate_up.numel() == gate_up.numel(),
             "swiglu_backward: gate_up {}, d_h {}, d_gate_up {} do not match",
             gate_up.shape().str(), d_h.shape().str(), d_gate_up.shape().str());
  const F32OrBf16 out = f32_or_bf16(d_gate_up, "swiglu_backward", "d_gate_up");
  const F32OrBf16 in = f32_or_bf16(gate_up, "swiglu_backward", "gate_up");
  const F32OrBf16 dh = f32_or_bf16(d_h, "swiglu_backward", "d_h");
  cuda::SwiGlu p{in.f32, dh.f32, nullptr, out.f32, rows, width};
  p.d_gate_up_bf16 = out.bf16;
  p.gate_up_bf16 = in.bf16;
  p.d_h_bf16 = dh.bf16;
  check(cuda::swiglu_backward(p, stream()), "swiglu_backward");
}

// ---- Attention ----

namespace {
struct AttnDims {
  int64_t bh, seq, dq, dv;
};
AttnDims check_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                         const char* op) {
  for (const Tensor* t : {&q, &k, &v, &o}) need_device(*t, op, "a tensor");
  DSV3_CHECK(q.ndim() == 4 && k.shape() == q.shape() && v.ndim() == 4 && v.dim(0) == q.dim(0) &&
                 v.dim(1) == q.dim(1) && v.dim(2) == q.dim(2) && o.shape() == v.shape(),
             "{}: q {}, k {}, v {}, o {} do not match", op, q.shape().str(), k.shape().str(),
             v.shape().str(), o.shape().str());
  const AttnDims d{q.dim(0) * q.dim(1), q.dim(2), q.dim(3), v.dim(3)};
  DSV3_CHECK(d.dq <= cuda::kAttentionMaxHeadDim && d.dv <= cuda::kAttentionMaxHeadDim,
             "{}: head dims {} / {} exceed the cuda kernel's {}", op, d.dq, d.dv,
             cuda::kAttentionMaxHeadDim);
  // The kernels take one (batch, head) pair per grid row.
  DSV3_CHECK(d.bh <= 65535, "{}: batch x heads = {} exceeds the grid's 65535", op, d.bh);
  return d;
}
}  // namespace

// ---- BF16 attention (attention_bf16*.cu) ----
// q, k, v (and d_o) BF16; o BF16 or float32; lse and the gradients float32. Head dims that are
// multiples of 8 up to the kernels' capacities (forward 256/256, backward 192/128) run the
// tensor-core kernels; any other dims are widened to float32 scratch copies and run the float32
// kernels (slower, same results up to the float32 rounding).
namespace {
void check_bf16_attention(const char* op, std::initializer_list<const Tensor*> bf16s,
                          const Tensor& o) {
  for (const Tensor* t : bf16s)
    DSV3_CHECK(t->dtype() == DType::BF16, "{}: q is bfloat16 but another input is {}", op,
               dtype_name(t->dtype()));
  DSV3_CHECK(o.dtype() == DType::BF16 || o.dtype() == DType::F32,
             "{}: o is {}; bfloat16 or float32 with bfloat16 inputs", op, dtype_name(o.dtype()));
}

bool aligned16(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (reinterpret_cast<uintptr_t>(t->data()) % 16) return false;
  return true;
}

using cuda::smem_fits;

// The rows of a head-major [bh, seq, dim] buffer (heads = 1: bh is the b of HeadRows).
cuda::HeadRows head_major_rows(int64_t seq, int64_t dim) { return {dim, 0, seq * dim}; }

// The operands the forward and the backward share, all head-major; the key wholly from k.
template <typename Params>
void set_head_major(Params& p, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                    const Tensor& lse, float scale, const AttnDims& d) {
  p.q = q.bf16();
  p.k = p.k2 = k.bf16();
  p.v = v.bf16();
  p.o = o.data();
  p.lse = lse.f32();
  p.q_rows = p.k_rows = p.k2_rows = head_major_rows(d.seq, d.dq);
  p.v_rows = p.o_rows = head_major_rows(d.seq, d.dv);
  p.bh = d.bh;
  p.seq = d.seq;
  p.qk_dim = p.k_split = d.dq;
  p.v_dim = d.dv;
  p.scale = scale;
  p.o_f32 = o.dtype() == DType::F32;
}

// A float32 device copy of a BF16 (or float32) tensor, for the fallback.
Tensor widened(const Tensor& t, const char* op) {
  if (t.dtype() == DType::F32) return t;
  Tensor w = Tensor::zeros(t.shape(), DType::F32, Device::CUDA);
  check(cuda::bf16_to_f32(t.bf16(), w.f32(), t.numel(), stream()), op);
  return w;
}

void attention_forward_bf16(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                            Tensor& lse, Tensor& o, const AttnDims& d) {
  const char* op = "attention_forward_lse";
  check_bf16_attention(op, {&k, &v}, o);
  if (cuda::attention_bf16_forward_supported(d.dq, d.dv) && aligned16({&q, &k, &v}) &&
      smem_fits(cuda::attention_bf16_forward_smem_bytes(d.dq, d.dv), op)) {
    cuda::AttentionForwardBf16 p;
    set_head_major(p, q, k, v, o, lse, scale, d);
    check(cuda::attention_forward_bf16(p, stream()), op);
    return;
  }
  Tensor qf = widened(q, op), kf = widened(k, op), vf = widened(v, op);
  Tensor of = o.dtype() == DType::F32 ? o : Tensor::zeros(o.shape(), DType::F32, Device::CUDA);
  attention_forward_lse(qf, kf, vf, scale, lse, of);
  if (o.dtype() == DType::BF16)
    check(cuda::f32_to_bf16(of.f32(), o.bf16(), o.numel(), stream()), op);
}

void attention_backward_bf16(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                             const Tensor& lse, const Tensor& d_o, float scale, Tensor& d_q,
                             Tensor& d_k, Tensor& d_v, const AttnDims& d) {
  const char* op = "attention_backward_lse";
  check_bf16_attention(op, {&k, &v, &d_o}, o);
  for (const Tensor* t : {&d_q, &d_k, &d_v})
    DSV3_CHECK(t->dtype() == DType::F32, "{}: gradients are float32 (got {})", op,
               dtype_name(t->dtype()));
  if (cuda::attention_bf16_backward_supported(d.dq, d.dv) && aligned16({&q, &k, &v, &d_o}) &&
      smem_fits(cuda::attention_bf16_backward_smem_bytes(d.dq, d.dv), op)) {
    Scratch rows(size_t(d.bh * d.seq) * sizeof(float), op);
    cuda::AttentionBackwardBf16 p;
    set_head_major(p, q, k, v, o, lse, scale, d);
    p.d_o = d_o.bf16();
    p.d_rows = rows.as<float>();
    p.d_q = d_q.f32();
    p.d_k = p.d_k2 = d_k.f32();
    p.d_v = d_v.f32();
    p.d_q_rows = p.d_k_rows = p.d_k2_rows = p.q_rows;
    p.d_o_rows = p.d_v_rows = p.v_rows;
    check(cuda::attention_backward_bf16(p, stream()), op);
    return;
  }
  attention_backward_lse(widened(q, op), widened(k, op), widened(v, op), widened(o, op), lse,
                         widened(d_o, op), scale, d_q, d_k, d_v);
}
}  // namespace

void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                           Tensor& lse, Tensor& o) {
  const AttnDims d = check_attention(q, k, v, o, "attention_forward_lse");
  need_device(lse, "attention_forward_lse", "lse");
  DSV3_CHECK(lse.numel() == d.bh * d.seq, "attention_forward_lse: lse {} is not [{}]",
             lse.shape().str(), d.bh * d.seq);
  if (q.dtype() == DType::BF16) return attention_forward_bf16(q, k, v, scale, lse, o, d);
  check(cuda::attention_forward({q.f32(), k.f32(), v.f32(), o.f32(), lse.f32(), d.bh, d.seq, d.dq,
                                 d.dv, scale},
                                stream()),
        "attention_forward_lse");
}

void attention_backward_lse(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                            const Tensor& lse, const Tensor& d_o, float scale, Tensor& d_q,
                            Tensor& d_k, Tensor& d_v) {
  const AttnDims d = check_attention(q, k, v, o, "attention_backward_lse");
  need_devices("attention_backward_lse", {&lse, &d_o, &d_q, &d_k, &d_v});
  DSV3_CHECK(lse.numel() == d.bh * d.seq && d_o.shape() == o.shape() && d_q.shape() == q.shape() &&
                 d_k.shape() == k.shape() && d_v.shape() == v.shape(),
             "attention_backward_lse: lse {}, d_o {} or a gradient does not match q {} / v {}",
             lse.shape().str(), d_o.shape().str(), q.shape().str(), v.shape().str());
  if (q.dtype() == DType::BF16)
    return attention_backward_bf16(q, k, v, o, lse, d_o, scale, d_q, d_k, d_v, d);
  // The tile kernels keep a 32-key and a 32-query tile of q, k, v, dO in shared memory.
  const size_t smem = cuda::attention_backward_smem_bytes(d.dq, d.dv);
  int device = 0, optin = 0;
  check(cudaGetDevice(&device), "attention_backward_lse");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "attention_backward_lse");
  DSV3_CHECK(smem <= size_t(optin),
             "attention_backward_lse: head dims {} / {} need {} bytes of shared memory per block; "
             "this GPU grants {}",
             d.dq, d.dv, smem, optin);
  Scratch rows(size_t(d.bh * d.seq) * sizeof(float), "attention_backward_lse");
  check(cuda::attention_backward({q.f32(), k.f32(), v.f32(), o.f32(), lse.f32(), d_o.f32(),
                                  rows.as<float>(), d_q.f32(), d_k.f32(), d_v.f32(), d.bh, d.seq,
                                  d.dq, d.dv, scale},
                                 stream()),
        "attention_backward_lse");
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       Tensor& probs, Tensor& o) {
  const AttnDims d = check_attention(q, k, v, o, "attention_forward");
  need_device(probs, "attention_forward", "probs");
  DSV3_CHECK(probs.numel() == d.bh * d.seq * d.seq,
             "attention_forward: probs {} is not [.., {}, {}]", probs.shape().str(), d.seq, d.seq);
  Scratch lse(size_t(d.bh * d.seq) * sizeof(float), "attention_forward");
  check(cuda::attention_forward({q.f32(), k.f32(), v.f32(), o.f32(), lse.as<float>(), d.bh, d.seq,
                                 d.dq, d.dv, scale},
                                stream()),
        "attention_forward");
  // The op interface also returns P (the CPU backward consumes it): S = scale Q K^T per head by
  // a batched GEMM into probs, then P = exp(S - lse) below the diagonal, 0 above.
  cuda::BlasGemm g;
  g.trans_b = true;
  g.m = d.seq;
  g.n = d.seq;
  g.k = d.dq;
  g.alpha = scale;
  g.a = q.data();
  g.lda = d.dq;
  g.stride_a = d.seq * d.dq;
  g.b = k.data();
  g.ldb = d.dq;
  g.stride_b = d.seq * d.dq;
  g.c = probs.data();
  g.ldc = d.seq;
  g.stride_c = d.seq * d.seq;
  g.batch = d.bh;
  cuda::blas_gemm(g, "attention_forward scores");
  check(cuda::causal_softmax_from_lse({probs.f32(), lse.as<float>(), d.bh, d.seq}, stream()),
        "attention_forward probs");
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
                        const Tensor& d_o, float scale, Tensor& scratch, Tensor& d_q, Tensor& d_k,
                        Tensor& d_v) {
  const AttnDims d = check_attention(q, k, v, d_o, "attention_backward");
  need_devices("attention_backward", {&probs, &scratch, &d_q, &d_k, &d_v});
  DSV3_CHECK(probs.numel() == d.bh * d.seq * d.seq && scratch.numel() == probs.numel() &&
                 d_q.shape() == q.shape() && d_k.shape() == k.shape() && d_v.shape() == v.shape(),
             "attention_backward: probs {}, scratch {} or a gradient do not match",
             probs.shape().str(), scratch.shape().str());
  const int64_t ss = d.seq * d.seq, sq = d.seq * d.dq, sv = d.seq * d.dv;
  // Per head, row-major, batched over bh:
  auto batched = [&](bool ta, bool tb, int64_t m, int64_t n, int64_t kk, float alpha,
                     const void* a, int64_t lda, int64_t stride_a, const void* b, int64_t ldb,
                     int64_t stride_b, void* c, int64_t ldc, int64_t stride_c, const char* what) {
    cuda::BlasGemm g;
    g.trans_a = ta;
    g.trans_b = tb;
    g.m = m;
    g.n = n;
    g.k = kk;
    g.alpha = alpha;
    g.a = a;
    g.lda = lda;
    g.stride_a = stride_a;
    g.b = b;
    g.ldb = ldb;
    g.stride_b = stride_b;
    g.c = c;
    g.ldc = ldc;
    g.stride_c = stride_c;
    g.batch = d.bh;
    cuda::blas_gemm(g, what);
  };
  // dV [seq, dv] = P^T dO ; dP [seq, seq] = dO V^T (into scratch)
  batched(true, false, d.seq, d.dv, d.seq, 1.0f, probs.data(), d.seq, ss, d_o.data(), d.dv, sv,
          d_v.data(), d.dv, sv, "attention_backward dV");
  batched(false, true, d.seq, d.seq, d.dv, 1.0f, d_o.data(), d.dv, sv, v.data(), d.dv, sv,
          scratch.data(), d.seq, ss, "attention_backward dP");
  // dS = scale P (dP - rowsum(P dP)), causal, in place
  check(cuda::softmax_backward({probs.f32(), scratch.f32(), d.bh, d.seq, scale}, stream()),
        "attention_backward softmax");
  // dQ = dS K ; dK = dS^T Q
  batched(false, false, d.seq, d.dq, d.seq, 1.0f, scratch.data(), d.seq, ss, k.data(), d.dq, sq,
          d_q.data(), d.dq, sq, "attention_backward dQ");
  batched(true, false, d.seq, d.dq, d.seq, 1.0f, scratch.data(), d.seq, ss, q.data(), d.dq, sq,
          d_k.data(), d.dq, sq, "attention_backward dK");
}

// ---- Cross-entropy ----

namespace {
// Launches the loss (and gradient) kernel, each row's loss into row_loss [rows] on the device.
void launch_cross_entropy(const Tensor& logits, const int32_t* targets, float scale,
                          Tensor* d_logits, double* row_loss, const char* op) {
  need_device(logits, op, "logits");
  if (d_logits) {
    need_device(*d_logits, op, "d_logits");
    DSV3_CHECK(d_logits->numel() == logits.numel(), "{}: d_logits {} is not logits {}", op,
               d_logits->shape().str(), logits.shape().str());
  }
  const int64_t vocab = logits.dim(-1), rows = vocab ? logits.numel() / vocab : 0;
  // The gradient in BF16 when only matrix products read it (the lm head's backward).
  const F32OrBf16 grad = d_logits ? f32_or_bf16(*d_logits, op, "d_logits") : F32OrBf16{};
  // Targets are range-checked on the device (index_errors.h) and raised at the next wait.
  cuda::CrossEntropy p{logits.f32(), targets, grad.f32, row_loss, rows, vocab, scale,
                       cuda::index_error_record()};
  p.d_logits_bf16 = grad.bf16;
  check(cuda::cross_entropy(p, stream()), op);
}
}  // namespace

double cross_entropy(const Tensor& logits, const int32_t* targets, float scale, Tensor* d_logits) {
  const int64_t vocab = logits.dim(-1), rows = vocab ? logits.numel() / vocab : 0;
  Scratch row_loss(size_t(rows) * sizeof(double), "cross_entropy");
  launch_cross_entropy(logits, targets, scale, d_logits, row_loss.as<double>(), "cross_entropy");
  // The loss comes back to the host (one wait, which also raises any recorded index error);
  // summed in row order as on the CPU.
  std::vector<double> host_loss(static_cast<size_t>(rows));
  device::copy_to_host({{host_loss.data(), row_loss.as<double>(), host_loss.size() * sizeof(double)}});
  double total = 0.0;
  for (double l : host_loss) total += l;
  return total;
}

void cross_entropy_rows(const Tensor& logits, const int32_t* targets, float scale,
                        Tensor* d_logits, Tensor& row_loss) {
  need_device(row_loss, "cross_entropy_rows", "row_loss");
  launch_cross_entropy(logits, targets, scale, d_logits, row_loss.f64(), "cross_entropy_rows");
}

// ---- Embedding ----

void embedding_forward(const Tensor& table, const int32_t* ids, int64_t rows, Tensor& out) {
  need_device(table, "embedding_forward", "table");
  need_device(out, "embedding_forward", "out");
  const int64_t vocab = table.dim(0), dim = table.dim(1);
  DSV3_CHECK(out.numel() == rows * dim, "embedding_forward: out {} is not [{}, {}]",
             out.shape().str(), rows, dim);
  // Ids are range-checked on the device (index_errors.h): no copy back, no wait.
  check(cuda::embedding_forward({table.f32(), ids, out.f32(), nullptr, nullptr, vocab, dim, rows,
                                 cuda::index_error_record()},
                                stream()),
        "embedding_forward");
}

void embedding_backward(const int32_t* ids, int64_t rows, const Tensor& d_out, Tensor& d_table) {
  need_device(d_out, "embedding_backward", "d_out");
  need_device(d_table, "embedding_backward", "d_table");
  const int64_t vocab = d_table.dim(0), dim = d_table.dim(1);
  DSV3_CHECK(d_out.numel() == rows * dim, "embedding_backward: d_out {} is not [{}, {}]",
             d_out.shape().str(), rows, dim);
  DSV3_CHECK(dim <= cuda::kEmbeddingBackwardMaxDim,
             "embedding_backward on cuda: hidden size {} exceeds the kernel's {}", dim,
             cuda::kEmbeddingBackwardMaxDim);
  check(cuda::embedding_backward({nullptr, ids, nullptr, d_out.f32(), d_table.f32(), vocab, dim,
                                  rows, cuda::index_error_record()},
                                 stream()),
        "embedding_backward");
}

// ---- Elementwise and layout moves ----

void convert(const Tensor& src, Tensor& dst) {
  need_device(src, "convert", "src");
  need_device(dst, "convert", "dst");
  DSV3_CHECK(src.numel() == dst.numel(), "convert: {} into {}", src.shape().str(),
             dst.shape().str());
  if (src.dtype() == dst.dtype()) return dst.copy_from(src);
  if (src.dtype() == DType::F32 && dst.dtype() == DType::BF16) {
    check(cuda::f32_to_bf16(src.f32(), dst.bf16(), src.numel(), stream()), "convert");
  } else if (src.dtype() == DType::BF16 && dst.dtype() == DType::F32) {
    check(cuda::bf16_to_f32(src.bf16(), dst.f32(), src.numel(), stream()), "convert");
  } else {
    fail("convert: {} to {} on the GPU (F32 <-> BF16 only)", dtype_name(src.dtype()),
         dtype_name(dst.dtype()));
  }
}

void f32_to_bf16_all(const std::vector<std::pair<const Tensor*, Tensor*>>& pairs) {
  const char* op = "convert_all";
  std::vector<cuda::ConvertChunk> chunks;
  for (const auto& [src, dst] : pairs) {
    need_device(*src, op, "src");
    need_device(*dst, op, "dst");
    DSV3_CHECK(src->numel() == dst->numel(), "{}: {} into {}", op, src->shape().str(),
               dst->shape().str());
    const int64_t n = src->numel();
    for (int64_t b = 0; b < n; b += cuda::kConvertChunk)
      chunks.push_back({src->f32() + b, dst->bf16() + b, std::min(cuda::kConvertChunk, n - b)});
  }
  if (chunks.empty()) return;
  Scratch chunks_dev(chunks.size() * sizeof(cuda::ConvertChunk), op);
  upload_table(chunks, chunks_dev, op);
  check(cuda::f32_to_bf16_chunks(chunks_dev.as<cuda::ConvertChunk>(), int64_t(chunks.size()),
                                 stream()),
        op);
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  need_device(a, "add", "a");
  need_device(b, "add", "b");
  need_device(out, "add", "out");
  DSV3_CHECK(a.numel() == out.numel() && b.numel() == out.numel(), "add: {} + {} into {}",
             a.shape().str(), b.shape().str(), out.shape().str());
  check(cuda::add({a.f32(), b.f32(), out.f32(), out.numel()}, stream()), "add");
}

namespace {
// The kernels' form of a layout move: from src into dst (float32) or dst_bf16.
cuda::HeadMove head_move(const float* src, float* dst, uint16_t* dst_bf16, const ops::HeadCopy& c,
                         bool accumulate) {
  cuda::HeadMove p{src,           dst,          c.batch,    c.seq,         c.heads,
                   c.width,       c.tok_row_stride, c.tok_head_stride, c.tok_offset,
                   c.head_dim,    c.head_offset,    accumulate};
  p.dst_bf16 = dst_bf16;
  return p;
}
}  // namespace

void tokens_to_heads(const float* tokens, float* heads, const ops::HeadCopy& c) {
  check(cuda::tokens_to_heads(head_move(tokens, heads, nullptr, c, false), stream()),
        "tokens_to_heads");
}

void heads_to_tokens(const float* heads, float* tokens, const ops::HeadCopy& c, bool accumulate) {
  check(cuda::heads_to_tokens(head_move(heads, tokens, nullptr, c, accumulate), stream()),
        "heads_to_tokens");
}

void copy_columns(const float* src, int64_t src_cols, int64_t offset, int64_t width, float* dst,
                  int64_t rows) {
  check(cuda::copy_columns({src, dst, rows, width, src_cols, offset, width, 0}, stream()),
        "copy_columns");
}

void put_columns(const float* src, int64_t width, float* dst, int64_t dst_cols, int64_t offset,
                 int64_t rows) {
  check(cuda::copy_columns({src, dst, rows, width, width, 0, dst_cols, offset}, stream()),
        "put_columns");
}

namespace {
void need_device_bf16(const uint16_t* dst, const char* op) {
  DSV3_CHECK(device::is_cuda_pointer(dst),
             "{}: a bfloat16 destination is a mixed-precision buffer of the GPU; this one is in "
             "host memory",
             op);
}
}  // namespace

void tokens_to_heads_bf16(const float* tokens, uint16_t* heads, const ops::HeadCopy& c) {
  need_device_bf16(heads, "tokens_to_heads");
  check(cuda::tokens_to_heads(head_move(tokens, nullptr, heads, c, false), stream()),
        "tokens_to_heads");
}

void heads_to_tokens_bf16(const float* heads, uint16_t* tokens, const ops::HeadCopy& c) {
  need_device_bf16(tokens, "heads_to_tokens");
  DSV3_CHECK(c.tok_head_stride != 0,
             "heads_to_tokens: a bfloat16 destination takes a plain move, not a sum over heads");
  check(cuda::heads_to_tokens(head_move(heads, nullptr, tokens, c, false), stream()),
        "heads_to_tokens");
}

void put_columns_bf16(const float* src, int64_t width, uint16_t* dst, int64_t dst_cols,
                      int64_t offset, int64_t rows) {
  need_device_bf16(dst, "put_columns");
  cuda::ColumnCopy p{src, nullptr, rows, width, width, 0, dst_cols, offset};
  p.dst_bf16 = dst;
  check(cuda::copy_columns(p, stream()), "put_columns");
}

// ---- MoE permutation moves ----
// The index arrays must be device memory like the tensors (a host pointer would fault inside
// the kernel with no message). Their values are not range-checked here: they come from the
// engine's own counting sort, and checking them would cost a copy back and a wait per call.

namespace {
void need_device_indices(const int32_t* idx, int64_t n, const char* op) {
  DSV3_CHECK(n == 0 || device::is_cuda_pointer(idx),
             "{}: the index array is in host memory, the tensors on cuda", op);
}
int64_t rows_of(const Tensor& t, int64_t d) { return d ? t.numel() / d : 0; }
}  // namespace

void moe_gather_rows(const Tensor& x, const int32_t* src_row, Tensor& out) {
  need_devices("moe_gather_rows", {&x, &out});
  const int64_t d = out.dim(-1), m = rows_of(out, d);
  DSV3_CHECK(x.dim(-1) == d, "moe_gather_rows: x {} and out {} differ in row length",
             x.shape().str(), out.shape().str());
  need_device_indices(src_row, m, "moe_gather_rows");
  const F32OrBf16 o = f32_or_bf16(out, "moe_gather_rows", "out");
  // A BF16 x (a copy the norm wrote beside its float32 output) moves into a BF16 out as it is.
  DSV3_CHECK(x.dtype() == DType::F32 || (x.dtype() == DType::BF16 && o.bf16),
             "moe_gather_rows: x is {} and out {}: expected float32 x, or BF16 x and out",
             dtype_name(x.dtype()), dtype_name(out.dtype()));
  const F32OrBf16 in = f32_or_bf16(x, "moe_gather_rows", "x");
  cuda::MoeGather p{in.f32, src_row, o.f32, m, d};
  p.out_bf16 = o.bf16;
  p.x_bf16 = in.bf16;
  check(cuda::moe_gather_rows(p, stream()), "moe_gather_rows");
}

void moe_combine(const Tensor& y_perm, const int32_t* row_of, const Tensor& weights, Tensor& out,
                 const Tensor* residual) {
  need_devices("moe_combine", {&y_perm, &weights, &out});
  const int64_t d = out.dim(-1), n = rows_of(out, d), k = n ? weights.numel() / n : 0;
  DSV3_CHECK(y_perm.dim(-1) == d && weights.numel() == n * k && y_perm.numel() == n * k * d,
             "moe_combine: y_perm {}, weights {} and out {} do not match", y_perm.shape().str(),
             weights.shape().str(), out.shape().str());
  if (residual) {
    need_device(*residual, "moe_combine", "residual");
    DSV3_CHECK(residual->dtype() == DType::F32 && residual->numel() == out.numel() &&
                   residual->data() != out.data(),
               "moe_combine: the residual {} is not a float32 tensor of out's shape {} beside it",
               residual->shape().str(), out.shape().str());
  }
  need_device_indices(row_of, n * k, "moe_combine");
  const F32OrBf16 y = f32_or_bf16(y_perm, "moe_combine", "y_perm");
  cuda::MoeCombine p{};
  p.y_perm = y.f32;
  p.y_perm_bf16 = y.bf16;
  p.row_of = row_of;
  p.weights = weights.f32();
  p.out = out.f32();
  p.residual = residual ? residual->f32() : nullptr;
  p.n = n;
  p.k = k;
  p.dim = d;
  check(cuda::moe_combine(p, stream()), "moe_combine");
}

void moe_combine_backward(const Tensor& d_out, const Tensor& y_perm, const int32_t* row_of,
                          const Tensor& weights, Tensor& d_y_perm, Tensor& d_weights) {
  need_devices("moe_combine_backward", {&d_out, &y_perm, &weights, &d_y_perm, &d_weights});
  const int64_t d = d_out.dim(-1), n = rows_of(d_out, d), k = n ? weights.numel() / n : 0;
  DSV3_CHECK(y_perm.dim(-1) == d && y_perm.numel() == n * k * d &&
                 d_y_perm.numel() == y_perm.numel() && d_weights.numel() == weights.numel() &&
                 weights.numel() == n * k,
             "moe_combine_backward: d_out {}, y_perm {}, weights {}, d_y_perm {}, d_weights {} "
             "do not match",
             d_out.shape().str(), y_perm.shape().str(), weights.shape().str(),
             d_y_perm.shape().str(), d_weights.shape().str());
  need_device_indices(row_of, n * k, "moe_combine_backward");
  const F32OrBf16 y = f32_or_bf16(y_perm, "moe_combine_backward", "y_perm");
  cuda::MoeCombine p{};
  p.y_perm = y.f32;
  p.y_perm_bf16 = y.bf16;
  p.row_of = row_of;
  p.weights = weights.f32();
  p.d_out = d_out.f32();
  const F32OrBf16 d_y = f32_or_bf16(d_y_perm, "moe_combine_backward", "d_y_perm");
  p.d_y_perm = d_y.f32;
  p.d_y_perm_bf16 = d_y.bf16;
  p.d_weights = d_weights.f32();
  p.n = n;
  p.k = k;
  p.dim = d;
  check(cuda::moe_combine_backward(p, stream()), "moe_combine_backward");
}

void moe_scatter_add(const Tensor& d_x_perm, const int32_t* row_of, int64_t k, Tensor& d_x) {
  need_devices("moe_scatter_add", {&d_x_perm, &d_x});
  const int64_t d = d_x.dim(-1), n = rows_of(d_x, d);
  DSV3_CHECK(k >= 1 && d_x_perm.dim(-1) == d && rows_of(d_x_perm, d) == n * k,
             "moe_scatter_add: d_x_perm {} is not [{} * {}, {}]", d_x_perm.shape().str(), n, k, d);
  need_device_indices(row_of, n * k, "moe_scatter_add");
  const F32OrBf16 src = f32_or_bf16(d_x_perm, "moe_scatter_add", "d_x_perm");
  cuda::MoeScatterAdd p{src.f32, row_of, d_x.f32(), n, k, d};
  p.d_x_perm_bf16 = src.bf16;
  check(cuda::moe_scatter_add(p, stream()), "moe_scatter_add");
}

// ---- Optimizer ----

namespace {
// acc + every tensor's block partials (one launch for all tensors), copied back once and added
// on the host in order (tensor by tensor, block by block): deterministic, and the same sums
// whichever entry point is used.
double add_sum_squares(const std::vector<const Tensor*>& gs, double acc, const char* op) {
  const size_t blocks = cuda::kSumSquaresBlocks;
  Scratch partial(std::max<size_t>(gs.size(), 1) * blocks * sizeof(double), op);
  std::vector<cuda::SumSquaresTensor> table;
  for (const Tensor* g : gs) {
    need_device(*g, op, "g");
    table.push_back({g->f32(), g->numel()});
  }
  Scratch table_dev(std::max<size_t>(table.size(), 1) * sizeof(cuda::SumSquaresTensor), op);
  upload_table(table, table_dev, op);
  check(cuda::sum_squares_all({table_dev.as<cuda::SumSquaresTensor>(), partial.as<double>(),
                               int64_t(table.size())},
                              stream()),
        op);
  // One wait, which also raises what a kernel recorded (index_errors.h).
  std::vector<double> host(gs.size() * blocks);
  device::copy_to_host({{host.data(), partial.as<double>(), host.size() * sizeof(double)}});
  for (double v : host) acc += v;
  return acc;
}
}  // namespace

double sum_squares(const Tensor& g, double acc) {
  return add_sum_squares({&g}, acc, "sum_squares");
}

double sum_squares_all(const std::vector<const Tensor*>& gs) {
  return add_sum_squares(gs, 0.0, "sum_squares_all");
}

void scale_inplace(Tensor& x, float factor) {
  need_device(x, "scale_inplace", "x");
  check(cuda::scale_inplace({x.f32(), x.numel(), factor}, stream()), "scale_inplace");
}

void adamw_update_all(const std::vector<ops::AdamWTensors>& ts, const ops::AdamWScalars& s) {
  const char* op = "adamw_update_all";
  std::vector<cuda::AdamWTensor> tensors;
  std::vector<cuda::AdamWChunk> chunks;
  for (const ops::AdamWTensors& t : ts) {
    need_devices(op, {t.p, t.g, t.m, t.v});
    const int64_t n = t.p->numel();
    DSV3_CHECK(t.g->numel() == n && t.m->numel() == n && t.v->numel() == n,
               "{}: p {}, g {}, m {}, v {} differ in size", op, t.p->shape().str(),
               t.g->shape().str(), t.m->shape().str(), t.v->shape().str());
    DSV3_CHECK(tensors.size() < size_t(INT32_MAX), "{}: too many tensors", op);
    const int32_t index = int32_t(tensors.size());
    tensors.push_back({t.p->f32(), t.g->f32(), t.m->f32(), t.v->f32(), t.decay});
    for (int64_t b = 0; b < n; b += cuda::kAdamWChunk)
      chunks.push_back({index, b, std::min(n, b + cuda::kAdamWChunk)});
  }
  if (chunks.empty()) return;
  Scratch tensors_dev(tensors.size() * sizeof(cuda::AdamWTensor), op);
  Scratch chunks_dev(chunks.size() * sizeof(cuda::AdamWChunk), op);
  upload_table(tensors, tensors_dev, op);
  upload_table(chunks, chunks_dev, op);
  check(cuda::adamw_update_all({tensors_dev.as<cuda::AdamWTensor>(), chunks_dev.as<cuda::AdamWChunk>(),
                                int64_t(chunks.size()), s.b1, s.b2, s.clip_scale, s.step_size,
                                s.inv_sqrt_bc2, s.eps},
                               stream()),
        op);
}

// One tensor through the same kernel as many (optimizer.cu: the update must not depend on the
// call that made it).
void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamWScalars& s) {
  cuda_ops::adamw_update_all({{&p, &g, &m, &v, s.decay}}, s);
}

}  // namespace dsv3::cuda_ops
