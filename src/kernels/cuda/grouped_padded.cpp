// Grouped linear products over groups cut into chunks, whole chunks in place and the tails
// padded (grouped_padded.h).
#include "kernels/cuda/grouped_padded.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <optional>

#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/scratch.h"

namespace dsv3::cuda {
namespace {

// The products, one per chunk: the whole chunks of every group, then the groups' tails.
struct Plan {
  int64_t height = 0;                // rows of every product (a tail's rows, then zero rows)
  std::vector<size_t> group;         // [products]: the group of each product
  std::vector<int64_t> start;        // [products]: the compact row of a whole chunk's first
  size_t whole = 0;                  // products [0, whole) are whole chunks; the rest tails
  std::vector<int64_t> tail_bounds;  // [2 * tails]: the compact rows [begin, end) of each tail
  // The most products and tails `rows` rows in `groups` groups can need: the buffers are sized
  // for them, so each step asks the ops' scratch for the same sizes whatever the routing
  // (scratch.h: it then stops growing after the first step).
  int64_t max_products = 0, max_tails = 0;

  size_t tails() const { return group.size() - whole; }
};

std::optional<Plan> plan_chunks(const std::vector<const Tensor*>& w, const int64_t* offsets,
                                int64_t rows) {
  if (rows == 0 || w[0]->dtype() != DType::BF16 || !pad_groups_for_gemm()) return std::nullopt;
  Plan p;
  p.height = grouped_chunk_rows();
  std::vector<size_t> tail_group;
  for (size_t g = 0; g < w.size(); ++g) {
    const int64_t begin = offsets[g], end = offsets[g + 1];
    const int64_t whole_end = begin + (end - begin) / p.height * p.height;
    for (int64_t r = begin; r < whole_end; r += p.height) {
      p.group.push_back(g);
      p.start.push_back(r);
    }
    if (whole_end < end) {
      tail_group.push_back(g);
      p.tail_bounds.push_back(whole_end);
      p.tail_bounds.push_back(end);
    }
  }
  p.whole = p.group.size();
  p.group.insert(p.group.end(), tail_group.begin(), tail_group.end());
  p.max_tails = std::min<int64_t>(int64_t(w.size()), rows);  // a tail has at least one row
  p.max_products = rows / p.height + p.max_tails;
  return p;
}

// The tails' bounds on the device, and the layout of a tail buffer of `cols` columns.
class DeviceTails {
 public:
  DeviceTails(const Plan& p, const char* what)
      : bounds_(size_t(2 * p.max_tails) * sizeof(int64_t), what), plan_(p) {
    if (p.tails() == 0) return;
    check(cudaMemcpyAsync(bounds_.as<int64_t>(), p.tail_bounds.data(),
                          p.tail_bounds.size() * sizeof(int64_t), cudaMemcpyHostToDevice, stream()),
          what);
  }
  GroupPadding layout(int64_t cols) const {
    return {bounds_.as<const int64_t>(), int64_t(plan_.tails()), plan_.height, cols};
  }

 private:
  Scratch bounds_;
  const Plan& plan_;
};

// Bytes of a tail buffer [max_tails * height, cols] of `elem`-byte values.
size_t tail_bytes(const Plan& p, int64_t cols, size_t elem) {
  return size_t(p.max_tails * p.height * cols) * elem;
}

// The batched product over chunks: out_j [height, n] = a_j [height, k] op(W_{group j}), with
// op the transpose for the forward (W [n, k]) and none for the input gradient (W [k, n]).
// A whole chunk's a_j and out_j are its rows of the compact a [rows, k] and out [rows, n]; a
// tail's are its chunk of the tail buffers a_tails [tails * height, k], out_tails [.., n].
void chunk_products(const Plan& p, const std::vector<const Tensor*>& w, const uint16_t* a,
                    const uint16_t* a_tails, int64_t k, bool transpose_w, const GroupedOutput& out,
                    void* out_tails, int64_t n, const char* what) {
  BlasGroupedGemm g;
  g.trans_b = transpose_w;
  g.lda = k;
  g.ldb = transpose_w ? k : n;
  g.ldc = n;
  g.ab_type = CUDA_R_16BF;
  g.c_type = out.bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const auto row = [&](void* base, int64_t r) {
    return static_cast<char*>(base) + size_t(r * n) * size_t(out.elem_bytes());
  };
  for (size_t j = 0; j < p.group.size(); ++j) {
    const bool whole = j < p.whole;
    const int64_t tail = int64_t(j) - int64_t(p.whole);
    g.m.push_back(p.height);
    g.n.push_back(n);
    g.k.push_back(k);
    g.a.push_back(whole ? a + p.start[j] * k : a_tails + tail * p.height * k);
    g.b.push_back(w[p.group[j]]->data());
    g.c.push_back(whole ? row(out.data, p.start[j]) : row(out_tails, tail * p.height));
  }
  blas_batched_gemm(g, what, size_t(p.max_products));
}

// out [rows, n] = a [rows, k] op(W_g) per group, as chunk_products over the plan's chunks with
// the tails padded on the way in and copied back on the way out.
void padded_products(const Plan& p, const std::vector<const Tensor*>& w, const void* a_in,
                     int64_t k, bool transpose_w, const GroupedOutput& out, int64_t n,
                     const char* what) {
  const uint16_t* a = static_cast<const uint16_t*>(a_in);
  const int elem = out.elem_bytes();
  const DeviceTails tails(p, what);
  const Scratch a_tails(tail_bytes(p, k, 2), what);       // [max_tails * height, k] BF16
  const Scratch out_tails(tail_bytes(p, n, elem), what);  // [max_tails * height, n] as out
  check(pad_groups({tails.layout(k), a, a_tails.as<uint16_t>()}, stream()), what);
  chunk_products(p, w, a, a_tails.as<const uint16_t>(), k, transpose_w, out,
                 out_tails.as<void>(), n, what);
  check(unpad_groups({tails.layout(n), out_tails.as<const void>(), out.data, elem}, stream()),
        what);
}

}  // namespace

bool grouped_linear_forward_padded(const void* x, const std::vector<const Tensor*>& w,
                                   const int64_t* offsets, int64_t rows, const GroupedOutput& y) {
  const std::optional<Plan> p = plan_chunks(w, offsets, rows);
  if (!p) return false;
  const int64_t in = w[0]->dim(1), out = w[0]->dim(0);
  padded_products(*p, w, x, in, true, y, out, "grouped_linear_forward");  // y_j = x_j W^T
  return true;
}

bool grouped_linear_backward_padded(const void* d_y, const std::vector<const Tensor*>& w,
                                    const int64_t* offsets, int64_t rows,
                                    const GroupedOutput& d_x) {
  const std::optional<Plan> p = plan_chunks(w, offsets, rows);
  if (!p) return false;
  const int64_t in = w[0]->dim(1), out = w[0]->dim(0);
  padded_products(*p, w, d_y, out, false, d_x, in, "grouped_linear_backward");  // d_x_j = d_y_j W
  return true;
}

}  // namespace dsv3::cuda
