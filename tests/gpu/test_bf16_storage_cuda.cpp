// BF16 storage of the activations that only BF16 GEMMs read (docs/cuda.md, "Mixed precision"):
// an op that writes its output in BF16 must give exactly what its float32 output rounded by
// ops::convert gives, and a GEMM fed that BF16 buffer exactly what it gives when it rounds the
// float32 buffer itself. Together these make the mixed-precision step's results independent of
// where the rounding happens, bit for bit; this file checks both halves on the device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/device.h"
#include "kernels/ops.h"
#include "device_tensors.h"

namespace dsv3 {
namespace {

#define REQUIRE_GPU() \
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device"

Tensor random_cuda(const Shape& shape, std::mt19937_64& rng) {
  return test::random_host(shape, rng).to(Device::CUDA);
}

using test::cuda_zeros;
using test::differing;
using test::rounded;
using test::widened;

TEST(CudaBf16Storage, SwigluWritesTheRoundedFloat32Result) {
  REQUIRE_GPU();
  std::mt19937_64 rng(1);
  for (int64_t width : {8, 13, 64}) {
    const int64_t rows = 37;
    const Tensor gate_up = random_cuda({rows, 2 * width}, rng), d_h = random_cuda({rows, width}, rng);
    Tensor h = cuda_zeros({rows, width}), h_bf16 = cuda_zeros({rows, width}, DType::BF16);
    ops::swiglu_forward(gate_up, h);
    ops::swiglu_forward(gate_up, h_bf16);
    EXPECT_EQ(differing(h_bf16, rounded(h)), 0) << "forward, width " << width;
    Tensor d = cuda_zeros({rows, 2 * width}), d_bf16 = cuda_zeros({rows, 2 * width}, DType::BF16);
    ops::swiglu_backward(gate_up, d_h, d);
    ops::swiglu_backward(gate_up, d_h, d_bf16);
    EXPECT_EQ(differing(d_bf16, rounded(d)), 0) << "backward, width " << width;
  }
}

// The FFNs' intermediates are stored in BF16 too (Arena::alloc_ffn_intermediate): the ops that
// read them must compute from a BF16 buffer exactly what they compute from its values widened
// to float32, whatever the output dtype.
TEST(CudaBf16Storage, SwigluReadsBf16InputsAsTheirFloat32Values) {
  REQUIRE_GPU();
  std::mt19937_64 rng(5);
  for (int64_t width : {8, 13, 64}) {  // four values a load, and one
    const int64_t rows = 37;
    const Tensor gate_up = rounded(random_cuda({rows, 2 * width}, rng));
    const Tensor d_h = rounded(random_cuda({rows, width}, rng));
    for (DType out : {DType::F32, DType::BF16}) {
      Tensor h = cuda_zeros({rows, width}, out), h_ref = cuda_zeros({rows, width}, out);
      ops::swiglu_forward(gate_up, h);
      ops::swiglu_forward(widened(gate_up), h_ref);
      EXPECT_EQ(differing(h, h_ref), 0) << "forward, width " << width << ", " << dtype_name(out);
      Tensor d = cuda_zeros({rows, 2 * width}, out), d_ref = cuda_zeros({rows, 2 * width}, out);
      ops::swiglu_backward(gate_up, d_h, d);
      ops::swiglu_backward(widened(gate_up), widened(d_h), d_ref);
      EXPECT_EQ(differing(d, d_ref), 0) << "backward, width " << width << ", " << dtype_name(out);
      // One input BF16, the other float32.
      Tensor d_mixed = cuda_zeros({rows, 2 * width}, out);
      ops::swiglu_backward(widened(gate_up), d_h, d_mixed);
      EXPECT_EQ(differing(d_mixed, d_ref), 0) << "backward, d_h alone BF16, width " << width;
    }
  }
}

// The combine (forward and backward) and the scatter-add read the routed experts' BF16 outputs
// and input gradients as their float32 values: with up to 16 picks (the picks in registers)
// and more (the plain loops), rows of 8, 4 and 1 values a load.
TEST(CudaBf16Storage, CombineAndScatterReadBf16RowsAsTheirFloat32Values) {
  REQUIRE_GPU();
  std::mt19937_64 rng(6);
  const int64_t n = 29;
  for (int64_t k : {3, 17}) {
    std::vector<int32_t> perm(size_t(n * k));
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = int32_t(i);
    std::shuffle(perm.begin(), perm.end(), rng);
    const Tensor row_of = test::device_ints(perm);
    for (int64_t dim : {16, 12, 7}) {
      const std::string what = "k " + std::to_string(k) + ", dim " + std::to_string(dim);
      const Tensor rows_bf16 = rounded(random_cuda({n * k, dim}, rng)), rows_f32 = widened(rows_bf16);
      const Tensor weights = random_cuda({n, k}, rng), base = random_cuda({n, dim}, rng);
      Tensor out = base.clone(), out_ref = base.clone();  // accumulated into
      ops::moe_combine(rows_bf16, row_of.i32(), weights, out);
      ops::moe_combine(rows_f32, row_of.i32(), weights, out_ref);
      EXPECT_EQ(differing(out, out_ref), 0) << "combine, " << what;

      const Tensor d_out = random_cuda({n, dim}, rng);
      Tensor d_y = cuda_zeros({n * k, dim}, DType::BF16), d_y_ref = cuda_zeros({n * k, dim}, DType::BF16);
      Tensor d_w = cuda_zeros({n, k}), d_w_ref = cuda_zeros({n, k});
      ops::moe_combine_backward(d_out, rows_bf16, row_of.i32(), weights, d_y, d_w);
      ops::moe_combine_backward(d_out, rows_f32, row_of.i32(), weights, d_y_ref, d_w_ref);
      EXPECT_EQ(differing(d_w, d_w_ref), 0) << "combine backward, gating gradients, " << what;
      EXPECT_EQ(differing(d_y, d_y_ref), 0) << "combine backward, d_y, " << what;

      Tensor d_x = base.clone(), d_x_ref = base.clone();  // accumulated into
      ops::moe_scatter_add(rows_bf16, row_of.i32(), k, d_x);
      ops::moe_scatter_add(rows_f32, row_of.i32(), k, d_x_ref);
      EXPECT_EQ(differing(d_x, d_x_ref), 0) << "scatter-add, " << what;
    }
  }
}

TEST(CudaBf16Storage, GatherAndCombineBackwardWriteTheRoundedFloat32Result) {
  REQUIRE_GPU();
  std::mt19937_64 rng(2);
  const int64_t n = 29, k = 3;
  std::vector<int32_t> perm(size_t(n * k));
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = int32_t(i);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> src_row(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) src_row[size_t(perm[i])] = int32_t(i / size_t(k));
  const Tensor row_of = test::device_ints(perm), src = test::device_ints(src_row);
  for (int64_t dim : {16, 12, 7}) {  // the eight-wide (BF16 rows), four-wide and one-value paths
    const Tensor x = random_cuda({n, dim}, rng);
    Tensor out = cuda_zeros({n * k, dim}), out_bf16 = cuda_zeros({n * k, dim}, DType::BF16);
    ops::moe_gather_rows(x, src.i32(), out);
    ops::moe_gather_rows(x, src.i32(), out_bf16);
    EXPECT_EQ(differing(out_bf16, rounded(out)), 0) << "gather, dim " << dim;
    // From a BF16 copy of x (the norm's, in MoE layers) the rows move as they are.
    Tensor from_copy = cuda_zeros({n * k, dim}, DType::BF16);
    ops::moe_gather_rows(rounded(x), src.i32(), from_copy);
    EXPECT_EQ(differing(from_copy, rounded(out)), 0) << "gather from BF16, dim " << dim;

    const Tensor d_out = random_cuda({n, dim}, rng), y_perm = random_cuda({n * k, dim}, rng);
    const Tensor weights = random_cuda({n, k}, rng);
    Tensor d_y = cuda_zeros({n * k, dim}), d_y_bf16 = cuda_zeros({n * k, dim}, DType::BF16);
    Tensor d_w = cuda_zeros({n, k}), d_w2 = cuda_zeros({n, k});
    ops::moe_combine_backward(d_out, y_perm, row_of.i32(), weights, d_y, d_w);
    ops::moe_combine_backward(d_out, y_perm, row_of.i32(), weights, d_y_bf16, d_w2);
    EXPECT_EQ(differing(d_y_bf16, rounded(d_y)), 0) << "combine backward, dim " << dim;
    EXPECT_EQ(differing(d_w2, d_w), 0) << "the gating gradients do not depend on d_y's dtype";
  }
}

TEST(CudaBf16Storage, RmsNormWritesTheRoundedFloat32Result) {
  REQUIRE_GPU();
  std::mt19937_64 rng(5);
  for (int64_t dim : {24, 300}) {
    const int64_t rows = 9;
    const Tensor x = random_cuda({rows, dim}, rng), w = random_cuda({dim}, rng);
    const Tensor d_y = random_cuda({rows, dim}, rng);
    Tensor y = cuda_zeros({rows, dim}), y_bf16 = cuda_zeros({rows, dim}, DType::BF16);
    Tensor rstd = cuda_zeros({rows}), rstd2 = cuda_zeros({rows});
    ops::rmsnorm_forward(x, w, 1e-6f, y, rstd);
    ops::rmsnorm_forward(x, w, 1e-6f, y_bf16, rstd2);
    EXPECT_EQ(differing(y_bf16, rounded(y)), 0) << "forward, dim " << dim;
    EXPECT_EQ(differing(rstd2, rstd), 0);
    // Both at once: the float32 y and its BF16 copy.
    Tensor y_both = cuda_zeros({rows, dim}), copy = cuda_zeros({rows, dim}, DType::BF16);
    Tensor rstd3 = cuda_zeros({rows});
    ops::rmsnorm_forward_with_bf16_copy(x, w, 1e-6f, y_both, rstd3, copy);
    EXPECT_EQ(differing(y_both, y), 0) << "forward with a copy, dim " << dim;
    EXPECT_EQ(differing(copy, rounded(y)), 0) << "the copy, dim " << dim;
    EXPECT_EQ(differing(rstd3, rstd), 0);
    EXPECT_THROW(ops::rmsnorm_forward_with_bf16_copy(x, w, 1e-6f, y_bf16, rstd3, copy), Error)
        << "the copy goes beside a float32 y";
    Tensor d_x = cuda_zeros({rows, dim}), d_x_bf16 = cuda_zeros({rows, dim}, DType::BF16);
    Tensor d_w = cuda_zeros({dim}), d_w2 = cuda_zeros({dim});
    ops::rmsnorm_backward(x, w, rstd, d_y, d_x, d_w);
    ops::rmsnorm_backward(x, w, rstd, d_y, d_x_bf16, d_w2);
    EXPECT_EQ(differing(d_x_bf16, rounded(d_x)), 0) << "backward, dim " << dim;
    EXPECT_EQ(differing(d_w2, d_w), 0) << "d_w does not depend on d_x's dtype";
    EXPECT_THROW(ops::rmsnorm_backward(x, w, rstd, d_y, d_x_bf16, d_w2, true), Error)
        << "a BF16 d_x cannot be accumulated into";
    // Both at once, written and accumulated into: the float32 d_x and its BF16 copy.
    for (const bool accumulate : {false, true}) {
      const Tensor start = random_cuda({rows, dim}, rng);
      Tensor want = start.to(Device::CUDA), got = start.to(Device::CUDA);
      Tensor copy = cuda_zeros({rows, dim}, DType::BF16);
      Tensor d_w3 = cuda_zeros({dim}), d_w4 = cuda_zeros({dim});
      ops::rmsnorm_backward(x, w, rstd, d_y, want, d_w3, accumulate);
      ops::rmsnorm_backward_with_bf16_copy(x, w, rstd, d_y, got, d_w4, accumulate, true, copy);
      EXPECT_EQ(differing(got, want), 0) << "backward with a copy, accumulate " << accumulate;
      EXPECT_EQ(differing(copy, rounded(want)), 0) << "the copy, accumulate " << accumulate;
      EXPECT_EQ(differing(d_w4, d_w3), 0);
    }
  }
}

TEST(CudaBf16Storage, CrossEntropyGradientIsTheRoundedFloat32Result) {
  REQUIRE_GPU();
  std::mt19937_64 rng(9);
  for (int64_t vocab : {8, 13, 300}) {
    const int64_t rows = 7;
    const Tensor logits = random_cuda({rows, vocab}, rng);
    // Left-out rows (-1) get a zero gradient in either dtype.
    const Tensor targets = test::device_ints({0, -1, int32_t(vocab - 1), 3, -1, 5, 1});
    Tensor d = cuda_zeros({rows, vocab}), d_bf16 = cuda_zeros({rows, vocab}, DType::BF16);
    const double loss = ops::cross_entropy(logits, targets.i32(), 0.25f, &d);
    const double loss_bf16 = ops::cross_entropy(logits, targets.i32(), 0.25f, &d_bf16);
    EXPECT_EQ(loss_bf16, loss) << "vocab " << vocab;
    EXPECT_EQ(differing(d_bf16, rounded(d)), 0) << "vocab " << vocab;
  }
}

TEST(CudaBf16Storage, LayoutMovesWriteTheRoundedFloat32Values) {
  REQUIRE_GPU();
  std::mt19937_64 rng(6);
  // MLA's query layout: [B*T, H*dq] token-major to [B, H, T, dq] head-major and back.
  const int64_t batch = 2, seq = 5, heads = 3, dq = 24;
  const ops::HeadCopy lay{batch, seq, heads, dq, heads * dq, dq, 0, dq, 0};
  const Tensor tokens = random_cuda({batch * seq, heads * dq}, rng);
  Tensor h = cuda_zeros({batch, heads, seq, dq}), h_bf16 = cuda_zeros({batch, heads, seq, dq}, DType::BF16);
  ops::tokens_to_heads(tokens, h, lay);
  ops::tokens_to_heads(tokens, h_bf16, lay);
  EXPECT_EQ(differing(h_bf16, rounded(h)), 0) << "tokens_to_heads";
  Tensor t = cuda_zeros({batch * seq, heads * dq}), t_bf16 = cuda_zeros({batch * seq, heads * dq}, DType::BF16);
  ops::heads_to_tokens(h, t, lay, false);
  ops::heads_to_tokens(h, t_bf16, lay, false);
  EXPECT_EQ(differing(t_bf16, rounded(t)), 0) << "heads_to_tokens";
  EXPECT_THROW(ops::heads_to_tokens(h, t_bf16, lay, true), Error)
      << "a BF16 destination cannot be accumulated into";
  // A shared vector (the rope key) sums the heads: not a plain move.
  const ops::HeadCopy shared{batch, seq, heads, 8, 8, 0, 0, dq, 16};
  Tensor k_pe = cuda_zeros({batch * seq, 8}, DType::BF16);
  EXPECT_THROW(ops::heads_to_tokens(h, k_pe, shared, false), Error);
  // Two column windows assembled into one row (d kv_a from d c_kv and d k_pe).
  const Tensor left = random_cuda({7, 10}, rng), right = random_cuda({7, 6}, rng);
  Tensor cols = cuda_zeros({7, 16}), cols_bf16 = cuda_zeros({7, 16}, DType::BF16);
  for (Tensor* dst : {&cols, &cols_bf16}) {
    ops::put_columns(left, 10, *dst, 16, 0, 7);
    ops::put_columns(right, 6, *dst, 16, 10, 7);
  }
  EXPECT_EQ(differing(cols_bf16, rounded(cols)), 0) << "put_columns";
}

TEST(CudaBf16Storage, GemmsGiveTheSameResultFromBf16StoredOperands) {
  REQUIRE_GPU();
  std::mt19937_64 rng(3);
  const int64_t in = 24, out = 16, rows = 40;
  const std::vector<int64_t> offsets = {0, 11, 11, 40};  // three groups, one empty
  std::vector<Tensor> w_bf16, d_w, d_w_ref;
  std::vector<const Tensor*> w;
  std::vector<Tensor*> d_w_ptr, d_w_ref_ptr;
  w_bf16.reserve(3), d_w.reserve(3), d_w_ref.reserve(3);
  for (int g = 0; g < 3; ++g) {
    w_bf16.push_back(rounded(random_cuda({out, in}, rng)));
    d_w.push_back(cuda_zeros({out, in}));
    d_w_ref.push_back(cuda_zeros({out, in}));
  }
  for (int g = 0; g < 3; ++g) {
    w.push_back(&w_bf16[size_t(g)]);
    d_w_ptr.push_back(&d_w[size_t(g)]);
    d_w_ref_ptr.push_back(&d_w_ref[size_t(g)]);
  }
  const Tensor x = random_cuda({rows, in}, rng), d_y = random_cuda({rows, out}, rng);
  // The stored operands as the step holds them: views into a larger (arena) block, 256 bytes
  // past its start, while the float32 path rounds into buffers of their own.
  const Tensor block = cuda_zeros({2 * rows * (in + out) + 1024}, DType::BF16);
  const auto view_at = [&](int64_t elem_offset, const Shape& shape) {
    return Tensor::view(static_cast<uint16_t*>(block.data()) + elem_offset, shape, DType::BF16,
                        Device::CUDA);
  };
  Tensor x_bf16 = view_at(128, {rows, in}), d_y_bf16 = view_at(128 + rows * in + 128, {rows, out});
  ops::convert(x, x_bf16);
  ops::convert(d_y, d_y_bf16);

  Tensor y = cuda_zeros({rows, out}), y_ref = cuda_zeros({rows, out});
  ops::grouped_linear_forward(x_bf16, w, offsets.data(), y);
  ops::grouped_linear_forward(x, w, offsets.data(), y_ref);
  EXPECT_EQ(differing(y, y_ref), 0) << "grouped forward";

  Tensor d_x = cuda_zeros({rows, in}), d_x_ref = cuda_zeros({rows, in});
  ops::grouped_linear_backward(x_bf16, w, d_y_bf16, offsets.data(), &d_x, d_w_ptr);
  ops::grouped_linear_backward(x, w, d_y, offsets.data(), &d_x_ref, d_w_ref_ptr);
  EXPECT_EQ(differing(d_x, d_x_ref), 0) << "grouped backward, d_x";
  for (int g = 0; g < 3; ++g)
    EXPECT_EQ(differing(d_w[size_t(g)], d_w_ref[size_t(g)]), 0) << "grouped backward, d_w " << g;

  // A plain linear with one operand stored in BF16 and the other float32 (down's backward:
  // its input is stored, its output gradient is not).
  Tensor lx = cuda_zeros({rows, in}), lx_ref = cuda_zeros({rows, in});
  Tensor lw = cuda_zeros({out, in}), lw_ref = cuda_zeros({out, in});
  ops::linear_backward(x_bf16, w_bf16[0], d_y, &lx, &lw);
  ops::linear_backward(x, w_bf16[0], d_y, &lx_ref, &lw_ref);
  EXPECT_EQ(differing(lx, lx_ref), 0) << "linear backward, d_x";
  EXPECT_EQ(differing(lw, lw_ref), 0) << "linear backward, d_w";
}

TEST(CudaBf16Storage, OtherOutputDtypesAreErrors) {
  REQUIRE_GPU();
  std::mt19937_64 rng(4);
  const Tensor gate_up = random_cuda({4, 16}, rng);
  Tensor h_f16 = cuda_zeros({4, 8}, DType::F16);
  EXPECT_THROW(ops::swiglu_forward(gate_up, h_f16), Error);
  // A BF16 input against float32 weights is not a mixed-precision product.
  const Tensor x_bf16 = rounded(random_cuda({4, 8}, rng)), w = random_cuda({8, 8}, rng);
  const std::vector<int64_t> offsets = {0, 4};
  Tensor y = cuda_zeros({4, 8});
  EXPECT_THROW(ops::grouped_linear_forward(x_bf16, {&w}, offsets.data(), y), Error);
  // Nor is a BF16 output of float32 products (float32 weights: the parity mode).
  Tensor y_bf16 = cuda_zeros({4, 8}, DType::BF16);
  EXPECT_THROW(ops::grouped_linear_forward(random_cuda({4, 8}, rng), {&w}, offsets.data(), y_bf16),
               Error);
  // BF16 rows do not gather into float32 ones (that would widen what was rounded).
  const Tensor src = test::device_ints({1, 0, 3});
  Tensor gathered = cuda_zeros({3, 8});
  EXPECT_THROW(ops::moe_gather_rows(x_bf16, src.i32(), gathered), Error);
}

}  // namespace
}  // namespace dsv3
