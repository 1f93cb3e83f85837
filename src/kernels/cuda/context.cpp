// The CUDA backend's stream, cuBLAS handle, error checks and the row-major cuBLAS GEMM.
#include "kernels/cuda/context.h"

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

#include "core/device.h"
#include "core/error.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/scratch.h"

namespace dsv3::cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("{}: CUDA error {} ({})", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

bool smem_fits(size_t bytes, const char* what) {
  int device = 0, optin = 0;
  check(cudaGetDevice(&device), what);
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), what);
  return bytes > 0 && bytes <= size_t(optin);
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

using GemmBatchedExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t,
                                           int, int, int, const void*, const void* const[],
                                           cudaDataType, int, const void* const[], cudaDataType,
                                           int, const void*, void* const[], cudaDataType, int, int,
                                           cublasComputeType_t, cublasGemmAlgo_t);

// Since cuBLAS 12.5. Per group: transposes, sizes, leading dimensions and host alpha/beta
// values; A, B and C are device arrays of pointers, one per product (group_size of each).
using GemmGroupedBatchedExFn = cublasStatus_t (*)(
    cublasHandle_t, const cublasOperation_t[], const cublasOperation_t[], const int[], const int[],
    const int[], const void*, const void* const[], cudaDataType_t, const int[], const void* const[],
    cudaDataType_t, const int[], const void*, void* const[], cudaDataType_t, const int[], int,
    const int[], cublasComputeType_t);

struct Cublas {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  GemmExFn gemm_ex = nullptr;
  GemmStridedBatchedExFn gemm_strided_batched_ex = nullptr;
  GemmBatchedExFn gemm_batched_ex = nullptr;
  GemmGroupedBatchedExFn gemm_grouped_batched_ex = nullptr;  // null before cuBLAS 12.5
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
#ifdef DSV3_CUDA_EMULATION
    // The CPU emulation (tests/cuda_emulation) defines the entry points in the program itself.
    void* h = dlopen(nullptr, RTLD_NOW);
#else
    void* h = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
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
    resolve(h, "cublasGemmBatchedEx", &lib.gemm_batched_ex);
    // Optional: without it the grouped GEMMs run one cublasGemmEx per group.
    lib.gemm_grouped_batched_ex =
        reinterpret_cast<GemmGroupedBatchedExFn>(dlsym(h, "cublasGemmGroupedBatchedEx"));
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

namespace {

// cuBLAS is column-major. A row-major matrix M [r, c] with leading dimension ld is, read
// column-major, M^T [c, r] with the same ld. So row-major C = op(A) op(B) is column-major
// C^T = op(B)^T op(A)^T: swap the operands and m with n, keep each operand's transpose flag.
// g has k > 0 and 32-bit sizes; h is the handle (and so the stream) it runs on.
void gemm_on(cublasHandle_t h, const BlasGemm& g, const char* what) {
  const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const Cublas& lib = cublas_lib();
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

}  // namespace

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
  gemm_on(cublas_lib().handle, g, what);
}

namespace {

// ---- grouped products side by side ----
// cublasGemmGroupedBatchedEx runs its groups one after another (on an H100, a kernel per
// product), and one routed expert's product (a few hundred rows) fills a fraction of the GPU's
// multiprocessors. kSideStreams streams, each with its own cuBLAS handle (a handle's workspace
// serves one stream at a time), run the products side by side: they start after an event
// recorded on stream(), and stream() waits for an event of each, so to everything else the
// products are one operation on stream().
constexpr int kSideStreams = 4;

struct SideStreams {
  cudaStream_t stream[kSideStreams] = {};
  cublasHandle_t handle[kSideStreams] = {};
  cudaEvent_t fork = nullptr;
  cudaEvent_t join[kSideStreams] = {};
};

// Created on first use and kept for the process, like the main handle.
const SideStreams& side_streams() {
  static std::once_flag once;
  static SideStreams side;
  std::call_once(once, [] {
    const Cublas& lib = cublas_lib();
    const char* what = "grouped GEMMs: creating the side streams";
    check(cudaEventCreateWithFlags(&side.fork, cudaEventDisableTiming), what);
    for (int i = 0; i < kSideStreams; ++i) {
      check(cudaStreamCreateWithFlags(&side.stream[i], cudaStreamNonBlocking), what);
      check(cudaEventCreateWithFlags(&side.join[i], cudaEventDisableTiming), what);
      check(lib.create(&side.handle[i]), what);
      check(lib.set_stream(side.handle[i], side.stream[i]), what);
      check(lib.set_math_mode(side.handle[i], CUBLAS_DEFAULT_MATH), what);
    }
  });
  return side;
}

// The products, largest first, each on the side stream with the fewest multiply-adds queued so
// far. Every product is the same cuBLAS call it is in the loop, on a handle set up the same
// way, so the results are the loop's.
void run_on_side_streams(const std::vector<BlasGemm>& products, const char* what) {
  const SideStreams& side = side_streams();
  std::vector<size_t> order(products.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto work = [&](size_t i) {
    return double(products[i].m) * double(products[i].n) * double(products[i].k);
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return work(a) > work(b); });
  const int used = int(std::min<size_t>(kSideStreams, products.size()));
  check(cudaEventRecord(side.fork, stream()), what);
  for (int s = 0; s < used; ++s) check(cudaStreamWaitEvent(side.stream[s], side.fork, 0), what);
  double queued[kSideStreams] = {};
  for (size_t i : order) {
    const int s = int(std::min_element(queued, queued + used) - queued);
    queued[s] += work(i);
    gemm_on(side.handle[s], products[i], what);
  }
  for (int s = 0; s < used; ++s) {
    check(cudaEventRecord(side.join[s], side.stream[s]), what);
    check(cudaStreamWaitEvent(stream(), side.join[s], 0), what);
  }
}

// What cublasGemmGroupedBatchedEx has answered per type combination, indexed by (A/B is BF16)
// * 2 + (C is BF16): 0 not tried yet, 1 ran, 2 refused. cuBLAS documents FP32 x FP32 -> FP32
// and BF16 x BF16 -> BF16 under CUBLAS_COMPUTE_32F; BF16 x BF16 -> FP32 (the mixed-precision
// case: float32 activations and master gradients) is not in every version's list, so it is
// tried, and where refused those calls take the loop of cublasGemmEx below instead.
std::atomic<int> grouped_state[4];

int combo(cudaDataType_t ab, cudaDataType_t c) {
  return (ab == CUDA_R_16BF ? 2 : 0) + (c == CUDA_R_16BF ? 1 : 0);
}

// DSV3_GROUPED_GEMM chooses how the grouped GEMMs run (to time one way against another):
// unset or padded, the input and forward products as batched products over the groups cut into
// chunks of one height (grouped_padded.cpp), the weight gradients as below; cublas, cuBLAS's
// grouped call (a loop of cublasGemmEx where it refuses the types); 0, that loop; streams, the
// loop spread over side streams (run_on_side_streams); kernel, dsv3's grouped BF16 kernel for
// the products it takes (grouped_gemm.cu), cuBLAS for the rest; padded-kernel, the default's
// batched products for the forward and input gradients and that kernel for the weight gradients
// (the products the batched chunks cannot take: each sums over all of its group's rows, and a
// group's product alone covers fewer tiles than the GPU has SMs). Anything else is an error, not
// a silent default. Read at each call (a getenv beside a GEMM costs nothing), so a test can
// compare the ways in one process.
enum class GroupedMode { Default, Padded, Cublas, Loop, Streams, Kernel, PaddedKernel };
GroupedMode grouped_mode() {
  const char* v = std::getenv("DSV3_GROUPED_GEMM");
  if (!v || !*v) return GroupedMode::Default;
  const std::string s(v);
  if (s == "padded") return GroupedMode::Padded;
  if (s == "cublas") return GroupedMode::Cublas;
  if (s == "0") return GroupedMode::Loop;
  if (s == "streams") return GroupedMode::Streams;
  if (s == "kernel") return GroupedMode::Kernel;
  if (s == "padded-kernel") return GroupedMode::PaddedKernel;
  fail("DSV3_GROUPED_GEMM={}: expected padded (the default: batched products over the groups "
       "cut into chunks of one height), cublas (cuBLAS's grouped call), 0 (a loop of cuBLAS "
       "calls), streams (that loop over {} streams side by side), kernel (dsv3's grouped BF16 "
       "kernel) or padded-kernel (the default, with the weight gradients through that kernel)",
       s, kSideStreams);
}

BlasGemm one_product(const BlasGroupedGemm& g, size_t i) {
  BlasGemm p;
  p.trans_a = g.trans_a;
  p.trans_b = g.trans_b;
  p.m = g.m[i];
  p.n = g.n[i];
  p.k = g.k[i];
  p.alpha = g.alpha;
  p.beta = g.beta;
  p.a = g.a[i];
  p.lda = g.lda;
  p.b = g.b[i];
  p.ldb = g.ldb;
  p.c = g.c[i];
  p.ldc = g.ldc;
  p.ab_type = g.ab_type;
  p.c_type = g.c_type;
  return p;
}

}  // namespace

// The same column-major reading as blas_gemm, per product: cuBLAS computes C_i^T =
// op(B_i)^T op(A_i)^T, so its A array holds the B_i, its B array the A_i, and its m, n are
// our n, m. Each product is a group of its own (group_size 1): the products differ in size.
namespace {

// The products of g with work for cuBLAS, after checking g; the empty reductions among the
// others (C = beta C) are queued here, blas_gemm's way.
std::vector<size_t> live_products(const BlasGroupedGemm& g, const char* what) {
  const size_t count = g.m.size();
  DSV3_CHECK(g.n.size() == count && g.k.size() == count && g.a.size() == count &&
                 g.b.size() == count && g.c.size() == count,
             "{}: per-product arrays of different lengths", what);
  std::vector<size_t> live;
  live.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    if (g.m[i] == 0 || g.n[i] == 0) continue;
    if (g.k[i] == 0) {
      blas_gemm(one_product(g, i), what);
      continue;
    }
    DSV3_CHECK(g.m[i] <= INT32_MAX && g.n[i] <= INT32_MAX && g.k[i] <= INT32_MAX,
               "{}: GEMM {}x{}x{} is beyond cuBLAS's 32-bit sizes", what, g.m[i], g.n[i], g.k[i]);
    live.push_back(i);
  }
  if (!live.empty())
    DSV3_CHECK(g.lda <= INT32_MAX && g.ldb <= INT32_MAX && g.ldc <= INT32_MAX,
               "{}: leading dimensions beyond cuBLAS's 32-bit sizes", what);
  return live;
}

// The device arrays of pointers of the products `live` of g, in cuBLAS's column-major reading:
// [B_0.. | A_0.. | C_0..] (its A array holds our B_i, its B array our A_i), staged on the host
// and sent with one copy into `table` (ops' scratch of at least 3 * live.size() pointers).
// A pageable source makes the copy synchronous for the host, so the staging may go when this
// returns; the table is scratch (scratch.h), handed out again only to work queued after the
// GEMM that reads it.
const void* const* send_pointer_table(const BlasGroupedGemm& g, const std::vector<size_t>& live,
                                      const Scratch& table, const char* what) {
  const size_t n = live.size();
  std::vector<const void*> staged(3 * n);
  for (size_t j = 0; j < n; ++j) {
    staged[j] = g.b[live[j]];
    staged[n + j] = g.a[live[j]];
    staged[2 * n + j] = g.c[live[j]];
  }
  check(cudaMemcpyAsync(table.as<void>(), staged.data(), staged.size() * sizeof(void*),
                        cudaMemcpyHostToDevice, stream()),
        what);
  return table.as<const void* const>();
}

}  // namespace

bool pad_groups_for_gemm() {
  const GroupedMode mode = grouped_mode();
  return mode == GroupedMode::Default || mode == GroupedMode::Padded ||
         mode == GroupedMode::PaddedKernel;
}

int64_t grouped_chunk_rows() {
  const char* v = std::getenv("DSV3_GROUPED_CHUNK_ROWS");
  if (!v || !*v) return kGroupedChunkRows;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  DSV3_CHECK(end && *end == '\0' && n >= 8 && n <= 4096 && n % 8 == 0,
             "DSV3_GROUPED_CHUNK_ROWS={}: expected a multiple of 8 from 8 to 4096 (default {})", v,
             kGroupedChunkRows);
  return n;
}

void blas_batched_gemm(const BlasGroupedGemm& g, const char* what, size_t table_products) {
  const std::vector<size_t> live = live_products(g, what);  // all or none: one size
  if (live.empty()) return;
  const size_t n = live.size(), first = live[0];
  for (size_t i : live)
    DSV3_CHECK(g.m[i] == g.m[first] && g.n[i] == g.n[first] && g.k[i] == g.k[first],
               "{}: a batched GEMM's products differ in size", what);
  DSV3_CHECK(n <= size_t(INT32_MAX), "{}: {} products are beyond cuBLAS's 32-bit count", what, n);
  const Scratch table(3 * std::max(n, table_products) * sizeof(void*), what);
  const void* const* ptrs = send_pointer_table(g, live, table, what);
  const Cublas& lib = cublas_lib();
  check(lib.gemm_batched_ex(lib.handle, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                            g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, int(g.n[first]),
                            int(g.m[first]), int(g.k[first]), &g.alpha, ptrs, g.ab_type,
                            int(g.ldb), ptrs + n, g.ab_type, int(g.lda), &g.beta,
                            const_cast<void* const*>(ptrs + 2 * n), g.c_type, int(g.ldc), int(n),
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        what);
}

void blas_grouped_gemms(const std::vector<const BlasGroupedGemm*>& gs, const char* what) {
  if (grouped_mode() != GroupedMode::Streams) {
    for (const BlasGroupedGemm* g : gs) blas_grouped_gemm(*g, what);
    return;
  }
  std::vector<BlasGemm> products;
  for (const BlasGroupedGemm* g : gs)
    for (size_t i : live_products(*g, what)) products.push_back(one_product(*g, i));
  if (products.size() > 1) run_on_side_streams(products, what);
  else if (products.size() == 1) blas_gemm(products[0], what);
}

void blas_grouped_gemm(const BlasGroupedGemm& g, const char* what) {
  const GroupedMode mode = grouped_mode();
  if (mode == GroupedMode::Streams) return blas_grouped_gemms({&g}, what);
  const std::vector<size_t> live = live_products(g, what);
  if (live.empty()) return;
  const Cublas& lib = cublas_lib();
  std::atomic<int>& state = grouped_state[combo(g.ab_type, g.c_type)];
  // (After the padded products, only the weight gradients, and what those decline, come here.)
  if ((mode == GroupedMode::Kernel || mode == GroupedMode::PaddedKernel) &&
      blas_grouped_gemm_kernel(g, what))
    return;
  // Products the kernel declines (float32 ones, say) take cuBLAS's grouped call in kernel mode too.
  if (lib.gemm_grouped_batched_ex && state.load() != 2 && mode != GroupedMode::Loop &&
      live.size() > 1) {
    const size_t n = live.size();
    // Host arrays, read by cuBLAS during the call.
    std::vector<cublasOperation_t> op_a(n, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
    std::vector<cublasOperation_t> op_b(n, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
    std::vector<int> m(n), nn(n), k(n), lda(n, int(g.ldb)), ldb(n, int(g.lda)), ldc(n, int(g.ldc)),
        group_size(n, 1);
    std::vector<float> alpha(n, g.alpha), beta(n, g.beta);
    for (size_t j = 0; j < n; ++j) {
      m[j] = int(g.n[live[j]]);
      nn[j] = int(g.m[live[j]]);
      k[j] = int(g.k[live[j]]);
    }
    // Sized for every group, not only the live ones: the same size at every step, so the
    // scratch (scratch.h) stops growing once a step has run, whatever the routing.
    const Scratch table(3 * g.m.size() * sizeof(void*), what);
    const void* const* ptrs = send_pointer_table(g, live, table, what);
    const cublasStatus_t s = lib.gemm_grouped_batched_ex(
        lib.handle, op_a.data(), op_b.data(), m.data(), nn.data(), k.data(), alpha.data(), ptrs,
        g.ab_type, lda.data(), ptrs + n, g.ab_type, ldb.data(), beta.data(),
        const_cast<void* const*>(ptrs + 2 * n), g.c_type, ldc.data(), int(n), group_size.data(),
        CUBLAS_COMPUTE_32F);
    if (s == CUBLAS_STATUS_SUCCESS) {
      state.store(1);
      return;
    }
    // A refusal (unsupported types, or sizes or alignments this version does not take) runs
    // the loop, which takes everything; any other status is an error. Never tried with success
    // before: refused for good, said once; after a success (a refusal that depends on the
    // sizes): said each time, since the loop then runs where the grouped call did not.
    if (s != CUBLAS_STATUS_NOT_SUPPORTED && s != CUBLAS_STATUS_INVALID_VALUE) check(s, what);
    int expected = 0;
    if (state.compare_exchange_strong(expected, 2) || expected == 1)
      std::fprintf(stderr,
                   "dsv3: cublasGemmGroupedBatchedEx refused (status %d) A/B type %d with C type "
                   "%d for %s; running one cublasGemmEx per group instead\n",
                   int(s), int(g.ab_type), int(g.c_type), what);
  }
  // The fallback (and a single product): one cublasGemmEx each, still without per-group
  // conversions or allocations.
  for (size_t i : live) blas_gemm(one_product(g, i), what);
}

bool blas_grouped_gemm_kernel(const BlasGroupedGemm& g, const char* what) {
  const bool c_bf16 = g.c_type == CUDA_R_16BF;
  // C float32 (written or accumulated into) or BF16 (written only).
  const bool c_fits = g.beta == 0.0f || (g.beta == 1.0f && !c_bf16);
  if (g.ab_type != CUDA_R_16BF || (g.c_type != CUDA_R_32F && !c_bf16) || g.alpha != 1.0f ||
      !c_fits || !grouped_gemm_bf16_fits(g.lda, g.ldb, g.ldc))
    return false;
  const auto aligned16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  std::vector<GemmGroup> groups;
  int64_t tiles = 0;
  for (size_t i = 0; i < g.m.size(); ++i) {
    const int64_t m = g.m[i], n = g.n[i], k = g.k[i];
    if (m == 0 || n == 0) continue;
    if (k == 0) return false;  // C = beta C: the cuBLAS path's case
    // The column dimension of each operand is whole 16-byte chunks (grouped_gemm.cu).
    const int64_t a_cols = g.trans_a ? m : k, b_cols = g.trans_b ? k : n;
    if (a_cols % 8 || b_cols % 8 || !aligned16(g.a[i]) || !aligned16(g.b[i])) return false;
    groups.push_back({static_cast<const uint16_t*>(g.a[i]), static_cast<const uint16_t*>(g.b[i]),
                      g.c[i], m, n, k, tiles});
    tiles += ((m + kGroupedGemmTile - 1) / kGroupedGemmTile) *
             ((n + kGroupedGemmTile - 1) / kGroupedGemmTile);
  }
  if (groups.empty()) return true;
  // The group table goes up with one copy into the ops' scratch (scratch.h); a pageable source is
  // staged by the copy, so `groups` may go when this returns.
  const size_t bytes = groups.size() * sizeof(GemmGroup);
  Scratch dev(g.m.size() * sizeof(GemmGroup), what);  // every group: a fixed size (see above)
  check(cudaMemcpyAsync(dev.as<void>(), groups.data(), bytes, cudaMemcpyHostToDevice, stream()),
        what);
  GroupedGemmBf16 p{dev.as<const GemmGroup>(), int64_t(groups.size()), tiles, g.lda, g.ldb, g.ldc,
                    !g.trans_a, g.trans_b, g.beta != 0.0f};
  p.c_bf16 = c_bf16;
  check(grouped_gemm_bf16(p, stream()), what);
  return true;
}

}  // namespace dsv3::cuda
