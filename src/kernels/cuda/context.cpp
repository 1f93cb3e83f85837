// The CUDA backend's stream, cuBLAS handle, error checks and the row-major cuBLAS GEMM.
#include "kernels/cuda/context.h"

#include <dlfcn.h>

#include <climits>
#include <mutex>
#include <string>

#include "core/device.h"
#include "core/error.h"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("{}: CUDA error {} ({})", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

// ---- cuBLAS, opened on first use ----
// cuBLAS is not linked: loading libcublas (and with it libcublasLt, 540 MB) runs static
// constructors that cost about 0.6 s at every process start, measured on this build, even for
// CPU-only runs of a CUDA build (and the kill-and-resume test restarts the trainer dozens of
// times). It is dlopen'ed the first time a GEMM runs on the device, and the handful of entry
// points used here are looked up by name. The headers still give their exact types.
namespace {

// The C entry points (cublas_api.h); the header also has C++ overloads of the same names, so
// the pointer types are spelled out.
using GemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                    int, const void*, const void*, cudaDataType, int, const void*,
                                    cudaDataType, int, const void*, void*, cudaDataType, int,
                                    cublasComputeType_t, cublasGemmAlgo_t);
using GemmStridedBatchedExFn = cublasStatus_t (*)(
    cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*, const void*,
    cudaDataType, int, long long, const void*, cudaDataType, int, long long, const void*, void*,
    cudaDataType, int, long long, int, cublasComputeType_t, cublasGemmAlgo_t);

struct Cublas {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  GemmExFn gemm_ex = nullptr;
  GemmStridedBatchedExFn gemm_strided_batched_ex = nullptr;
  cublasHandle_t handle = nullptr;
};

template <typename F>
void resolve(void* lib, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  DSV3_CHECK(*out != nullptr, "cuBLAS: symbol {} not found in the loaded library", name);
}

const Cublas& cublas_lib() {
  static std::once_flag once;
  static Cublas lib;
  std::call_once(once, [] {
    device::require_cuda("cublas");
    // The major version this build was compiled against: its soname, from the loader's search
    // path, then from the toolkit this build found (DSV3_CUDA_LIB_DIR).
    const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* h = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
#ifdef DSV3_CUDA_LIB_DIR
    if (!h) {
      const std::string path = std::string(DSV3_CUDA_LIB_DIR) + "/" + soname;
      h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    }
#endif
    DSV3_CHECK(h != nullptr, "cuBLAS: cannot load {} ({}); is the CUDA toolkit's lib directory on "
               "LD_LIBRARY_PATH?", soname, dlerror());
    resolve(h, "cublasCreate_v2", &lib.create);
    resolve(h, "cublasSetStream_v2", &lib.set_stream);
    resolve(h, "cublasSetMathMode", &lib.set_math_mode);
    resolve(h, "cublasGemmEx", &lib.gemm_ex);
    resolve(h, "cublasGemmStridedBatchedEx", &lib.gemm_strided_batched_ex);
    check(lib.create(&lib.handle), "cublasCreate");
    check(lib.set_stream(lib.handle, stream()), "cublasSetStream");
    // FP32 stays FP32: no TF32 tensor-core shortcut unless a caller asks for it explicitly.
    check(lib.set_math_mode(lib.handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  });
  return lib;
}

}  // namespace

void check(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  fail("{}: cuBLAS error {} (see cublasStatus_t in cublas_api.h)", what, int(s));
}

cublasHandle_t cublas() { return cublas_lib().handle; }

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
  const Cublas& lib = cublas_lib();
  cublasHandle_t h = lib.handle;
  if (g.batch == 1) {
    check(lib.gemm_ex(h, op_b, op_a, int(g.n), int(g.m), int(g.k), &g.alpha, g.b, g.ab_type,
                       int(g.ldb), g.a, g.ab_type, int(g.lda), &g.beta, g.c, g.c_type,
                       int(g.ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          what);
  } else {
    check(lib.gemm_strided_batched_ex(h, op_b, op_a, int(g.n), int(g.m), int(g.k), &g.alpha, g.b,
                                     g.ab_type, int(g.ldb), g.stride_b, g.a, g.ab_type,
                                     int(g.lda), g.stride_a, &g.beta, g.c, g.c_type, int(g.ldc),
                                     g.stride_c, int(g.batch), CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT),
          what);
  }
}

}  // namespace dsv3::cuda
