// Op cases for the grouped linear ops (kernels/ops.h), in the test and perf modes of
// op_cases.cpp (see kernels/op_cases.h). Their gradients are those of linear_forward, which the
// grad mode already checks; these cases check that each group reads and writes its own rows,
// weight and gradient, and nothing else.
//
// Dims: in, out, [with d_x,] then one row count per group, so a shape lists its groups: single
// groups, empty groups (their d_w must stay as it was), groups of one row, and random draws of
// up to 40 groups with about one in four empty. All G weights are one tensor [G * out, in] and
// the gradients one [G * out, in], viewed per group, so that every case has the same named
// outputs whatever its G.
#include <limits>

#include "kernels/op_cases.h"

namespace dsv3::optest {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Row counts start at dims[first].
std::vector<int64_t> group_offsets(const Dims& d, size_t first) {
  std::vector<int64_t> off{0};
  for (size_t i = first; i < d.size(); ++i) off.push_back(off.back() + d[i]);
  return off;
}

template <typename T>
std::vector<T*> group_views(Tensor& all, int64_t groups, int64_t out, std::vector<Tensor>& keep) {
  keep.clear();
  keep.reserve(size_t(groups));
  std::vector<T*> ptrs;
  for (int64_t g = 0; g < groups; ++g) {
    keep.push_back(all.slice_rows(g * out, (g + 1) * out));
    ptrs.push_back(&keep.back());
  }
  return ptrs;
}

// `lead` fixed dims, then random group sizes (at least one row in all).
Dims draw_groups(Rng& r, Dims lead) {
  const int64_t groups = uniform_int(r, 1, 40);
  int64_t total = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t rows = uniform_int(r, 0, 3) == 0 ? 0 : uniform_int(r, 1, 40);
    lead.push_back(rows);
    total += rows;
  }
  if (total == 0) lead.back() = 1;
  return lead;
}

int64_t total_rows(const Dims& d, size_t first) { return group_offsets(d, first).back(); }

// A BF16 copy of a float32 host tensor (round to nearest even).
Tensor as_bf16(const Tensor& t) {
  Tensor b = Tensor::zeros(t.shape(), DType::BF16);
  convert_from_f32(t.f32(), DType::BF16, b.data(), size_t(t.numel()));
  return b;
}

// The weights the op is given. Mixed precision is a device mode: on the CPU (and for the
// reference) the BF16 weights are widened to float32, exactly, and the op runs in float32.
Tensor weights_for(const Tensor& w) {
  return w.dtype() == DType::BF16 && w.device() == Device::CPU ? w.to_f32() : w;
}

Problem make_forward(const Dims& d, Rng& rng, bool bf16_w) {
  const int64_t in = d[0], out = d[1], groups = int64_t(d.size()) - 2, rows = total_rows(d, 2);
  Problem p;
  p.tensors["x"] = randn({rows, in}, rng);
  Tensor w = randn({groups * out, in}, rng);
  p.tensors["w"] = bf16_w ? as_bf16(w) : w;
  p.tensors["y"] = filled({rows, out}, kNaN);
  return p;
}

void run_forward(const OpSet& o, Problem& p) {
  const Dims& d = p.dims;
  const int64_t out = d[1], groups = int64_t(d.size()) - 2;
  Tensor w = weights_for(p["w"]);
  std::vector<Tensor> keep;
  const std::vector<const Tensor*> ws = group_views<const Tensor>(w, groups, out, keep);
  const std::vector<int64_t> off = group_offsets(d, 2);
  o.grouped_linear_forward(p["x"], ws, off.data(), p["y"]);
}

// Backward dims: in, out, with d_x, accumulate d_w, then the rows of each group.
constexpr size_t kBackwardGroupsFrom = 4;

Problem make_backward(const Dims& d, Rng& rng, bool bf16_w) {
  const int64_t in = d[0], out = d[1], groups = int64_t(d.size() - kBackwardGroupsFrom),
                rows = total_rows(d, kBackwardGroupsFrom);
  Problem p;
  p.tensors["x"] = randn({rows, in}, rng);
  Tensor w = randn({groups * out, in}, rng);
  p.tensors["w"] = bf16_w ? as_bf16(w) : w;
  p.tensors["d_y"] = randn({rows, out}, rng);
  // d_x overwritten (NaN) or not asked for (must stay zero); d_w accumulated into (left as it
  // is for empty groups) or overwritten (NaN, the stale gradient of a step's first write:
  // zeroed for empty groups).
  p.tensors["d_x"] = filled({rows, in}, d[2] ? kNaN : 0.0f);
  p.tensors["d_w"] = d[3] ? randn({groups * out, in}, rng) : filled({groups * out, in}, kNaN);
  return p;
}

void run_backward(const OpSet& o, Problem& p) {
  const Dims& d = p.dims;
  const int64_t out = d[1], groups = int64_t(d.size() - kBackwardGroupsFrom);
  Tensor w = weights_for(p["w"]);
  std::vector<Tensor> keep_w, keep_dw;
  const std::vector<const Tensor*> ws = group_views<const Tensor>(w, groups, out, keep_w);
  const std::vector<Tensor*> dws = group_views<Tensor>(p["d_w"], groups, out, keep_dw);
  const std::vector<int64_t> off = group_offsets(d, kBackwardGroupsFrom);
  o.grouped_linear_backward(p["x"], ws, p["d_y"], off.data(), d[2] ? &p["d_x"] : nullptr, dws,
                            d[3] != 0);
}

double forward_flops(const Dims& d) { return 2.0 * total_rows(d, 2) * d[0] * d[1]; }
double backward_flops(const Dims& d) {
  return 4.0 * total_rows(d, kBackwardGroupsFrom) * d[0] * d[1];
}

}  // namespace

std::vector<OpCase> grouped_linear_op_cases() {
  std::vector<OpCase> cases;
  // A sum of `in` (y, d_w: rows of the group) float32 products, as linear_forward's case.
  const Tolerance kDot{1e-5, 1e-5};
  // Mixed precision: the device rounds x and d_y to BF16 (at most 2^-8 relative per value) and
  // sums in float32, against the float64 reference on the float32 x and d_y and the same BF16
  // weights: the roundings add up like a random walk to about 0.3% of the output's rms. 3e-2
  // leaves ten times that (linear_forward's BF16 tolerance); a wrong group's rows or weight
  // moves an element by its own size.
  const Tolerance kBf16Dot{3e-2, 3e-2};
  // A wide MoE layer's expert projection: 32 experts of uneven load, a 1024-wide hidden state.
  Dims bench_fwd{1024, 512};
  for (int g = 0; g < 32; ++g) bench_fwd.push_back(64 + 16 * (g % 9) + (g % 5 == 0 ? 0 : 8));
  Dims bench_bwd{1024, 512, 1, 1};
  bench_bwd.insert(bench_bwd.end(), bench_fwd.begin() + 2, bench_fwd.end());

  auto fwd_shapes =
      shapes({{1, 1, 1},
              {7, 5, 3},
              {129, 47, 61},
              {17, 33, 0, 4, 0, 9},
              {64, 48, 5, 0, 0, 11, 1, 0, 30},
              {16, 16, 0, 0, 0, 0, 1}},
             4, [](Rng& r) {
               return draw_groups(r, {uniform_int(r, 1, 300), uniform_int(r, 1, 300)});
             });
  auto bwd_shapes = shapes({{1, 1, 1, 1, 1},
                            {7, 5, 0, 0, 3},
                            {129, 47, 1, 1, 61},
                            {17, 33, 1, 1, 0, 4, 0, 9},
                            {17, 33, 1, 0, 0, 4, 0, 9},
                            {64, 48, 0, 1, 5, 0, 0, 11, 1, 0, 30},
                            {64, 48, 1, 0, 5, 0, 0, 11, 1, 0, 30},
                            {16, 16, 1, 0, 0, 0, 0, 0, 1}},
                           4, [](Rng& r) {
                             return draw_groups(r, {uniform_int(r, 1, 300), uniform_int(r, 1, 300),
                                                    uniform_int(r, 0, 1), uniform_int(r, 0, 1)});
                           });
  const auto fwd_bytes = [](const Dims& d) {
    const double groups = double(d.size()) - 2;
    return 4.0 * (total_rows(d, 2) * (d[0] + d[1]) + groups * d[0] * d[1]);
  };
  const auto bwd_bytes = [](const Dims& d) {
    const double groups = double(d.size() - kBackwardGroupsFrom);
    return 4.0 * (total_rows(d, kBackwardGroupsFrom) * 2 * (d[0] + d[1]) +
                  (2 + d[3]) * groups * d[0] * d[1]);
  };

  cases.push_back(OpCase{"grouped_linear_forward",
                         "in, out, rows of each group",
                         fwd_shapes,
                         [](const Dims& d, Rng& rng) { return make_forward(d, rng, false); },
                         run_forward,
                         {"y"},
                         {kDot, kBf16Dot},
                         "a sum of `in` products",
                         bench_fwd,
                         forward_flops,
                         fwd_bytes});
  cases.push_back(OpCase{"grouped_linear_backward",
                         "in, out, with d_x, accumulate d_w, rows of each group",
                         bwd_shapes,
                         [](const Dims& d, Rng& rng) { return make_backward(d, rng, false); },
                         run_backward,
                         {"d_x", "d_w"},
                         {kDot, kBf16Dot},
                         "sums of `out` (d_x) and a group's rows (d_w) products",
                         bench_bwd,
                         backward_flops,
                         bwd_bytes});
  cases.push_back(OpCase{"grouped_linear_forward_bf16w",
                         "in, out, rows of each group",
                         fwd_shapes,
                         [](const Dims& d, Rng& rng) { return make_forward(d, rng, true); },
                         run_forward,
                         {"y"},
                         {kDot, kBf16Dot},
                         "x rounded to BF16 on a device (see kBf16Dot)",
                         bench_fwd,
                         forward_flops,
                         fwd_bytes,
                         DType::BF16});
  cases.push_back(OpCase{"grouped_linear_backward_bf16w",
                         "in, out, with d_x, accumulate d_w, rows of each group",
                         bwd_shapes,
                         [](const Dims& d, Rng& rng) { return make_backward(d, rng, true); },
                         run_backward,
                         {"d_x", "d_w"},
                         {kDot, kBf16Dot},
                         "x and d_y rounded to BF16 on a device (see kBf16Dot)",
                         bench_bwd,
                         backward_flops,
                         bwd_bytes,
                         DType::BF16});
  return cases;
}

}  // namespace dsv3::optest
