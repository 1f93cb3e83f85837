// Grouped linear products over groups cut into padded chunks (grouped_padded.h).
#include "kernels/cuda/grouped_padded.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <optional>

#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/scratch.h"

namespace dsv3::cuda {
namespace {

// The chunks of the groups with rows, in order.
struct Plan {
  int64_t height = 0;            // rows of every chunk (its group's rows, then zero rows)
  std::vector<size_t> group;     // [chunks]: the group of each chunk
  std::vector<int64_t> starts;   // [chunks + 1]: compact row where each begins, then the end
  // Chunks the buffers are sized for: the most `rows` rows in `groups` groups can need, so each
  // step asks the ops' scratch for the same sizes whatever the routing (scratch.h: it then stops
  // growing after the first step).
  int64_t buffer_chunks = 0;
};

std::optional<Plan> plan_chunks(const std::vector<const Tensor*>& w, const int64_t* offsets,
                                int64_t rows) {
  if (rows == 0 || w[0]->dtype() != DType::BF16 || !pad_groups_for_gemm()) return std::nullopt;
  Plan p;
  p.height = grouped_chunk_rows();
  for (size_t g = 0; g < w.size(); ++g)
    for (int64_t r = offsets[g]; r < offsets[g + 1]; r += p.height) {
      p.group.push_back(g);
      p.starts.push_back(r);  // chunk ends are the next chunk's start: the rows are contiguous
    }
  p.starts.push_back(rows);
  p.buffer_chunks = (rows + p.height - 1) / p.height + int64_t(w.size());
  return p;
}

// The chunk starts on the device, and the layout of a padded buffer of `cols` columns.
class DeviceChunks {
 public:
  DeviceChunks(const Plan& p, const char* what)
      : starts_(size_t(p.buffer_chunks + 1) * sizeof(int64_t), what), plan_(p) {
    check(cudaMemcpyAsync(starts_.as<int64_t>(), p.starts.data(), p.starts.size() * sizeof(int64_t),
                          cudaMemcpyHostToDevice, stream()),
          what);
  }
  GroupPadding layout(int64_t cols) const {
    return {starts_.as<const int64_t>(), int64_t(plan_.group.size()), plan_.height, cols};
  }

 private:
  Scratch starts_;
  const Plan& plan_;
};

// Bytes of a padded buffer [buffer_chunks * height, cols] of `elem`-byte values.
size_t padded_bytes(const Plan& p, int64_t cols, size_t elem) {
  return size_t(p.buffer_chunks * p.height * cols) * elem;
}

// out [chunks * height, cols] = the padded chunks of src (float32, or BF16), in BF16.
void pad(const Tensor& src, const GroupPadding& layout, const Scratch& out, const char* what) {
  PadGroups a{layout, nullptr, nullptr, out.as<uint16_t>()};
  if (src.dtype() == DType::BF16) a.src_bf16 = static_cast<const uint16_t*>(src.data());
  else a.src = src.f32();
  check(pad_groups(a, stream()), what);
}

// The batched product over chunks: out_j [height, n] = a_j [height, k] op(W_{group j}), with
// op the transpose for the forward (W [n, k]) and none for the input gradient (W [k, n]);
// a_j and out_j are chunk j of the padded buffers.
void chunk_products(const Plan& p, const std::vector<const Tensor*>& w, const Scratch& a,
                    int64_t k, bool transpose_w, const Scratch& out, int64_t n,
                    const char* what) {
  BlasGroupedGemm g;
  g.trans_b = transpose_w;
  g.lda = k;
  g.ldb = transpose_w ? k : n;
  g.ldc = n;
  g.ab_type = CUDA_R_16BF;
  g.c_type = CUDA_R_32F;
  for (size_t j = 0; j < p.group.size(); ++j) {
    g.m.push_back(p.height);
    g.n.push_back(n);
    g.k.push_back(k);
    g.a.push_back(a.as<const uint16_t>() + int64_t(j) * p.height * k);
    g.b.push_back(w[p.group[j]]->data());
    g.c.push_back(out.as<float>() + int64_t(j) * p.height * n);
  }
  blas_batched_gemm(g, what, size_t(p.buffer_chunks));
}

}  // namespace

bool grouped_linear_forward_padded(const Tensor& x, const std::vector<const Tensor*>& w,
                                   const int64_t* offsets, int64_t rows, Tensor& y) {
  const char* what = "grouped_linear_forward";
  const std::optional<Plan> p = plan_chunks(w, offsets, rows);
  if (!p) return false;
  const int64_t in = w[0]->dim(1), out = w[0]->dim(0);
  const DeviceChunks chunks(*p, what);
  const Scratch x_pad(padded_bytes(*p, in, 2), what);    // [chunks * height, in] BF16
  const Scratch y_pad(padded_bytes(*p, out, 4), what);   // [chunks * height, out] float32
  pad(x, chunks.layout(in), x_pad, what);
  chunk_products(*p, w, x_pad, in, true, y_pad, out, what);  // y_j = x_j W^T
  check(unpad_groups({chunks.layout(out), y_pad.as<const float>(), y.f32()}, stream()), what);
  return true;
}

bool grouped_linear_backward_padded(const Tensor& d_y, const std::vector<const Tensor*>& w,
                                    const int64_t* offsets, int64_t rows, Tensor& d_x) {
  const char* what = "grouped_linear_backward";
  const std::optional<Plan> p = plan_chunks(w, offsets, rows);
  if (!p) return false;
  const int64_t in = w[0]->dim(1), out = w[0]->dim(0);
  const DeviceChunks chunks(*p, what);
  const Scratch d_y_pad(padded_bytes(*p, out, 2), what);  // [chunks * height, out] BF16
  const Scratch d_x_pad(padded_bytes(*p, in, 4), what);   // [chunks * height, in] float32
  pad(d_y, chunks.layout(out), d_y_pad, what);
  chunk_products(*p, w, d_y_pad, out, false, d_x_pad, in, what);  // d_x_j = d_y_j W
  check(unpad_groups({chunks.layout(in), d_x_pad.as<const float>(), d_x.f32()}, stream()), what);
  return true;
}

}  // namespace dsv3::cuda
