// The emulation's cuBLAS (include/cublas_v2.h): GEMMs run in stream order on the host, each
// element a float32 sum in order, after the checks cuBLAS makes of its arguments and a check that
// every operand lies in device memory.
#include <cmath>
#include <cstdio>
#include <string>

#include "cublas_v2.h"
#include "cuda_emulation.h"
#include "emulator_internal.h"

using namespace dsv3emu;

struct cublasContext {
  cudaStream_t stream = nullptr;
};

namespace {

float load(const void* p, cudaDataType t, int64_t i) {
  if (t == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

void store(void* p, cudaDataType t, int64_t i, float v) {
  if (t == CUDA_R_16BF) static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(p)[i] = v;
}

size_t type_bytes(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }

// Bytes spanned by a column-major rows x cols matrix with leading dimension ld.
size_t matrix_bytes(int64_t rows, int64_t cols, int64_t ld, cudaDataType t) {
  if (rows == 0 || cols == 0) return 0;
  return size_t((cols - 1) * ld + rows) * type_bytes(t);
}

// One column-major product C = alpha op(A) op(B) + beta C, each element a float32 sum in order.
void one_product(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
                 float al, const char* ai, cudaDataType at, int64_t lda, const char* bi,
                 cudaDataType bt, int64_t ldb, float be, char* ci, cudaDataType ct, int64_t ldc) {
  for (int64_t col = 0; col < n; ++col)
    for (int64_t row = 0; row < m; ++row) {
      float acc = 0.0f;
      for (int64_t l = 0; l < k; ++l) {
        const float a = load(ai, at, ta == CUBLAS_OP_N ? row + l * lda : l + row * lda);
        const float b = load(bi, bt, tb == CUBLAS_OP_N ? l + col * ldb : col + l * ldb);
        acc = fmaf(a, b, acc);
      }
      const int64_t ic = row + col * ldc;
      store(ci, ct, ic, be == 0.0f ? al * acc : al * acc + be * load(ci, ct, ic));
    }
}

// What cuBLAS checks of a product's arguments: the handle, sizes, leading dimensions, types.
cublasStatus_t check_gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                          int n, int k, cudaDataType at, int lda, cudaDataType bt, int ldb,
                          cudaDataType ct, int ldc, int batch, cublasComputeType_t compute,
                          const char* what) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
  if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < std::max(1, a_rows) ||
      ldb < std::max(1, b_rows) || ldc < std::max(1, m)) {
    std::fprintf(stderr, "cuda emulation: %s: invalid sizes m=%d n=%d k=%d lda=%d ldb=%d ldc=%d\n",
                 what, m, n, k, lda, ldb, ldc);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  // CUBLAS_COMPUTE_32F's combinations that dsv3 uses: FP32 x FP32 -> FP32, BF16 x BF16 -> FP32
  // or BF16 (FP32 inputs with a BF16 output are not among cuBLAS's).
  const bool types_ok = at == bt && compute == CUBLAS_COMPUTE_32F &&
                        ((at == CUDA_R_32F && ct == CUDA_R_32F) ||
                         (at == CUDA_R_16BF && (ct == CUDA_R_32F || ct == CUDA_R_16BF)));
  return types_ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

// Whether one product's operands lie in device memory (A and B only when there is a sum).
bool operands_in_device(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                        const void* a, cudaDataType at, int lda, const void* b, cudaDataType bt,
                        int ldb, const void* c, cudaDataType ct, int ldc, const char* what) {
  const int a_rows = ta == CUBLAS_OP_N ? m : k, a_cols = ta == CUBLAS_OP_N ? k : m;
  const int b_rows = tb == CUBLAS_OP_N ? k : n, b_cols = tb == CUBLAS_OP_N ? n : k;
  return (k == 0 || (internal::device_range(a, matrix_bytes(a_rows, a_cols, lda, at), what) &&
                     internal::device_range(b, matrix_bytes(b_rows, b_cols, ldb, bt), what))) &&
         internal::device_range(c, matrix_bytes(m, n, ldc, ct), what);
}

// Checks what cuBLAS checks (sizes, leading dimensions, types), and that each operand lies in
// device memory; then queues the batched product on the handle's stream.
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const void* alpha, const void* A, cudaDataType at, int lda,
                    long long sa, const void* B, cudaDataType bt, int ldb, long long sb,
                    const void* beta, void* C, cudaDataType ct, int ldc, long long sc, int batch,
                    cublasComputeType_t compute, const char* what) {
  const cublasStatus_t args = check_gemm(h, ta, tb, m, n, k, at, lda, bt, ldb, ct, ldc, batch,
                                         compute, what);
  if (args != CUBLAS_STATUS_SUCCESS || m == 0 || n == 0 || batch == 0) return args;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  for (int i = 0; i < batch; ++i) {
    const char* ai = static_cast<const char*>(A) + i * sa * int64_t(type_bytes(at));
    const char* bi = static_cast<const char*>(B) + i * sb * int64_t(type_bytes(bt));
    const char* ci = static_cast<const char*>(C) + i * sc * int64_t(type_bytes(ct));
    if (!operands_in_device(ta, tb, m, n, k, ai, at, lda, bi, bt, ldb, ci, ct, ldc, what))
      return CUBLAS_STATUS_INVALID_VALUE;
  }
  const cudaError_t e = internal::enqueue(h->stream, what, [=] {
    for (int i = 0; i < batch; ++i) {
      const char* ai = static_cast<const char*>(A) + i * sa * int64_t(type_bytes(at));
      const char* bi = static_cast<const char*>(B) + i * sb * int64_t(type_bytes(bt));
      char* ci = static_cast<char*>(C) + i * sc * int64_t(type_bytes(ct));
      one_product(ta, tb, m, n, k, al, ai, at, lda, bi, bt, ldb, be, ci, ct, ldc);
    }
  });
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

// cublasGemmBatchedEx: the products' operands through device arrays of pointers, read when the
// call runs in stream order (they are usually copied there just before); a pointer outside
// device memory then fails the call as a fault would.
cublasStatus_t gemm_pointers(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                             int n, int k, const void* alpha, const void* const* A,
                             cudaDataType at, int lda, const void* const* B, cudaDataType bt,
                             int ldb, const void* beta, void* const* C, cudaDataType ct, int ldc,
                             int batch, cublasComputeType_t compute, const char* what) {
  const cublasStatus_t args = check_gemm(h, ta, tb, m, n, k, at, lda, bt, ldb, ct, ldc, batch,
                                         compute, what);
  if (args != CUBLAS_STATUS_SUCCESS || m == 0 || n == 0 || batch == 0) return args;
  const size_t table = size_t(batch) * sizeof(void*);
  if (!internal::device_range(A, table, what) || !internal::device_range(B, table, what) ||
      !internal::device_range(C, table, what))
    return CUBLAS_STATUS_INVALID_VALUE;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  const cudaError_t e = internal::enqueue(h->stream, what, [=] {
    for (int i = 0; i < batch; ++i) {
      if (!operands_in_device(ta, tb, m, n, k, A[i], at, lda, B[i], bt, ldb, C[i], ct, ldc, what)) {
        internal::fail_queued_work(std::string(what) + ": product " + std::to_string(i) +
                                   " has an operand outside device memory");
        return;
      }
      one_product(ta, tb, m, n, k, al, static_cast<const char*>(A[i]), at, lda,
                  static_cast<const char*>(B[i]), bt, ldb, be, static_cast<char*>(C[i]), ct, ldc);
    }
  });
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t) {
  return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta, C,
              Ctype, ldc, 0, 1, computeType, "cublasGemmEx");
}
cublasStatus_t cublasGemmBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                   cublasOperation_t transb, int m, int n, int k,
                                   const void* alpha, const void* const Aarray[], cudaDataType Atype,
                                   int lda, const void* const Barray[], cudaDataType Btype, int ldb,
                                   const void* beta, void* const Carray[], cudaDataType Ctype,
                                   int ldc, int batchCount, cublasComputeType_t computeType,
                                   cublasGemmAlgo_t) {
  return gemm_pointers(handle, transa, transb, m, n, k, alpha, Aarray, Atype, lda, Barray, Btype,
                       ldb, beta, Carray, Ctype, ldc, batchCount, computeType,
                       "cublasGemmBatchedEx");
}

cublasStatus_t cublasGemmStridedBatchedEx(
    cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
    const void* alpha, const void* A, cudaDataType Atype, int lda, long long strideA,
    const void* B, cudaDataType Btype, int ldb, long long strideB, const void* beta, void* C,
    cudaDataType Ctype, int ldc, long long strideC, int batchCount,
    cublasComputeType_t computeType, cublasGemmAlgo_t) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb,
              strideB, beta, C, Ctype, ldc, strideC, batchCount, computeType,
              "cublasGemmStridedBatchedEx");
}

}  // extern "C"
