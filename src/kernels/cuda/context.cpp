// The CUDA backend's stream, cuBLAS handle, error checks and the row-major cuBLAS GEMM.
#include "kernels/cuda/context.h"

#include <climits>
#include <mutex>

#include "core/device.h"
#include "core/error.h"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("{}: CUDA error {} ({})", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("{}: cuBLAS error {}", what, cublasGetStatusString(s));
}

cublasHandle_t cublas() {
  static std::once_flag once;
  static cublasHandle_t handle = nullptr;
  std::call_once(once, [] {
    device::require_cuda("cublas");
    check(cublasCreate(&handle), "cublasCreate");
    check(cublasSetStream(handle, stream()), "cublasSetStream");
    // FP32 stays FP32: no TF32 tensor-core shortcut unless a caller asks for it explicitly.
    check(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  });
  return handle;
}

// cuBLAS is column-major. A row-major matrix M [r, c] with leading dimension ld is, read
// column-major, M^T [c, r] with the same ld. So row-major C = op(A) op(B) is column-major
// C^T = op(B)^T op(A)^T: swap the operands and m with n, keep each operand's transpose flag.
void blas_gemm(const BlasGemm& g, const char* what) {
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  if (g.k == 0) {  // C = beta C; cuBLAS is not asked to handle an empty reduction
    for (int64_t i = 0; i < g.batch; ++i) {
      DSV3_CHECK(g.c_type == CUDA_R_32F, "{}: k = 0 with a non-float32 C", what);
      check(scale_matrix({static_cast<float*>(g.c) + i * g.stride_c, g.m, g.n, g.ldc, g.beta},
                         stream()),
            what);
    }
    return;
  }
  DSV3_CHECK(g.m <= INT32_MAX && g.n <= INT32_MAX && g.k <= INT32_MAX && g.batch <= INT32_MAX,
             "{}: GEMM {}x{}x{} is beyond cuBLAS's 32-bit sizes", what, g.m, g.n, g.k);
  const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasHandle_t h = cublas();
  if (g.batch == 1) {
    check(cublasGemmEx(h, op_b, op_a, int(g.n), int(g.m), int(g.k), &g.alpha, g.b, g.ab_type,
                       int(g.ldb), g.a, g.ab_type, int(g.lda), &g.beta, g.c, g.c_type,
                       int(g.ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          what);
  } else {
    check(cublasGemmStridedBatchedEx(h, op_b, op_a, int(g.n), int(g.m), int(g.k), &g.alpha, g.b,
                                     g.ab_type, int(g.ldb), g.stride_b, g.a, g.ab_type,
                                     int(g.lda), g.stride_a, &g.beta, g.c, g.c_type, int(g.ldc),
                                     g.stride_c, int(g.batch), CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT),
          what);
  }
}

}  // namespace dsv3::cuda
