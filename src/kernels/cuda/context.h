#pragma once
// The CUDA backend's per-process state: the stream every kernel and copy is queued on, and the
// cuBLAS handle. Host code only (compiled when the backend is built).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace dsv3::cuda {

// The legacy default stream (0) for now: every launch and every cudaMemcpy is ordered after
// the work queued before it, and core/device.h's copies need no events. See core/cuda/device.cpp.
inline cudaStream_t stream() { return nullptr; }

// The process's cuBLAS handle, created on first use and bound to stream(). Not safe to use from
// two host threads at once (the engine drives the GPU from one thread).
cublasHandle_t cublas();

// Throws dsv3::Error "<what>: CUDA error ..." unless e is cudaSuccess.
void check(cudaError_t e, const char* what);
void check(cublasStatus_t s, const char* what);

// Whether the current device grants a block `bytes` of dynamic shared memory (its opt-in limit).
bool smem_fits(size_t bytes, const char* what);

// Row-major GEMM on device pointers through cuBLAS: C = alpha op(A) op(B) + beta C, with A, B
// of `ab_type` and C of `c_type` (CUDA_R_32F or CUDA_R_16BF), always accumulating in float32
// (CUBLAS_COMPUTE_32F: no TF32 for float32 inputs, so FP32 mode matches the CPU's precision).
// batch > 1: `batch` independent products, the i-th at A + i stride_a, etc. (in elements).
struct BlasGemm {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  float alpha = 1.0f, beta = 0.0f;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  void* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  int64_t batch = 1;
  cudaDataType_t ab_type = CUDA_R_32F, c_type = CUDA_R_32F;
};
void blas_gemm(const BlasGemm& g, const char* what);

// Row-major GEMMs of different sizes in one call (cublasGemmGroupedBatchedEx; DSV3_GROUPED_GEMM
// picks another way to run them: 0, a loop of cublasGemmEx; streams, that loop spread over
// side streams; kernel, blas_grouped_gemm_kernel): product i is
// C_i = alpha op(A_i) op(B_i) + beta C_i, m[i] x n[i] x k[i], on device pointers a[i], b[i],
// c[i]. Transposes, leading dimensions, alpha, beta and types are shared by all products.
// Empty products (m, n or k zero) are handled as blas_gemm handles them.
struct BlasGroupedGemm {
  bool trans_a = false, trans_b = false;
  std::vector<int64_t> m, n, k;
  std::vector<const void*> a, b;
  std::vector<void*> c;
  int64_t lda = 0, ldb = 0, ldc = 0;
  float alpha = 1.0f, beta = 0.0f;
  cudaDataType_t ab_type = CUDA_R_32F, c_type = CUDA_R_32F;
};
void blas_grouped_gemm(const BlasGroupedGemm& g, const char* what);
// Independent grouped GEMMs (no product reads what another one writes): one
// blas_grouped_gemm each, in order, except under DSV3_GROUPED_GEMM=streams, where all their
// products run side by side between one fork and one join.
void blas_grouped_gemms(const std::vector<const BlasGroupedGemm*>& gs, const char* what);
// Products of one size (m, n, k the same for all) in one cublasGemmBatchedEx call, the
// pointer arrays sent to the device with one copy into the ops' scratch, sized for at least
// `table_products` products (a caller whose count varies from step to step passes its bound,
// so that the scratch stops growing after the first step).
void blas_batched_gemm(const BlasGroupedGemm& g, const char* what, size_t table_products = 0);
// Whether the grouped linear products take the padded path (grouped_padded.h): unless
// DSV3_GROUPED_GEMM names another way.
bool pad_groups_for_gemm();
// The height of the padded path's chunks: DSV3_GROUPED_CHUNK_ROWS (a multiple of 8), else
// kGroupedChunkRows.
constexpr int64_t kGroupedChunkRows = 128;
int64_t grouped_chunk_rows();
// The same products through dsv3's own grouped kernel (grouped_gemm.cu: one launch, BF16
// tensor cores), when they fit it: BF16 A and B, float32 C (beta 0 or 1) or BF16 C (beta 0),
// alpha 1, every operand row 16-byte aligned. Returns false, having run nothing, when they do not.
// blas_grouped_gemm takes this path under DSV3_GROUPED_GEMM=kernel.
bool blas_grouped_gemm_kernel(const BlasGroupedGemm& g, const char* what);

}  // namespace dsv3::cuda
