// MLA's attention on the token-major projections (ops::mla_attention_*, ops::rope_*_bf16)
// against the head-major path it replaces in mixed precision (model/mla.cpp): the rows moved
// into head-major BF16 buffers, ops::attention_*_lse, and the gradients moved back. Both run
// the same kernels on the same values, so every output must be equal bit for bit; an operand
// read from the wrong row, head or column, or a gradient written there, differs.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "core/device.h"
#include "kernels/ops.h"
#include "device_tensors.h"

namespace dsv3 {
namespace {

#define REQUIRE_GPU() \
  ASSERT_GT(device::cuda_device_count(), 0) << "dsv3_gpu_tests needs a visible CUDA device"

using test::cuda_zeros;
using test::device_ints;
using test::differing;
using test::random_host;
using test::rounded;

// The raw bits of element i of a host tensor (2 or 4 bytes).
uint32_t bits(const Tensor& t, int64_t i) {
  uint32_t v = 0;
  const size_t elem = t.dtype() == DType::BF16 ? 2 : 4;
  std::memcpy(&v, static_cast<const char*>(t.data()) + size_t(i) * elem, elem);
  return v;
}

// Random rope tables [max_pos, rope / 2] (magnitudes not 1, as YaRN's) and a position for each
// of n rows.
struct RopeTables {
  static constexpr int64_t kMaxPos = 50;
  Tensor cos, sin, positions;
  RopeTables(int64_t n, int64_t rope, std::mt19937_64& rng) {
    cos = random_host({kMaxPos, rope / 2}, rng).to(Device::CUDA);
    sin = random_host({kMaxPos, rope / 2}, rng).to(Device::CUDA);
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (auto& p : pos) p = int32_t(rng() % kMaxPos);
    positions = device_ints(pos);
  }
};

// The slices the rope tests rotate, [rows, heads, head_stride]: the rope part in the middle of
// each head, and MLA's shared rope key (one head, rope over all of it).
constexpr ops::RopeSlice kRopeSlices[] = {{37, 3, 24, 8, 10}, {37, 1, 8, 0, 8}};

// x rotated in place by the forward rotation or its inverse (the query gradient's way back).
void rotate_in_place(Tensor& x, const ops::RopeSlice& s, const RopeTables& rope, bool inverse) {
  if (inverse)
    ops::rope_backward(x, s, rope.positions.i32(), rope.cos, rope.sin);
  else
    ops::rope_forward(x, s, rope.positions.i32(), rope.cos, rope.sin);
}

TEST(CudaMlaAttention, RopeIntoBf16IsTheInPlaceRotationRounded) {
  REQUIRE_GPU();
  std::mt19937_64 rng(11);
  for (const bool inverse : {false, true})
    for (const ops::RopeSlice& s : kRopeSlices) {
      const Tensor x_host = random_host({s.rows, s.heads * s.head_stride}, rng);
      const RopeTables rope(s.rows, s.rope_dim, rng);
      Tensor in_place = x_host.to(Device::CUDA);
      rotate_in_place(in_place, s, rope, inverse);
      const Tensor x = x_host.to(Device::CUDA);
      Tensor out = cuda_zeros(x.shape(), DType::BF16);
      if (inverse)
        ops::rope_backward_bf16(x, s, rope.positions.i32(), rope.cos, rope.sin, out);
      else
        ops::rope_forward_bf16(x, s, rope.positions.i32(), rope.cos, rope.sin, out);
      EXPECT_EQ(differing(out, rounded(in_place)), 0)
          << (inverse ? "inverse" : "forward") << ", head_stride " << s.head_stride;
      EXPECT_EQ(differing(x, x_host.to(Device::CUDA)), 0) << "x must be left as it was";
    }
}

// BF16 rows rotated in place (MLA's queries as the query projection writes them): each pair
// rotated in float32 from its BF16 values and rounded, bit for bit the float32 rotation of the
// widened rows, rounded; the columns outside the slice come back as they were.
TEST(CudaMlaAttention, RopeInPlaceOnBf16IsTheFloat32RotationOfItsValuesRounded) {
  REQUIRE_GPU();
  std::mt19937_64 rng(12);
  for (const bool inverse : {false, true})
    for (const ops::RopeSlice& s : kRopeSlices) {
      const Tensor x16 =
          rounded(random_host({s.rows, s.heads * s.head_stride}, rng).to(Device::CUDA));
      const RopeTables rope(s.rows, s.rope_dim, rng);
      Tensor want = test::widened(x16), got = x16.clone();
      rotate_in_place(want, s, rope, inverse);
      rotate_in_place(got, s, rope, inverse);
      ASSERT_EQ(got.dtype(), DType::BF16);
      EXPECT_EQ(differing(got, rounded(want)), 0)
          << (inverse ? "inverse" : "forward") << ", head_stride " << s.head_stride;
      EXPECT_GT(differing(got, x16), 0) << "nothing was rotated";
    }
}

TEST(CudaMlaAttention, RopeIntoBf16RejectsTheWrongDtypes) {
  REQUIRE_GPU();
  const Tensor x = cuda_zeros({2, 8}), cos = cuda_zeros({4, 4}), sin = cuda_zeros({4, 4});
  const Tensor positions = device_ints({0, 1});
  Tensor out_f32 = cuda_zeros({2, 8});
  for (const bool inverse : {false, true}) {
    const char* op = inverse ? "rope_backward_bf16" : "rope_forward_bf16";
    try {
      if (inverse)
        ops::rope_backward_bf16(x, {2, 1, 8, 0, 8}, positions.i32(), cos, sin, out_f32);
      else
        ops::rope_forward_bf16(x, {2, 1, 8, 0, 8}, positions.i32(), cos, sin, out_f32);
      FAIL() << op << ": a float32 destination must be refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(op), std::string::npos) << e.what();
    }
  }
}

struct Case {
  int64_t batch, seq, heads, nope, rope, v;
};

// The head-major path of model/mla.cpp on the same values, and the token-major op, forward and
// backward; every output compared bit for bit.
void check_against_head_major(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t n = c.batch * c.seq, h = c.heads, dq = c.nope + c.rope, dkv = c.nope + c.v;
  const ops::MlaAttentionShape shape{c.batch, c.seq, h, c.nope, c.rope, c.v};
  ASSERT_TRUE(ops::mla_attention_token_major(shape));
  const double scale = 1.0 / std::sqrt(double(dq));
  // The projections in float32 (as the GEMMs write them) and rounded (as the attention reads).
  const Tensor q = random_host({n, h * dq}, rng).to(Device::CUDA);
  const Tensor kv = random_host({n, h * dkv}, rng).to(Device::CUDA);
  const Tensor k_pe = random_host({n, c.rope}, rng).to(Device::CUDA);
  const Tensor d_o = random_host({n, h * c.v}, rng).to(Device::CUDA);
  const Tensor q16 = rounded(q), kv16 = rounded(kv), k_pe16 = rounded(k_pe), d_o16 = rounded(d_o);

  // Head-major: the moves of model/mla.cpp (MlaLayouts), then the head-major ops.
  const int64_t B = c.batch, T = c.seq;
  const ops::HeadCopy lay_q{B, T, h, dq, h * dq, dq, 0, dq, 0},
      lay_k_nope{B, T, h, c.nope, h * dkv, dkv, 0, dq, 0},
      lay_k_rope{B, T, h, c.rope, c.rope, 0, 0, dq, c.nope},
      lay_v{B, T, h, c.v, h * dkv, dkv, c.nope, c.v, 0},
      lay_o{B, T, h, c.v, h * c.v, c.v, 0, c.v, 0};
  Tensor q_h = cuda_zeros({B, h, T, dq}, DType::BF16), k_h = cuda_zeros({B, h, T, dq}, DType::BF16),
         v_h = cuda_zeros({B, h, T, c.v}, DType::BF16),
         d_o_h = cuda_zeros({B, h, T, c.v}, DType::BF16);
  ops::tokens_to_heads(q, q_h, lay_q);
  ops::tokens_to_heads(kv, k_h, lay_k_nope);
  ops::tokens_to_heads(k_pe, k_h, lay_k_rope);
  ops::tokens_to_heads(kv, v_h, lay_v);
  ops::tokens_to_heads(d_o, d_o_h, lay_o);
  Tensor lse_h = cuda_zeros({B, h, T}), o_h = cuda_zeros({B, h, T, c.v}, DType::BF16);
  ops::attention_forward_lse(q_h, k_h, v_h, scale, lse_h, o_h);
  Tensor d_q_h = cuda_zeros({B, h, T, dq}), d_k_h = cuda_zeros({B, h, T, dq}),
         d_v_h = cuda_zeros({B, h, T, c.v});
  ops::attention_backward_lse(q_h, k_h, v_h, o_h, lse_h, d_o_h, scale, d_q_h, d_k_h, d_v_h);
  Tensor want_d_q = cuda_zeros({n, h * dq}), want_d_kv = cuda_zeros({n, h * dkv}, DType::BF16),
         want_d_k_pe = cuda_zeros({n, c.rope});
  ops::heads_to_tokens(d_q_h, want_d_q, lay_q, false);
  ops::heads_to_tokens(d_k_h, want_d_kv, lay_k_nope, false);
  ops::heads_to_tokens(d_v_h, want_d_kv, lay_v, false);
  ops::heads_to_tokens(d_k_h, want_d_k_pe, lay_k_rope, false);

  // Token-major, outputs filled with NaN first so that an element left unwritten differs.
  const auto nan_filled = [](const Shape& s, DType dt) {
    Tensor t = Tensor::zeros(s);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = NAN;
    Tensor d = t.to(Device::CUDA);
    return dt == DType::BF16 ? rounded(d) : d;
  };
  Tensor lse = nan_filled({B, h, T}, DType::F32), o = nan_filled({n, h * c.v}, DType::BF16);
  ops::mla_attention_forward(q16, kv16, k_pe16, shape, scale, lse, o);
  EXPECT_EQ(differing(lse, lse_h), 0);
  // o token-major against o_h head-major: element (b, t, head, col) of each.
  const Tensor o_host = o.to(Device::CPU), o_h_host = o_h.to(Device::CPU);
  int64_t bad_o = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t hh = 0; hh < h; ++hh)
        for (int64_t col = 0; col < c.v; ++col)
          bad_o += bits(o_host, ((b * T + t) * h + hh) * c.v + col) !=
                   bits(o_h_host, ((b * h + hh) * T + t) * c.v + col);
  EXPECT_EQ(bad_o, 0) << "o";

  Tensor d_q = nan_filled({n, h * dq}, DType::F32), d_kv = nan_filled({n, h * dkv}, DType::BF16),
         d_k_pe = nan_filled({n, c.rope}, DType::F32);
  ops::mla_attention_backward(q16, kv16, k_pe16, o, lse, d_o16, shape, scale, d_q, d_kv, d_k_pe);
  EXPECT_EQ(differing(d_q, want_d_q), 0) << "d_q";
  EXPECT_EQ(differing(d_kv, want_d_kv), 0) << "d_kv";
  EXPECT_EQ(differing(d_k_pe, want_d_k_pe), 0) << "d_k_pe";

  // The query gradient rotated back as the attention stores it (the training step's way):
  // rope_backward_bf16 of the float32 d_q above, bit for bit; the other outputs unchanged.
  const RopeTables rope(n, c.rope, rng);
  Tensor want_d_q_proj = cuda_zeros({n, h * dq}, DType::BF16);
  ops::rope_backward_bf16(d_q, {n, h, dq, c.nope, c.rope}, rope.positions.i32(), rope.cos, rope.sin,
                          want_d_q_proj);
  Tensor d_q_proj = nan_filled({n, h * dq}, DType::BF16),
         d_kv2 = nan_filled({n, h * dkv}, DType::BF16),
         d_k_pe2 = nan_filled({n, c.rope}, DType::F32);
  const ops::QueryRope rotate_back{rope.positions.i32(), &rope.cos, &rope.sin};
  ops::mla_attention_backward(q16, kv16, k_pe16, o, lse, d_o16, shape, scale, d_q_proj, d_kv2,
                              d_k_pe2, &rotate_back);
  EXPECT_EQ(differing(d_q_proj, want_d_q_proj), 0) << "d_q rotated back";
  EXPECT_EQ(differing(d_kv2, want_d_kv), 0) << "d_kv (rotating d_q back)";
  EXPECT_EQ(differing(d_k_pe2, want_d_k_pe), 0) << "d_k_pe (rotating d_q back)";
}

TEST(CudaMlaAttention, TokenMajorEqualsTheHeadMajorPathBitForBit) {
  REQUIRE_GPU();
  // DeepSeek-V3's head dims (nope 128, rope 64, v 128) over several tiles with a partial one,
  // the fixtures' small dims, and dims that are not powers of two.
  check_against_head_major({2, 70, 3, 128, 64, 128}, 21);
  check_against_head_major({2, 9, 4, 16, 8, 16}, 22);
  check_against_head_major({1, 33, 2, 24, 16, 40}, 23);
}

// A position outside the tables, as the rope kernels treat it: recorded (raised at the next
// wait) and its row's query gradient stored unrotated.
TEST(CudaMlaAttention, RotatingBackAtABadPositionIsRaisedAndTheRowLeftUnrotated) {
  REQUIRE_GPU();
  const auto error_at_next_wait = [] {
    try {
      device::synchronize(Device::CUDA);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  ASSERT_EQ(error_at_next_wait(), "");
  std::mt19937_64 rng(31);
  const ops::MlaAttentionShape shape{1, 9, 2, 16, 8, 16};
  const int64_t n = 9, dq = 24, dkv = 32;
  const Tensor q = rounded(random_host({n, 2 * dq}, rng).to(Device::CUDA));
  const Tensor kv = rounded(random_host({n, 2 * dkv}, rng).to(Device::CUDA));
  const Tensor k_pe = rounded(random_host({n, 8}, rng).to(Device::CUDA));
  const Tensor d_o = rounded(random_host({n, 2 * 16}, rng).to(Device::CUDA));
  Tensor lse = cuda_zeros({1, 2, 9}), o = cuda_zeros({n, 2 * 16}, DType::BF16);
  ops::mla_attention_forward(q, kv, k_pe, shape, 0.2, lse, o);
  RopeTables rope(n, 8, rng);
  std::vector<int32_t> pos(size_t(n), 3);
  pos[5] = int32_t(RopeTables::kMaxPos);  // one past the tables
  rope.positions = device_ints(pos);
  Tensor d_q = cuda_zeros({n, 2 * dq}), d_kv = cuda_zeros({n, 2 * dkv}, DType::BF16),
         d_k_pe = cuda_zeros({n, 8});
  ops::mla_attention_backward(q, kv, k_pe, o, lse, d_o, shape, 0.2, d_q, d_kv, d_k_pe);
  Tensor d_q_proj = cuda_zeros({n, 2 * dq}, DType::BF16);
  const ops::QueryRope rotate_back{rope.positions.i32(), &rope.cos, &rope.sin};
  ops::mla_attention_backward(q, kv, k_pe, o, lse, d_o, shape, 0.2, d_q_proj, d_kv, d_k_pe,
                              &rotate_back);
  const std::string msg = error_at_next_wait();
  EXPECT_NE(msg.find("position 50 at row 5 is outside the table of 50 positions"),
            std::string::npos)
      << msg;
  // rope_backward_bf16 treats the row alike (and records the same error).
  Tensor want = cuda_zeros({n, 2 * dq}, DType::BF16);
  ops::rope_backward_bf16(d_q, {n, 2, dq, 16, 8}, rope.positions.i32(), rope.cos, rope.sin, want);
  EXPECT_NE(error_at_next_wait(), "");
  EXPECT_EQ(differing(d_q_proj, want), 0);
  // Row 5 holds the rounded values unrotated; row 4 (position 3) was rotated.
  const Tensor got = d_q_proj.to(Device::CPU), plain = rounded(d_q).to(Device::CPU);
  const size_t row_bytes = size_t(2 * dq) * 2;
  const auto row = [&](const Tensor& t, int64_t r) {
    return static_cast<const char*>(t.data()) + size_t(r) * row_bytes;
  };
  EXPECT_EQ(std::memcmp(row(got, 5), row(plain, 5), row_bytes), 0) << "row 5 unrotated";
  EXPECT_NE(std::memcmp(row(got, 4), row(plain, 4), row_bytes), 0) << "row 4 rotated";
}

TEST(CudaMlaAttention, DimsTheKernelsDoNotTakeAreReportedAndRefused) {
  REQUIRE_GPU();
  EXPECT_FALSE(ops::mla_attention_token_major({1, 4, 2, 12, 8, 16})) << "nope not a multiple of 8";
  EXPECT_FALSE(ops::mla_attention_token_major({1, 4, 2, 192, 64, 128})) << "past 192 / 128";
  const ops::MlaAttentionShape bad{1, 4, 2, 12, 8, 16};
  const Tensor q = cuda_zeros({4, 40}, DType::BF16), kv = cuda_zeros({4, 56}, DType::BF16),
               k_pe = cuda_zeros({4, 8}, DType::BF16);
  Tensor lse = cuda_zeros({1, 2, 4}), o = cuda_zeros({4, 32}, DType::BF16);
  try {
    ops::mla_attention_forward(q, kv, k_pe, bad, 0.1, lse, o);
    FAIL() << "dims the kernels do not take must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not taken by the token-major BF16 kernels"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dsv3
