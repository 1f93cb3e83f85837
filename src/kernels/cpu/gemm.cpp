// GEMM on the CPU through oneDNN's sgemm (row-major), and the linear layer built on it.
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/device.h"
#include "core/threads.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
#include "kernels/reference.h"

namespace dsv3::ops {

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (device::is_cuda_pointer(c))  // raw pointers: dispatch on where C lives
    return cuda_ops::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b,
                                ldb, beta, c, ldc);
  DSV3_CHECK(st == dnnl_success, "gemm {}x{}x{} failed in oneDNN (status {})", m, n, k, int(st));
}

double measure_gemm_gflops() {
  // Large enough to keep every thread busy (512 measured 70 GFLOP/s on 16 cores, far under what
  // the training step itself reached), small enough to stay a short pause at start-up on few
  // cores (every start and resume of a run measures it).
  const int64_t n = num_threads() > 4 ? 1024 : 512;
  std::vector<float> a(size_t(n * n), 0.5f), b(size_t(n * n), 0.25f), c(size_t(n * n));
  gemm(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);  // warm-up
  // The best of several: other work on the machine only ever makes a repetition slower.
  double best = 0;
  for (int rep = 0; rep < 8; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    gemm(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * double(n * n * n) / s / 1e9);
  }
  return best;
}

static void check_linear(const Tensor& x, const Tensor& w, int64_t rows, const char* what) {
  DSV3_CHECK(x.device() == Device::CPU && w.device() == Device::CPU,
             "{}: x is on {} and W on {} (both must be on one device)", what,
             device_name(x.device()), device_name(w.device()));
  DSV3_CHECK(w.ndim() == 2 && x.numel() == rows * w.dim(1), "{}: x {} does not match W {}", what,
             x.shape().str(), w.shape().str());
}

void linear_forward(const Tensor& x, const Tensor& w, Tensor& y) {
  if (x.dtype() == DType::F64) return ref::linear_forward(x, w, y);
  if (x.device() == Device::CUDA) return cuda_ops::linear_forward(x, w, y);
  int64_t in = w.dim(1), out = w.dim(0);
  int64_t rows = in ? x.numel() / in : 0;
  check_linear(x, w, rows, "linear_forward");
  DSV3_CHECK(y.numel() == rows * out, "linear_forward: y {} is not [{}, {}]", y.shape().str(), rows,
             out);
  gemm(false, true, rows, out, in, 1.0f, x.f32(), in, w.f32(), in, 0.0f, y.f32(), out);
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& d_y, Tensor* d_x, Tensor* d_w,
                     bool accumulate_d_x, bool accumulate_d_w) {
  if (x.dtype() == DType::F64)
    return ref::linear_backward(x, w, d_y, d_x, d_w, accumulate_d_x, accumulate_d_w);
  if (x.device() == Device::CUDA)
    return cuda_ops::linear_backward(x, w, d_y, d_x, d_w, accumulate_d_x, accumulate_d_w);
  int64_t in = w.dim(1), out = w.dim(0);
  int64_t rows = in ? x.numel() / in : 0;
  check_linear(x, w, rows, "linear_backward");
  if (d_x)
    gemm(false, false, rows, in, out, 1.0f, d_y.f32(), out, w.f32(), in,
         accumulate_d_x ? 1.0f : 0.0f, d_x->f32(), in);
  if (d_w)
    gemm(true, false, out, in, rows, 1.0f, d_y.f32(), out, x.f32(), in,
         accumulate_d_w ? 1.0f : 0.0f, d_w->f32(), in);
}

namespace {
void check_groups(const std::vector<const Tensor*>& w, const int64_t* offsets, int64_t rows,
                  const char* what) {
  DSV3_CHECK(!w.empty() && offsets != nullptr && offsets[0] == 0 && offsets[w.size()] == rows,
             "{}: {} groups whose offsets do not cover the {} rows of x", what, w.size(), rows);
  for (size_t g = 0; g < w.size(); ++g)
    DSV3_CHECK(offsets[g + 1] >= offsets[g] && w[g] && w[g]->shape() == w[0]->shape(),
               "{}: group {} has a decreasing offset or a weight of another shape", what, g);
}
}  // namespace

// The groups run in parallel, each GEMM on one thread (oneDNN does not nest inside the
// parallel region): the per-expert loop the MoE layer ran before these ops existed, so the
// results are bit for bit those of linear_forward/linear_backward on each group.
void grouped_linear_forward(const Tensor& x, const std::vector<const Tensor*>& w,
                            const int64_t* offsets, Tensor& y) {
  if (x.dtype() == DType::F64) return ref::grouped_linear_forward(x, w, offsets, y);
  if (x.device() == Device::CUDA) return cuda_ops::grouped_linear_forward(x, w, offsets, y);
  DSV3_CHECK(!w.empty() && w[0]->ndim() == 2, "grouped_linear_forward: no groups or W not 2-D");
  const int64_t in = w[0]->dim(1), rows = in ? x.numel() / in : 0;
  check_groups(w, offsets, rows, "grouped_linear_forward");
  const int64_t groups = int64_t(w.size());
#pragma omp parallel for schedule(dynamic)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b = offsets[g], e = offsets[g + 1];
    if (b == e) continue;
    Tensor yg = y.slice_rows(b, e);
    linear_forward(x.slice_rows(b, e), *w[size_t(g)], yg);
  }
}

void grouped_linear_backward(const Tensor& x, const std::vector<const Tensor*>& w,
                             const Tensor& d_y, const int64_t* offsets, Tensor* d_x,
                             const std::vector<Tensor*>& d_w, bool accumulate_d_w) {
  if (x.dtype() == DType::F64)
    return ref::grouped_linear_backward(x, w, d_y, offsets, d_x, d_w, accumulate_d_w);
  if (x.device() == Device::CUDA)
    return cuda_ops::grouped_linear_backward(x, w, d_y, offsets, d_x, d_w, accumulate_d_w);
  DSV3_CHECK(!w.empty() && w[0]->ndim() == 2, "grouped_linear_backward: no groups or W not 2-D");
  const int64_t in = w[0]->dim(1), rows = in ? x.numel() / in : 0;
  check_groups(w, offsets, rows, "grouped_linear_backward");
  DSV3_CHECK(d_w.size() == w.size(), "grouped_linear_backward: {} weights but {} gradients",
             w.size(), d_w.size());
  const int64_t groups = int64_t(w.size());
#pragma omp parallel for schedule(dynamic)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b = offsets[g], e = offsets[g + 1];
    if (b == e) {
      if (!accumulate_d_w) d_w[size_t(g)]->zero_();  // no rows: a sum of nothing
      continue;
    }
    Tensor dxg = d_x ? d_x->slice_rows(b, e) : Tensor();
    linear_backward(x.slice_rows(b, e), *w[size_t(g)], d_y.slice_rows(b, e), d_x ? &dxg : nullptr,
                    d_w[size_t(g)], false, accumulate_d_w);
  }
}

}  // namespace dsv3::ops
