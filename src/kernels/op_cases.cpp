// The op-test table: one entry per op of kernels/ops.h (test and perf modes) and one per
// backward (grad mode). See kernels/op_cases.h for what the modes do; the harness is in
// op_harness.cpp.
//
// Inputs are standard normal unless said otherwise. Output buffers that an op must overwrite
// start as NaN, so an element it forgets to write fails the comparison; buffers it accumulates
// into ("+=") start random.
//
// Tolerances (float32). The reference sums in float64 and rounds once, so the difference is
// the fast kernel's own float32 rounding: a sum of k products carries about sqrt(k) * 6e-8 of
// its terms' scale (random-walk rounding; oneDNN's blocking and FMAs change the order, not the
// size), and for the k <= ~1000 used here that stays below 1e-5 of the output's rms with an
// order of magnitude to spare. A wrong index, sign, scale or a missing term moves an element
// by the size of the element itself, about 1e5 times the tolerance. Pure data movement is exact.
#include <cmath>
#include <limits>

#include "kernels/op_cases.h"
#include "kernels/reference.h"

namespace dsv3::optest {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A BF16 copy of a float32 host tensor (round to nearest even; NaN stays NaN).
Tensor as_bf16(const Tensor& t) {
  Tensor b = Tensor::zeros(t.shape(), DType::BF16);
  convert_from_f32(t.f32(), DType::BF16, b.data(), size_t(t.numel()));
  return b;
}

// Token ids in [0, vocab), about one in `hole_every` replaced by -1 ("no token").
Tensor random_ids(Rng& rng, int64_t rows, int64_t vocab, int hole_every) {
  std::vector<int32_t> ids(static_cast<size_t>(rows));
  for (auto& id : ids)
    id = hole_every > 0 && uniform_int(rng, 0, hole_every - 1) == 0
             ? -1
             : int32_t(uniform_int(rng, 0, vocab - 1));
  return int_tensor(ids);
}

int64_t prod(const Dims& d, std::initializer_list<size_t> idx) {
  int64_t p = 1;
  for (size_t i : idx) p *= d[i];
  return p;
}

// ---- Layout helpers for the copy ops ----

// dims: batch, seq, heads, width, shared (one vector for all heads), tok_pad, head_pad
ops::HeadCopy head_copy(const Dims& d) {
  ops::HeadCopy c{};
  c.batch = d[0];
  c.seq = d[1];
  c.heads = d[2];
  c.width = d[3];
  const bool shared = d[4] != 0;
  const int64_t tok_pad = d[5], head_pad = d[6];
  // Rows padded by 3 floats, or by 4 where tok_pad is a multiple of 4: then shapes whose
  // widths and pads are all multiples of 4 take the CUDA kernels' 16-byte accesses.
  const int64_t row_pad = tok_pad % 4 == 0 ? 4 : 3;
  c.tok_offset = tok_pad / 2;
  c.tok_head_stride = shared ? 0 : c.width + tok_pad;
  c.tok_row_stride = shared ? c.width + tok_pad + row_pad : c.heads * c.tok_head_stride + row_pad;
  c.head_dim = c.width + head_pad;
  c.head_offset = head_pad - head_pad / 3;
  return c;
}

Problem make_heads(const Dims& d, Rng& rng) {
  const ops::HeadCopy c = head_copy(d);
  Problem p;
  p.tensors["tokens"] = randn({c.batch * c.seq, c.tok_row_stride}, rng);
  p.tensors["heads"] = randn({c.batch, c.heads, c.seq, c.head_dim}, rng);
  p.scalars["accumulate"] = d.size() > 7 ? double(d[7]) : 0.0;
  return p;
}

std::function<Dims(Rng&)> draw_heads(bool with_accumulate) {
  return [with_accumulate](Rng& rng) {
    Dims d{uniform_int(rng, 1, 3), uniform_int(rng, 1, 40), uniform_int(rng, 1, 9),
           uniform_int(rng, 1, 70), uniform_int(rng, 0, 1), uniform_int(rng, 0, 9),
           uniform_int(rng, 0, 9)};
    if (with_accumulate) d.push_back(uniform_int(rng, 0, 1));
    return d;
  };
}

// x [rows, heads, head_stride] rotated at `offset`; a cos/sin table of magnitude 1.1 (YaRN
// folds its mscale into the table).
Problem make_rope(const Dims& d, Rng& rng) {
  const int64_t rows = d[0], heads = d[1], stride = d[2], dim = d[4], max_pos = d[5];
  Problem p;
  p.tensors["x"] = randn({rows, heads, stride}, rng);
  std::vector<int32_t> pos(static_cast<size_t>(rows));
  for (auto& v : pos) v = int32_t(uniform_int(rng, 0, max_pos - 1));
  p.tensors["positions"] = int_tensor(pos);
  Tensor cos = Tensor::zeros({max_pos, dim / 2}), sin = Tensor::zeros({max_pos, dim / 2});
  for (int64_t t = 0; t < max_pos; ++t)
    for (int64_t i = 0; i < dim / 2; ++i) {
      const double angle = double(t) * std::pow(10000.0, -2.0 * double(i) / double(dim));
      cos.f32()[t * dim / 2 + i] = float(1.1 * std::cos(angle));
      sin.f32()[t * dim / 2 + i] = float(1.1 * std::sin(angle));
    }
  p.tensors["cos"] = cos;
  p.tensors["sin"] = sin;
  p.scalars["offset"] = double(d[3]);
  return p;
}

ops::RopeSlice rope_slice(const Problem& p) {
  const Tensor& x = p["x"];
  return ops::RopeSlice{x.dim(0), x.dim(1), x.dim(2), int64_t(p.scalar("offset")),
                        2 * p["cos"].dim(1)};
}

Problem make_attn(const Dims& d, Rng& rng) {
  const int64_t b = d[0], h = d[1], s = d[2], dq = d[3], dv = d[4];
  Problem p;
  p.tensors["q"] = randn({b, h, s, dq}, rng);
  p.tensors["k"] = randn({b, h, s, dq}, rng);
  p.tensors["v"] = randn({b, h, s, dv}, rng);
  p.scalars["scale"] = 1.0 / std::sqrt(double(dq));
  return p;
}

// ---- Test and perf cases ----

std::vector<OpCase> build_op_cases() {
  std::vector<OpCase> cases;
  const Tolerance kExact{0, 0};
  // A sum of k float32 products against float64 (see the file comment).
  const Tolerance kDot{1e-5, 1e-5};
  // One or two roundings and a float32 exp/sqrt per element: a few ulps.
  const Tolerance kElementwise{2e-6, 1e-6};
  // bf16 keeps 8 bits of mantissa: one rounding is 4e-3 relative; sums of k grow it by sqrt(k).
  const Tolerance kBf16Dot{3e-2, 3e-2}, kBf16Elementwise{1e-2, 1e-2};

  // GEMM: every transpose combination, leading dimensions wider than the matrix (the padding
  // must stay untouched), alpha, beta = 0 with C holding NaN (C must not be read) and k = 0.
  cases.push_back(OpCase{
      "gemm", "m, n, k, trans_a, trans_b, pad, beta != 0",
      shapes({{1, 1, 1, 0, 0, 0, 0}, {1, 17, 33, 0, 1, 0, 1}, {7, 5, 0, 0, 0, 0, 0},
              {7, 5, 0, 1, 1, 3, 1}, {33, 1, 19, 1, 0, 2, 1}, {64, 48, 96, 0, 1, 0, 0},
              {127, 65, 300, 1, 1, 5, 1}},
             6,
             [](Rng& r) {
               return Dims{uniform_int(r, 1, 150), uniform_int(r, 1, 150), uniform_int(r, 1, 320),
                           uniform_int(r, 0, 1),   uniform_int(r, 0, 1),   uniform_int(r, 0, 4),
                           uniform_int(r, 0, 1)};
             }),
      [](const Dims& d, Rng& rng) {
        const int64_t m = d[0], n = d[1], k = d[2], pad = d[5];
        const bool ta = d[3], tb = d[4];
        Problem p;
        p.tensors["a"] = randn({ta ? k : m, (ta ? m : k) + pad}, rng);
        p.tensors["b"] = randn({tb ? n : k, (tb ? k : n) + pad}, rng);
        Tensor c = randn({m, n + pad}, rng);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n + pad; ++j)
            if (j >= n) c.f32()[i * (n + pad) + j] = 7777.0f;  // padding: must survive
            else if (d[6] == 0) c.f32()[i * (n + pad) + j] = kNaN;  // beta 0: must not be read
        p.tensors["c"] = c;
        p.scalars["alpha"] = std::uniform_real_distribution<double>(0.5, 1.5)(rng);
        p.scalars["beta"] = d[6] ? 0.75 : 0.0;
        return p;
      },
      [](const OpSet& o, Problem& p) {
        const Tensor &a = p["a"], &b = p["b"];
        Tensor& c = p["c"];
        const Dims& d = p.dims;
        const int64_t m = d[0], n = d[1], k = d[2];
        const bool ta = d[3], tb = d[4];
        o.gemm(ta, tb, m, n, k, float(p.scalar("alpha")), a.f32(), a.dim(1), b.f32(), b.dim(1),
               float(p.scalar("beta")), c.f32(), c.dim(1));
      },
      {"c"}, {kDot, kBf16Dot}, "a sum of k products (file comment)",
      {256, 256, 256, 0, 1, 0, 0},
      [](const Dims& d) { return 2.0 * d[0] * d[1] * d[2]; },
      [](const Dims& d) { return 4.0 * (d[0] * d[2] + d[2] * d[1] + d[0] * d[1]); }});

  auto draw_linear = [](Rng& r) {
    return Dims{uniform_int(r, 1, 100), uniform_int(r, 1, 300), uniform_int(r, 1, 300)};
  };
  cases.push_back(OpCase{
      "linear_forward", "rows, in, out",
      shapes({{1, 1, 1}, {1, 7, 5}, {3, 17, 33}, {16, 16, 16}, {61, 129, 47}}, 4, draw_linear),
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["x"] = randn({d[0], d[1]}, rng);
        p.tensors["w"] = randn({d[2], d[1]}, rng);
        p.tensors["y"] = filled({d[0], d[2]}, kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) { o.linear_forward(p["x"], p["w"], p["y"]); }, {"y"},
      {kDot, kBf16Dot}, "a sum of `in` products", {128, 512, 512},
      [](const Dims& d) { return 2.0 * prod(d, {0, 1, 2}); },
      [](const Dims& d) { return 4.0 * (d[0] * d[1] + d[1] * d[2] + d[0] * d[2]); }});

  // x and d_x read and written, d_y and W read, d_w written (and read when accumulated into).
  const auto linear_backward_bytes = [](const Dims& d) {
    return 4.0 * (2 * d[0] * d[1] + (1 + d[5]) * d[1] * d[2] + d[0] * d[2]);
  };
  cases.push_back(OpCase{
      "linear_backward", "rows, in, out, accumulate d_x, with d_x, accumulate d_w",
      shapes({{1, 1, 1, 0, 1, 1}, {1, 7, 5, 1, 1, 0}, {3, 17, 33, 0, 0, 1}, {61, 129, 47, 1, 1, 0},
              {40, 33, 65, 0, 1, 1}, {5, 9, 3, 0, 0, 0}},
             4,
             [](Rng& r) {
               return Dims{uniform_int(r, 1, 100), uniform_int(r, 1, 300), uniform_int(r, 1, 300),
                           uniform_int(r, 0, 1),   uniform_int(r, 0, 1),   uniform_int(r, 0, 1)};
             }),
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["x"] = randn({d[0], d[1]}, rng);
        p.tensors["w"] = randn({d[2], d[1]}, rng);
        p.tensors["d_y"] = randn({d[0], d[2]}, rng);
        // d_x: accumulated into, overwritten (NaN), or not asked for (must stay zero).
        p.tensors["d_x"] = d[3] ? randn({d[0], d[1]}, rng)
                                : filled({d[0], d[1]}, d[4] ? kNaN : 0.0f);
        // d_w: accumulated into, or overwritten (NaN: the stale gradient of a step's first write).
        p.tensors["d_w"] = d[5] ? randn({d[2], d[1]}, rng) : filled({d[2], d[1]}, kNaN);
        p.scalars["accumulate"] = double(d[3]);
        p.scalars["with_d_x"] = double(d[4]);
        p.scalars["accumulate_d_w"] = double(d[5]);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.linear_backward(p["x"], p["w"], p["d_y"], p.scalar("with_d_x") ? &p["d_x"] : nullptr,
                          &p["d_w"], p.scalar("accumulate") != 0, p.scalar("accumulate_d_w") != 0);
      },
      {"d_x", "d_w"}, {kDot, kBf16Dot}, "sums of `out` (d_x) and `rows` (d_w) products",
      {128, 512, 512, 0, 1, 1}, [](const Dims& d) { return 4.0 * prod(d, {0, 1, 2}); },
      linear_backward_bytes});

  // RMSNorm: rows of very different scales (the norm must remove them).
  auto make_rms = [](const Dims& d, Rng& rng) {
    Problem p;
    Tensor x = randn({d[0], d[1]}, rng);
    for (int64_t r = 0; r < d[0]; ++r) {
      const float s = float(std::pow(10.0, std::uniform_real_distribution<double>(-2, 2)(rng)));
      for (int64_t i = 0; i < d[1]; ++i) x.f32()[r * d[1] + i] *= s;
    }
    p.tensors["x"] = x;
    p.tensors["w"] = randn({d[1]}, rng);
    p.scalars["eps"] = 1e-6;
    return p;
  };
  auto draw_rms = [](Rng& r) { return Dims{uniform_int(r, 1, 64), uniform_int(r, 1, 1100)}; };
  cases.push_back(OpCase{
      "rmsnorm_forward", "rows, dim",
      shapes({{1, 1}, {1, 17}, {5, 16}, {3, 1000}, {33, 129}}, 4, draw_rms),
      [make_rms](const Dims& d, Rng& rng) {
        Problem p = make_rms(d, rng);
        p.tensors["y"] = filled({d[0], d[1]}, kNaN);
        p.tensors["rstd"] = filled({d[0]}, kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.rmsnorm_forward(p["x"], p["w"], float(p.scalar("eps")), p["y"], p["rstd"]);
      },
      {"y", "rstd"}, {kDot, kBf16Dot}, "a float32 sum of dim squares", {1024, 1024, 0},
      [](const Dims& d) { return 0.0; },
      [](const Dims& d) { return 4.0 * (2 * d[0] * d[1] + d[1] + d[0]); }});

  cases.push_back(OpCase{
      "rmsnorm_backward", "rows, dim, accumulate d_x, accumulate d_w",
      // Not dim 1: there d_x = rstd (g w - xhat mean(g w xhat)) cancels to the eps term alone
      // (~1e-7 of its terms), which no float32 kernel resolves and no model has.
      // 300 and 2100 rows: several row chunks of the CUDA weight gradient (8 and 16 rows), the
      // last one partial. Widths on both sides of the CUDA kernel's register limits (512, 1024,
      // 1536, 2048 columns; wider rows take separate d_x and d_w passes).
      shapes({{1, 2, 0, 1}, {1, 17, 1, 0}, {5, 16, 0, 1}, {3, 1000, 1, 1}, {33, 129, 0, 0},
              {300, 40, 1, 0}, {2100, 40, 0, 1}, {20, 512, 1, 1}, {20, 513, 0, 0},
              {20, 1025, 1, 0}, {20, 1536, 0, 1}, {20, 1537, 1, 1}, {20, 2048, 0, 0},
              {20, 2049, 1, 1}},
             4,
             [](Rng& r) {
               return Dims{uniform_int(r, 1, 64), uniform_int(r, 2, 1100), uniform_int(r, 0, 1),
                           uniform_int(r, 0, 1)};
             }),
      [make_rms](const Dims& d, Rng& rng) {
        Problem p = make_rms(d, rng);
        Tensor y = Tensor::zeros({d[0], d[1]}), rstd = Tensor::zeros({d[0]});
        ref::rmsnorm_forward(p["x"], p["w"], float(p.scalar("eps")), y, rstd);
        p.tensors["rstd"] = rstd;
        p.tensors["d_y"] = randn({d[0], d[1]}, rng);
        p.tensors["d_x"] = d[2] ? randn({d[0], d[1]}, rng) : filled({d[0], d[1]}, kNaN);
        p.tensors["d_w"] = d[3] ? randn({d[1]}, rng) : filled({d[1]}, kNaN);
        p.scalars["accumulate"] = double(d[2]);
        p.scalars["accumulate_d_w"] = double(d[3]);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.rmsnorm_backward(p["x"], p["w"], p["rstd"], p["d_y"], p["d_x"], p["d_w"],
                           p.scalar("accumulate") != 0, p.scalar("accumulate_d_w") != 0);
      },
      {"d_x", "d_w"}, {kDot, kBf16Dot}, "sums over dim (d_x) and rows (d_w)", {1024, 1024, 0, 1},
      [](const Dims& d) { return 0.0; },
      [](const Dims& d) { return 4.0 * (4 * d[0] * d[1] + (1 + d[3]) * d[1] + d[0]); }});

  // RoPE on a slice of each head (offset inside a wider head, as MLA's q_pe), with a table
  // whose magnitude is not 1 (YaRN folds its mscale into cos/sin).
  auto rope_shapes = shapes(
      {{1, 1, 2, 0, 2, 1}, {3, 1, 64, 0, 64, 8}, {5, 3, 24, 16, 8, 40}, {7, 4, 192, 128, 64, 64}},
      4, [](Rng& r) {
        const int64_t half = uniform_int(r, 1, 40), offset = uniform_int(r, 0, 50);
        return Dims{uniform_int(r, 1, 50), uniform_int(r, 1, 9),
                    offset + 2 * half + uniform_int(r, 0, 5), offset, 2 * half,
                    uniform_int(r, 1, 300)};
      });
  for (bool backward : {false, true}) {
    cases.push_back(OpCase{
        backward ? "rope_backward" : "rope_forward",
        "rows, heads, head_stride, offset, rope_dim, positions", rope_shapes,
        make_rope,
        [backward](const OpSet& o, Problem& p) {
          (backward ? o.rope_backward : o.rope_forward)(p["x"].f32(), rope_slice(p),
                                                        p["positions"].i32(), p["cos"], p["sin"]);
        },
        {"x"}, {kElementwise, kBf16Elementwise}, "two products and a sum per element",
        {1024, 16, 192, 128, 64, 1024}, [](const Dims& d) { return 0.0; },
        [](const Dims& d) { return 8.0 * d[0] * d[1] * d[4] + 4.0 * d[0] * d[4]; }});
  }

  auto draw_rows_width = [](Rng& r) {
    return Dims{uniform_int(r, 1, 70), uniform_int(r, 1, 300)};
  };
  cases.push_back(OpCase{
      "swiglu_forward", "rows, width",
      shapes({{1, 1}, {1, 17}, {9, 16}, {33, 130}}, 4, draw_rows_width),
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["gate_up"] = randn({d[0], 2 * d[1]}, rng, 3.0);
        p.tensors["h"] = filled({d[0], d[1]}, kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) { o.swiglu_forward(p["gate_up"], p["h"]); }, {"h"},
      {kElementwise, kBf16Elementwise}, "a float32 exp and three products per element",
      {2048, 1024}, [](const Dims& d) { return 0.0; },
      [](const Dims& d) { return 12.0 * d[0] * d[1]; }});

  cases.push_back(OpCase{
      "swiglu_backward", "rows, width",
      shapes({{1, 1}, {1, 17}, {9, 16}, {33, 130}}, 4, draw_rows_width),
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["gate_up"] = randn({d[0], 2 * d[1]}, rng, 3.0);
        p.tensors["d_h"] = randn({d[0], d[1]}, rng);
        p.tensors["d_gate_up"] = filled({d[0], 2 * d[1]}, kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) { o.swiglu_backward(p["gate_up"], p["d_h"], p["d_gate_up"]); },
      {"d_gate_up"}, {{1e-5, 1e-6}, kBf16Elementwise},
      "a float32 exp and a handful of products per element; 1 - sig loses bits for large gates",
      {2048, 1024}, [](const Dims& d) { return 0.0; },
      [](const Dims& d) { return 20.0 * d[0] * d[1]; }});

  // Attention: seq 1, head dims that are no multiple of 16, MLA's 192/128 head dims.
  auto attn_shapes = shapes(
      {{1, 1, 1, 1, 1}, {1, 2, 1, 24, 16}, {2, 3, 7, 24, 16}, {1, 4, 33, 192, 128},
       {2, 2, 17, 13, 5}},
      3, [](Rng& r) {
        return Dims{uniform_int(r, 1, 2), uniform_int(r, 1, 4), uniform_int(r, 1, 70),
                    uniform_int(r, 1, 200), uniform_int(r, 1, 130)};
      });
  auto attn_flops = [](const Dims& d) {  // the full (not causal-halved) GEMMs the CPU runs
    return 2.0 * d[0] * d[1] * d[2] * d[2] * (d[3] + d[4]);
  };
  cases.push_back(OpCase{
      "attention_forward", "batch, heads, seq, qk_dim, v_dim", attn_shapes,
      [](const Dims& d, Rng& rng) {
        Problem p = make_attn(d, rng);
        p.tensors["probs"] = filled({d[0], d[1], d[2], d[2]}, kNaN);
        p.tensors["o"] = filled({d[0], d[1], d[2], d[4]}, kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.attention_forward(p["q"], p["k"], p["v"], float(p.scalar("scale")), p["probs"], p["o"]);
      },
      {"probs", "o"}, {kDot, kBf16Dot}, "sums of qk_dim and seq products, a float32 softmax",
      {1, 8, 256, 64, 64}, attn_flops, [](const Dims& d) { return 0.0; }});

  cases.push_back(OpCase{
      "attention_backward", "batch, heads, seq, qk_dim, v_dim", attn_shapes,
      [](const Dims& d, Rng& rng) {
        Problem p = make_attn(d, rng);
        Tensor probs = Tensor::zeros({d[0], d[1], d[2], d[2]}), o = Tensor::zeros(p["v"].shape());
        ref::attention_forward(p["q"], p["k"], p["v"], float(p.scalar("scale")), probs, o);
        p.tensors["probs"] = probs;
        p.tensors["d_o"] = randn(o.shape(), rng);
        p.tensors["scratch"] = Tensor::zeros(probs.shape());
        p.tensors["d_q"] = filled(p["q"].shape(), kNaN);
        p.tensors["d_k"] = filled(p["k"].shape(), kNaN);
        p.tensors["d_v"] = filled(p["v"].shape(), kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.attention_backward(p["q"], p["k"], p["v"], p["probs"], p["d_o"],
                             float(p.scalar("scale")), p["scratch"], p["d_q"], p["d_k"], p["d_v"]);
      },
      {"d_q", "d_k", "d_v"}, {kDot, kBf16Dot}, "sums of v_dim, seq and seq products",
      {1, 8, 256, 64, 64}, [attn_flops](const Dims& d) { return 2.0 * attn_flops(d); },
      [](const Dims& d) { return 0.0; }});

  // The lse form (no [seq, seq] buffer): the same edge cases plus sequences past one 32-row GPU
  // tile and past the CPU's 64-row blocks (partial tiles at both ends), the largest head dims
  // (256), and v wider than q/k.
  auto lse_shapes = shapes(
      {{1, 1, 1, 1, 1}, {1, 2, 1, 24, 16}, {2, 3, 7, 24, 16}, {1, 4, 33, 192, 128},
       {2, 2, 17, 13, 5}, {1, 2, 130, 192, 128}, {1, 1, 65, 256, 256}, {1, 1, 40, 7, 200}},
      4, [](Rng& r) {
        return Dims{uniform_int(r, 1, 2), uniform_int(r, 1, 4), uniform_int(r, 1, 150),
                    uniform_int(r, 1, 256), uniform_int(r, 1, 256)};
      });
  // Useful causal work, as attention papers count it: the scores and P V over half of the
  // [seq, seq] square, 2 * (seq^2 / 2) * (qk + v) per head; the backward is 2.5 times that.
  auto causal_flops = [](const Dims& d) {
    return double(d[0]) * d[1] * d[2] * d[2] * (d[3] + d[4]);
  };
  cases.push_back(OpCase{
      "attention_forward_lse", "batch, heads, seq, qk_dim, v_dim", lse_shapes,
      [](const Dims& d, Rng& rng) {
        Problem p = make_attn(d, rng);
        p.tensors["lse"] = filled({d[0], d[1], d[2]}, kNaN);
        p.tensors["o"] = filled({d[0], d[1], d[2], d[4]}, kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.attention_forward_lse(p["q"], p["k"], p["v"], float(p.scalar("scale")), p["lse"],
                                p["o"]);
      },
      {"lse", "o"}, {kDot, kBf16Dot}, "sums of qk_dim and seq products, a float32 softmax",
      {1, 16, 512, 192, 128}, causal_flops, [](const Dims& d) { return 0.0; }});

  cases.push_back(OpCase{
      "attention_backward_lse", "batch, heads, seq, qk_dim, v_dim", lse_shapes,
      [](const Dims& d, Rng& rng) {
        Problem p = make_attn(d, rng);
        Tensor lse = Tensor::zeros({d[0], d[1], d[2]}), o = Tensor::zeros(p["v"].shape());
        ref::attention_forward_lse(p["q"], p["k"], p["v"], float(p.scalar("scale")), lse, o);
        p.tensors["lse"] = lse;
        p.tensors["o"] = o;
        p.tensors["d_o"] = randn(o.shape(), rng);
        p.tensors["d_q"] = filled(p["q"].shape(), kNaN);
        p.tensors["d_k"] = filled(p["k"].shape(), kNaN);
        p.tensors["d_v"] = filled(p["v"].shape(), kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.attention_backward_lse(p["q"], p["k"], p["v"], p["o"], p["lse"], p["d_o"],
                                 float(p.scalar("scale")), p["d_q"], p["d_k"], p["d_v"]);
      },
      {"d_q", "d_k", "d_v"}, {{3e-5, 3e-5}, kBf16Dot},
      "sums of qk_dim, v_dim and seq products, and P recomputed as exp(s - lse): exp turns the "
      "float32 rounding of s (a sum of qk_dim products) into a relative error of P, which every "
      "gradient carries (the probs form gets P exact from the reference); the CPU measured up to "
      "0.55 of 1e-5 at seq 115, and the GPU sums dK, dV over up to seq rows in one chain",
      {1, 16, 512, 192, 128}, [causal_flops](const Dims& d) { return 2.5 * causal_flops(d); },
      [](const Dims& d) { return 0.0; }});

  // BF16 inputs (tensor cores on CUDA, attention_bf16*.cu): q, k, v, d_o are BF16, o BF16, lse
  // and the gradients float32, against the float64 reference on the same BF16-rounded inputs
  // (and, for the backward, the same BF16-rounded o). Head dims are multiples of 8 (the kernels'
  // granularity) except 13/5 and the backward at 256/256, which take the float32 fallback.
  // The CPU backend has no BF16 attention: there the case widens the inputs and runs float32.
  auto bf16_shapes = shapes(
      {{1, 1, 1, 64, 64}, {1, 2, 1, 192, 128}, {2, 3, 7, 24, 16}, {1, 4, 33, 192, 128},
       {2, 2, 17, 16, 8}, {1, 2, 130, 192, 128}, {1, 1, 65, 256, 256}, {1, 1, 40, 8, 200},
       {1, 2, 129, 64, 64}, {2, 2, 17, 13, 5}},
      4, [](Rng& r) {
        return Dims{uniform_int(r, 1, 2), uniform_int(r, 1, 4), uniform_int(r, 1, 200),
                    8 * uniform_int(r, 1, 24), 8 * uniform_int(r, 1, 16)};
      });
  // bf16 output rounding is at most 2^-8 (0.4%) relative; P and dS are rounded to bf16 before
  // the P V, P^T dO, dS K and dS^T Q products, at most 2^-8 relative per term, which adds up
  // like a random walk to about 0.2% of the output's rms. 2e-2 leaves ten times that; a wrong
  // index, mask or scale moves an element by its own size.
  const Tolerance kBf16Attn{2e-2, 2e-2};
  cases.push_back(OpCase{
      "attention_forward_lse_bf16", "batch, heads, seq, qk_dim, v_dim", bf16_shapes,
      [](const Dims& d, Rng& rng) {
        Problem p = make_attn(d, rng);
        for (const char* n : {"q", "k", "v"}) p.tensors[n] = as_bf16(p[n]);
        p.tensors["lse"] = filled({d[0], d[1], d[2]}, kNaN);
        p.tensors["o"] = as_bf16(filled({d[0], d[1], d[2], d[4]}, kNaN));
        return p;
      },
      [](const OpSet& o, Problem& p) {
        const float scale = float(p.scalar("scale"));
        if (p["q"].device() != Device::CPU) {
          o.attention_forward_lse(p["q"], p["k"], p["v"], scale, p["lse"], p["o"]);
          return;
        }
        Tensor out = Tensor::zeros(p["o"].shape());
        o.attention_forward_lse(p["q"].to_f32(), p["k"].to_f32(), p["v"].to_f32(), scale,
                                p["lse"], out);
        p.tensors["o"] = as_bf16(out);
      },
      {"lse", "o"}, {kDot, kBf16Attn}, "see kBf16Attn",
      {1, 16, 512, 192, 128}, causal_flops, [](const Dims& d) { return 0.0; }, DType::BF16});

  cases.push_back(OpCase{
      "attention_backward_lse_bf16", "batch, heads, seq, qk_dim, v_dim", bf16_shapes,
      [](const Dims& d, Rng& rng) {
        Problem p = make_attn(d, rng);
        for (const char* n : {"q", "k", "v"}) p.tensors[n] = as_bf16(p[n]);
        Tensor lse = Tensor::zeros({d[0], d[1], d[2]}), o = Tensor::zeros(p["v"].shape());
        ref::attention_forward_lse(p["q"].to_f32(), p["k"].to_f32(), p["v"].to_f32(),
                                   float(p.scalar("scale")), lse, o);
        p.tensors["lse"] = lse;
        p.tensors["o"] = as_bf16(o);
        p.tensors["d_o"] = as_bf16(randn(o.shape(), rng));
        p.tensors["d_q"] = filled(p["q"].shape(), kNaN);
        p.tensors["d_k"] = filled(p["k"].shape(), kNaN);
        p.tensors["d_v"] = filled(p["v"].shape(), kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        const float scale = float(p.scalar("scale"));
        if (p["q"].device() != Device::CPU) {
          o.attention_backward_lse(p["q"], p["k"], p["v"], p["o"], p["lse"], p["d_o"], scale,
                                   p["d_q"], p["d_k"], p["d_v"]);
          return;
        }
        o.attention_backward_lse(p["q"].to_f32(), p["k"].to_f32(), p["v"].to_f32(),
                                 p["o"].to_f32(), p["lse"], p["d_o"].to_f32(), scale, p["d_q"],
                                 p["d_k"], p["d_v"]);
      },
      {"d_q", "d_k", "d_v"}, {{3e-5, 3e-5}, kBf16Attn}, "see kBf16Attn",
      {1, 16, 512, 192, 128}, [causal_flops](const Dims& d) { return 2.5 * causal_flops(d); },
      [](const Dims& d) { return 0.0; }, DType::BF16});

  // Cross-entropy: peaked rows (logits of scale 3), left-out rows (-1), the in-place form
  // (d_logits aliasing logits), the loss-only form, and masked logits (-inf: each row's first
  // 300 and every third, not the target). The GPU keeps rows of up to 256 x 32, x 64 and
  // x 128 logits in registers and reads longer ones twice: vocabularies on both sides of each
  // limit.
  cases.push_back(OpCase{
      "cross_entropy", "rows, vocab, left-out rows, in place, with gradient, masked",
      shapes({{1, 1, 0, 0, 1, 0}, {1, 7, 0, 1, 1, 0}, {5, 33, 1, 0, 1, 1}, {8, 1000, 1, 1, 1, 0},
              {17, 129, 1, 0, 0, 0}, {3, 8192, 1, 1, 1, 1}, {3, 8193, 0, 0, 1, 0},
              {2, 16385, 1, 1, 1, 0}, {3, 32768, 1, 0, 1, 1}, {3, 32769, 1, 1, 1, 0},
              {2, 40000, 0, 0, 0, 0}, {3, 40000, 1, 1, 1, 1}, {2, 33000, 0, 0, 1, 1}},
             4,
             [](Rng& r) {
               return Dims{uniform_int(r, 1, 40), uniform_int(r, 1, 3000), uniform_int(r, 0, 1),
                           uniform_int(r, 0, 1), uniform_int(r, 0, 1), uniform_int(r, 0, 1)};
             }),
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["logits"] = randn({d[0], d[1]}, rng, 3.0);
        p.tensors["targets"] = random_ids(rng, d[0], d[1], d[2] ? 4 : 0);
        if (d[5])
          for (int64_t r = 0; r < d[0]; ++r)
            for (int64_t j = 0; j < d[1]; ++j)
              if ((j < 300 || j % 3 == 0) && j != p["targets"].i32()[r])
                p["logits"].f32()[r * d[1] + j] = -INFINITY;
        p.tensors["d_logits"] =
            d[3] ? p["logits"].clone() : filled({d[0], d[1]}, d[4] ? kNaN : 0.0f);
        p.tensors["loss"] = filled({1}, kNaN);
        p.scalars["scale"] = 0.37;
        p.scalars["in_place"] = double(d[3]);
        p.scalars["with_grad"] = double(d[4]);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        const bool in_place = p.scalar("in_place") != 0, grad = p.scalar("with_grad") != 0;
        Tensor& d = p["d_logits"];
        // The loss is a host value on every backend: it replaces the (host) "loss" tensor.
        Tensor loss = Tensor::zeros({1});
        loss.f32()[0] =
            float(o.cross_entropy(in_place ? d : p["logits"], p["targets"].i32(),
                                  float(p.scalar("scale")), grad ? &d : nullptr));
        p.tensors["loss"] = loss;
      },
      {"loss", "d_logits"}, {kElementwise, kBf16Elementwise},
      "the loss sums in float64 in both; the gradient is one float32 exp per element",
      {64, 32000, 0, 0, 1, 0}, [](const Dims& d) { return 0.0; },
      [](const Dims& d) { return 8.0 * d[0] * d[1]; }});

  // Cross-entropy's row form (the training step's: each row's loss stays on the device until
  // the step's end): the same problems, the row losses compared instead of their sum.
  cases.push_back(OpCase{
      "cross_entropy_rows", "rows, vocab, left-out rows, with gradient",
      shapes({{1, 1, 0, 1}, {5, 33, 1, 1}, {17, 129, 1, 0}}, 3,
             [](Rng& r) {
               return Dims{uniform_int(r, 1, 40), uniform_int(r, 1, 3000), uniform_int(r, 0, 1),
                           uniform_int(r, 0, 1)};
             }),
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["logits"] = randn({d[0], d[1]}, rng, 3.0);
        p.tensors["targets"] = random_ids(rng, d[0], d[1], d[2] ? 4 : 0);
        p.tensors["d_logits"] = filled({d[0], d[1]}, d[3] ? kNaN : 0.0f);
        p.tensors["row_loss"] = filled({d[0]}, kNaN);
        p.scalars["scale"] = 0.37;
        p.scalars["with_grad"] = double(d[3]);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        const Tensor& logits = p["logits"];
        Tensor& d = p["d_logits"];
        // Float64 on the logits' device, as the op takes it; compared in float32 on the host.
        Tensor rows = Tensor::zeros({logits.dim(0)}, DType::F64, logits.device());
        o.cross_entropy_rows(logits, p["targets"].i32(), float(p.scalar("scale")),
                             p.scalar("with_grad") != 0 ? &d : nullptr, rows);
        const Tensor host = rows.to(Device::CPU);
        Tensor out = Tensor::zeros({logits.dim(0)});
        for (int64_t i = 0; i < out.numel(); ++i) out.f32()[i] = float(host.f64()[i]);
        p.tensors["row_loss"] = out;
      },
      {"row_loss", "d_logits"}, {kElementwise, kBf16Elementwise},
      "each row's loss in float64 on the GPU, float32 on the CPU; the gradient as cross_entropy's",
      {64, 32000, 0, 1}, [](const Dims& d) { return 0.0; },
      [](const Dims& d) { return 8.0 * d[0] * d[1]; }});

  // Embedding: ids -1 (zero row) and repeated ids (the backward's scatter-add collides).
  cases.push_back(OpCase{
      "embedding_forward", "vocab, dim, rows",
      shapes({{1, 1, 1}, {5, 17, 9}, {100, 64, 33}}, 3,
             [](Rng& r) {
               return Dims{uniform_int(r, 1, 500), uniform_int(r, 1, 300), uniform_int(r, 1, 100)};
             }),
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["table"] = randn({d[0], d[1]}, rng);
        p.tensors["ids"] = random_ids(rng, d[2], d[0], 5);
        p.tensors["out"] = filled({d[2], d[1]}, kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.embedding_forward(p["table"], p["ids"].i32(), p["ids"].numel(), p["out"]);
      },
      {"out"}, {kExact, kExact}, "a copy", {8192, 1024, 2048}, [](const Dims& d) { return 0.0; },
      [](const Dims& d) { return 8.0 * d[1] * d[2]; }});

  cases.push_back(OpCase{
      "embedding_backward", "vocab, dim, rows",
      // The CUDA kernel's blocks hold 4, 8, 16 or 32 columns per thread (dims 64 to 17000) and
      // compare ids a tile of up to 1024 rows at a time: 1000 rows in 7 ids spread each id's
      // rows over several tiles.
      shapes({{1, 1, 1}, {1, 5, 40}, {5, 17, 90}, {100, 64, 33}, {7, 64, 1000}, {3, 5000, 300},
              {3, 8500, 20}, {2, 17000, 40}},
             3,
             [](Rng& r) {
               return Dims{uniform_int(r, 1, 50), uniform_int(r, 1, 300), uniform_int(r, 1, 200)};
             }),
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["ids"] = random_ids(rng, d[2], d[0], 5);
        p.tensors["d_out"] = randn({d[2], d[1]}, rng);
        p.tensors["d_table"] = randn({d[0], d[1]}, rng);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        o.embedding_backward(p["ids"].i32(), p["ids"].numel(), p["d_out"], p["d_table"]);
      },
      {"d_table"}, {kDot, kBf16Dot}, "float32 sums of the rows sharing an id",
      {8192, 1024, 2048}, [](const Dims& d) { return 0.0; },
      [](const Dims& d) { return 12.0 * d[1] * d[2]; }});

  // out = a + b into a buffer of its own (random, so a kernel that skips an element shows), and
  // in place (out = a), as the residual stream uses both.
  for (const bool in_place : {false, true})
    cases.push_back(OpCase{
        in_place ? "add_in_place" : "add", "n", shapes({{1}, {17}, {4096}}, 2, [](Rng& r) {
          return Dims{uniform_int(r, 1, 100000)};
        }),
        [](const Dims& d, Rng& rng) {
          Problem p;
          p.tensors["a"] = randn({d[0]}, rng);
          p.tensors["b"] = randn({d[0]}, rng);
          p.tensors["out"] = randn({d[0]}, rng);
          return p;
        },
        [in_place](const OpSet& o, Problem& p) {
          if (in_place) o.add(p["a"], p["b"], p["a"]);
          else o.add(p["a"], p["b"], p["out"]);
        },
        {in_place ? "a" : "out"}, {{1.2e-7, 0}, {4e-3, 0}},
        "one rounding (float64 then float32 may differ by an ulp)", {1 << 22},
        [](const Dims& d) { return 0.0; }, [](const Dims& d) { return 12.0 * d[0]; }});

  // Head layout moves: per-head slots with padding, and the shared vector (k_pe) that every
  // head reads and whose gradient is the sum over heads. Untouched padding must survive.
  cases.push_back(OpCase{
      "tokens_to_heads", "batch, seq, heads, width, shared, tok_pad, head_pad",
      shapes({{1, 1, 1, 1, 0, 0, 0}, {2, 5, 3, 17, 1, 4, 3}, {1, 33, 4, 64, 0, 64, 0},
              {2, 9, 3, 136, 0, 8, 12}, {2, 7, 3, 64, 1, 8, 12}},
             4,
             draw_heads(false)),
      make_heads,
      [](const OpSet& o, Problem& p) {
        o.tokens_to_heads(p["tokens"].f32(), p["heads"].f32(), head_copy(p.dims));
      },
      {"heads"}, {kExact, kExact}, "a copy", {4, 256, 16, 128, 0, 64, 64},
      [](const Dims& d) { return 0.0; },
      [](const Dims& d) { return 8.0 * prod(d, {0, 1, 2, 3}); }});

  cases.push_back(OpCase{
      "heads_to_tokens", "batch, seq, heads, width, shared, tok_pad, head_pad, accumulate",
      shapes({{1, 1, 1, 1, 0, 0, 0, 0}, {2, 5, 3, 17, 1, 4, 3, 0}, {2, 5, 3, 17, 1, 4, 3, 1},
              {1, 33, 4, 64, 0, 64, 0, 1}, {2, 9, 3, 136, 0, 8, 12, 0}, {2, 9, 3, 136, 0, 8, 12, 1},
              {2, 7, 3, 64, 1, 8, 12, 0}, {2, 7, 3, 64, 1, 8, 12, 1}},
             4, draw_heads(true)),
      make_heads,
      [](const OpSet& o, Problem& p) {
        o.heads_to_tokens(p["heads"].f32(), p["tokens"].f32(), head_copy(p.dims),
                          p.scalar("accumulate") != 0);
      },
      {"tokens"}, {kElementwise, kBf16Elementwise},
      "a copy, or float32 sums over heads (shared vector, accumulate)",
      {4, 256, 16, 128, 0, 64, 64, 0}, [](const Dims& d) { return 0.0; },
      [](const Dims& d) { return 8.0 * prod(d, {0, 1, 2, 3}); }});

  auto draw_columns = [](Rng& r) {
    const int64_t width = uniform_int(r, 1, 100), offset = uniform_int(r, 0, 50);
    return Dims{uniform_int(r, 1, 60), offset + width + uniform_int(r, 0, 20), offset, width};
  };
  auto column_shapes = shapes({{1, 1, 0, 1}, {3, 17, 5, 12}, {9, 576, 512, 64}}, 3, draw_columns);
  cases.push_back(OpCase{
      "copy_columns", "rows, wide_cols, offset, width", column_shapes,
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["wide"] = randn({d[0], d[1]}, rng);
        p.tensors["narrow"] = filled({d[0], d[3]}, kNaN);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        const Dims& d = p.dims;
        o.copy_columns(p["wide"].f32(), d[1], d[2], d[3], p["narrow"].f32(), d[0]);
      },
      {"narrow"}, {kExact, kExact}, "a copy", {4096, 576, 512, 64},
      [](const Dims& d) { return 0.0; }, [](const Dims& d) { return 8.0 * d[0] * d[3]; }});

  cases.push_back(OpCase{
      "put_columns", "rows, wide_cols, offset, width", column_shapes,
      [](const Dims& d, Rng& rng) {
        Problem p;
        p.tensors["wide"] = randn({d[0], d[1]}, rng);
        p.tensors["narrow"] = randn({d[0], d[3]}, rng);
        return p;
      },
      [](const OpSet& o, Problem& p) {
        const Dims& d = p.dims;
        o.put_columns(p["narrow"].f32(), d[3], p["wide"].f32(), d[1], d[2], d[0]);
      },
      {"wide"}, {kExact, kExact}, "a copy", {4096, 576, 512, 64},
      [](const Dims& d) { return 0.0; }, [](const Dims& d) { return 8.0 * d[0] * d[3]; }});

  return cases;
}

// ---- Grad cases ----

std::vector<double> f64(const Tensor& t) { return std::vector<double>(t.f32(), t.f32() + t.numel()); }

// A wrt input's float64 value (perturbed by the harness), or any other input as float64.
std::vector<double> value(const Problem& p, const Vars& vars, const std::string& name) {
  auto it = vars.find(name);
  return it != vars.end() ? it->second : f64(p[name]);
}

double dot(const std::vector<double>& y, const Tensor& r) {
  double s = 0.0;
  for (size_t i = 0; i < y.size(); ++i) s += y[i] * double(r.f32()[i]);
  return s;
}

// For a pure data movement `move(in, out)`: the input element each output element comes from
// (-1: not written), found by moving the indices themselves (exact in float32 below 2^24).
std::vector<int64_t> source_map(int64_t n_in, int64_t n_out,
                                const std::function<void(const float*, float*)>& move) {
  std::vector<float> in(static_cast<size_t>(n_in)), out(size_t(n_out), -1.0f);
  for (int64_t i = 0; i < n_in; ++i) in[size_t(i)] = float(i);
  move(in.data(), out.data());
  return std::vector<int64_t>(out.begin(), out.end());
}

// sum r[j] * x[map[j]] over the outputs j that the move writes.
double moved_dot(const std::vector<int64_t>& map, const std::vector<double>& x, const Tensor& r) {
  double s = 0.0;
  for (size_t j = 0; j < map.size(); ++j)
    if (map[j] >= 0) s += double(r.f32()[j]) * x[size_t(map[j])];
  return s;
}

void set(Problem& p, const std::string& name, Tensor t) { p.tensors[name] = std::move(t); }

// A zero tensor shaped as t on t's device: the backward lambdas run on every backend.
Tensor zeros_like(const Tensor& t) { return Tensor::zeros(t.shape(), t.dtype(), t.device()); }

std::vector<GradCase> build_grad_cases() {
  std::vector<GradCase> cases;
  // Gradient tolerance: the analytic side is float32 (the fast backward after the fast forward),
  // the numeric side float64 central differences (error ~1e-10). 1e-4 of (|g| + rms g) leaves
  // room for float32 rounding through a forward and a backward on these small shapes.
  cases.push_back(GradCase{
      "linear", {{1, 1, 1}, {1, 3, 2}, {5, 7, 4}, {3, 33, 17}},
      [](const Dims& d, Rng& rng) {
        Problem p;
        set(p, "x", randn({d[0], d[1]}, rng));
        set(p, "w", randn({d[2], d[1]}, rng));
        set(p, "r_y", randn({d[0], d[2]}, rng));
        return p;
      },
      {"x", "w"},
      [](const Problem& p, const Vars& v) {
        const Dims& d = p.dims;
        std::vector<double> y(static_cast<size_t>(d[0] * d[2]));
        ref::t::linear_forward(value(p, v, "x").data(), value(p, v, "w").data(), d[0], d[1], d[2],
                               y.data());
        return dot(y, p["r_y"]);
      },
      [](const OpSet& o, Problem& p) {
        set(p, "d_x", zeros_like(p["x"]));
        set(p, "d_w", zeros_like(p["w"]));
        o.linear_backward(p["x"], p["w"], p["r_y"], &p["d_x"], &p["d_w"], false, true);
      }});

  cases.push_back(GradCase{
      "rmsnorm", {{1, 2}, {1, 5}, {4, 16}, {3, 37}},  // not dim 1: see rmsnorm_backward
      [](const Dims& d, Rng& rng) {
        Problem p;
        set(p, "x", randn({d[0], d[1]}, rng));
        set(p, "w", randn({d[1]}, rng));
        set(p, "r_y", randn({d[0], d[1]}, rng));
        p.scalars["eps"] = 1e-6;
        return p;
      },
      {"x", "w"},
      [](const Problem& p, const Vars& v) {
        const Dims& d = p.dims;
        std::vector<double> y(static_cast<size_t>(d[0] * d[1])), rstd(static_cast<size_t>(d[0]));
        ref::t::rmsnorm_forward(value(p, v, "x").data(), value(p, v, "w").data(), d[0], d[1],
                                p.scalar("eps"), y.data(), rstd.data());
        return dot(y, p["r_y"]);
      },
      [](const OpSet& o, Problem& p) {
        Tensor y = zeros_like(p["x"]);
        Tensor rstd = Tensor::zeros({p.dims[0]}, DType::F32, p["x"].device());
        o.rmsnorm_forward(p["x"], p["w"], float(p.scalar("eps")), y, rstd);
        set(p, "d_x", zeros_like(p["x"]));
        set(p, "d_w", zeros_like(p["w"]));
        o.rmsnorm_backward(p["x"], p["w"], rstd, p["r_y"], p["d_x"], p["d_w"], false, true);
      }});

  cases.push_back(GradCase{
      "rope", {{1, 1, 2, 0, 2, 3}, {3, 2, 12, 4, 8, 10}, {2, 3, 7, 1, 6, 5}},
      [](const Dims& d, Rng& rng) {
        Problem p = make_rope(d, rng);
        set(p, "r_x", randn(p["x"].shape(), rng));
        return p;
      },
      {"x"},
      [](const Problem& p, const Vars& v) {
        std::vector<double> x = value(p, v, "x");
        ref::t::rope(x.data(), rope_slice(p), p["positions"].i32(), p["cos"].f32(),
                     p["sin"].f32(), p["cos"].dim(0), false);
        return dot(x, p["r_x"]);
      },
      [](const OpSet& o, Problem& p) {
        // The rotation is applied in place: its gradient is the cotangent rotated back.
        set(p, "d_x", p["r_x"].clone());
        o.rope_backward(p["d_x"].f32(), rope_slice(p), p["positions"].i32(), p["cos"], p["sin"]);
      }});

  cases.push_back(GradCase{
      "swiglu", {{1, 1}, {3, 5}, {4, 17}},
      [](const Dims& d, Rng& rng) {
        Problem p;
        set(p, "gate_up", randn({d[0], 2 * d[1]}, rng, 2.0));
        set(p, "r_h", randn({d[0], d[1]}, rng));
        return p;
      },
      {"gate_up"},
      [](const Problem& p, const Vars& v) {
        std::vector<double> h(static_cast<size_t>(p.dims[0] * p.dims[1]));
        ref::t::swiglu_forward(value(p, v, "gate_up").data(), p.dims[0], p.dims[1], h.data());
        return dot(h, p["r_h"]);
      },
      [](const OpSet& o, Problem& p) {
        set(p, "d_gate_up", zeros_like(p["gate_up"]));
        o.swiglu_backward(p["gate_up"], p["r_h"], p["d_gate_up"]);
      }});

  cases.push_back(GradCase{
      "attention", {{1, 1, 1, 3, 2}, {1, 2, 4, 5, 3}, {2, 1, 6, 4, 4}, {1, 1, 9, 16, 7}},
      [](const Dims& d, Rng& rng) {
        Problem p = make_attn(d, rng);
        set(p, "r_o", randn({d[0], d[1], d[2], d[4]}, rng));
        return p;
      },
      {"q", "k", "v"},
      [](const Problem& p, const Vars& v) {
        const Dims& d = p.dims;
        const int64_t bh = d[0] * d[1], s = d[2];
        std::vector<double> probs(static_cast<size_t>(bh * s * s)), o(static_cast<size_t>(bh * s * d[4]));
        ref::t::attention_forward(value(p, v, "q").data(), value(p, v, "k").data(),
                                  value(p, v, "v").data(), bh, s, d[3], d[4],
                                  float(p.scalar("scale")), probs.data(), o.data());
        return dot(o, p["r_o"]);
      },
      [](const OpSet& o, Problem& p) {
        const Dims& d = p.dims;
        const float scale = float(p.scalar("scale"));
        Tensor probs = Tensor::zeros({d[0], d[1], d[2], d[2]}, DType::F32, p["q"].device());
        Tensor out = zeros_like(p["v"]), scratch = zeros_like(probs);
        o.attention_forward(p["q"], p["k"], p["v"], scale, probs, out);
        set(p, "d_q", zeros_like(p["q"]));
        set(p, "d_k", zeros_like(p["k"]));
        set(p, "d_v", zeros_like(p["v"]));
        o.attention_backward(p["q"], p["k"], p["v"], probs, p["r_o"], scale, scratch, p["d_q"],
                             p["d_k"], p["d_v"]);
      }});

  // The lse form, forward then backward on each backend. Seq 1 (one key: the gradients of q
  // and k are exactly zero, and so must the analytic ones be) and seq 37 (two GPU tiles).
  cases.push_back(GradCase{
      "attention_lse",
      {{1, 1, 1, 3, 2}, {1, 2, 4, 5, 3}, {2, 1, 6, 4, 4}, {1, 1, 9, 16, 7}, {1, 1, 37, 6, 5}},
      [](const Dims& d, Rng& rng) {
        Problem p = make_attn(d, rng);
        set(p, "r_o", randn({d[0], d[1], d[2], d[4]}, rng));
        return p;
      },
      {"q", "k", "v"},
      [](const Problem& p, const Vars& v) {
        const Dims& d = p.dims;
        const int64_t bh = d[0] * d[1], s = d[2];
        std::vector<double> lse(static_cast<size_t>(bh * s)), o(static_cast<size_t>(bh * s * d[4]));
        ref::t::attention_forward_lse(value(p, v, "q").data(), value(p, v, "k").data(),
                                      value(p, v, "v").data(), bh, s, d[3], d[4],
                                      float(p.scalar("scale")), lse.data(), o.data());
        return dot(o, p["r_o"]);
      },
      [](const OpSet& o, Problem& p) {
        const Dims& d = p.dims;
        const float scale = float(p.scalar("scale"));
        Tensor lse = Tensor::zeros({d[0], d[1], d[2]}, DType::F32, p["q"].device());
        Tensor out = zeros_like(p["v"]);
        o.attention_forward_lse(p["q"], p["k"], p["v"], scale, lse, out);
        set(p, "d_q", zeros_like(p["q"]));
        set(p, "d_k", zeros_like(p["k"]));
        set(p, "d_v", zeros_like(p["v"]));
        o.attention_backward_lse(p["q"], p["k"], p["v"], out, lse, p["r_o"], scale, p["d_q"],
                                 p["d_k"], p["d_v"]);
      }});

  cases.push_back(GradCase{
      "cross_entropy", {{1, 1}, {1, 5}, {6, 11}, {4, 40}},
      [](const Dims& d, Rng& rng) {
        Problem p;
        set(p, "logits", randn({d[0], d[1]}, rng, 2.0));
        set(p, "targets", random_ids(rng, d[0], d[1], 4));
        p.scalars["scale"] = 0.37;
        return p;
      },
      {"logits"},
      [](const Problem& p, const Vars& v) {
        return p.scalar("scale") * ref::t::cross_entropy(value(p, v, "logits").data(), p.dims[0],
                                                         p.dims[1], p["targets"].i32(), 1.0,
                                                         static_cast<double*>(nullptr));
      },
      [](const OpSet& o, Problem& p) {
        set(p, "d_logits", zeros_like(p["logits"]));
        o.cross_entropy(p["logits"], p["targets"].i32(), float(p.scalar("scale")),
                        &p["d_logits"]);
      }});

  cases.push_back(GradCase{
      "embedding", {{1, 1, 1}, {3, 4, 10}, {7, 5, 6}},
      [](const Dims& d, Rng& rng) {
        Problem p;
        set(p, "table", randn({d[0], d[1]}, rng));
        set(p, "ids", random_ids(rng, d[2], d[0], 4));
        set(p, "r_out", randn({d[2], d[1]}, rng));
        return p;
      },
      {"table"},
      [](const Problem& p, const Vars& v) {
        const Dims& d = p.dims;
        std::vector<double> out(static_cast<size_t>(d[2] * d[1]));
        ref::t::embedding_forward(value(p, v, "table").data(), d[0], d[1], p["ids"].i32(), d[2],
                                  out.data());
        return dot(out, p["r_out"]);
      },
      [](const OpSet& o, Problem& p) {
        set(p, "d_table", zeros_like(p["table"]));
        o.embedding_backward(p["ids"].i32(), p.dims[2], p["r_out"], p["d_table"]);
      }});

  // The layout moves' adjoints: heads_to_tokens with accumulate is the backward of
  // tokens_to_heads (a sum over heads for the shared vector), put_columns of copy_columns.
  cases.push_back(GradCase{
      "tokens_to_heads", {{1, 2, 3, 4, 0, 2, 1}, {2, 3, 4, 5, 1, 3, 2}},
      [](const Dims& d, Rng& rng) {
        Problem p = make_heads(d, rng);
        set(p, "r_heads", randn(p["heads"].shape(), rng));
        return p;
      },
      {"tokens"},
      [](const Problem& p, const Vars& v) {
        const auto map = source_map(p["tokens"].numel(), p["heads"].numel(),
                                    [&](const float* in, float* out) {
                                      ref::tokens_to_heads(in, out, head_copy(p.dims));
                                    });
        return moved_dot(map, value(p, v, "tokens"), p["r_heads"]);
      },
      [](const OpSet& o, Problem& p) {
        set(p, "d_tokens", zeros_like(p["tokens"]));
        o.heads_to_tokens(p["r_heads"].f32(), p["d_tokens"].f32(), head_copy(p.dims), true);
      }});

  cases.push_back(GradCase{
      "copy_columns", {{1, 1, 0, 1}, {3, 9, 2, 4}},
      [](const Dims& d, Rng& rng) {
        Problem p;
        set(p, "wide", randn({d[0], d[1]}, rng));
        set(p, "r_narrow", randn({d[0], d[3]}, rng));
        return p;
      },
      {"wide"},
      [](const Problem& p, const Vars& v) {
        const Dims& d = p.dims;
        const auto map = source_map(d[0] * d[1], d[0] * d[3], [&](const float* in, float* out) {
          ref::copy_columns(in, d[1], d[2], d[3], out, d[0]);
        });
        return moved_dot(map, value(p, v, "wide"), p["r_narrow"]);
      },
      [](const OpSet& o, Problem& p) {
        const Dims& d = p.dims;
        set(p, "d_wide", zeros_like(p["wide"]));
        o.put_columns(p["r_narrow"].f32(), d[3], p["d_wide"].f32(), d[1], d[2], d[0]);
      }});
  return cases;
}

}  // namespace

const std::vector<GradCase>& grad_cases() {
  static const std::vector<GradCase> cases = [] {
    std::vector<GradCase> all = build_grad_cases();
    for (GradCase& c : moe_grad_cases()) all.push_back(std::move(c));
    return all;
  }();
  return cases;
}

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases = [] {
    std::vector<OpCase> all = build_op_cases();
    for (OpCase& c : moe_optimizer_op_cases()) all.push_back(std::move(c));
    for (OpCase& c : grouped_linear_op_cases()) all.push_back(std::move(c));
    return all;
  }();
  return cases;
}

}  // namespace dsv3::optest
