// The emulation's tensor-core and asynchronous-copy instructions (tensor_core.cpp), through the
// very building blocks the BF16 attention kernels use (kernels/cuda/mma_bf16.cuh): products
// equal plain ones, an asynchronous copy lands only at its wait, and misuse fails the launch.
// The attention kernels' own tests (the op table's *_lse_bf16_cuda cases) run on top of these.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda/mma_bf16.cuh"

namespace {

using dsv3::cuda::tc::bf16;
using dsv3::cuda::tc::kPad;

constexpr int kK = 32;          // the inner dimension of the test products
constexpr int kLd = kK + kPad;  // padded shared rows, as the kernels lay them out

// c [16][16] = a [16][kK] b [16][kK]^T: the tiles loaded with cp.async, the product by
// ldmatrix + mma (mma_abt, the Q K^T step).
__global__ void abt_kernel(const bf16* a, const bf16* b, float* c) {
  __shared__ __align__(16) bf16 as[16 * kLd];
  __shared__ __align__(16) bf16 bs[16 * kLd];
  dsv3::cuda::tc::load_tile_async<16, kK, 32>(as, dsv3::cuda::tc::rows_of(a, kK, kK), 0, 16, kK);
  dsv3::cuda::tc::load_tile_async<16, kK, 32>(bs, dsv3::cuda::tc::rows_of(b, kK, kK), 0, 16, kK);
  dsv3::cuda::tc::cp_async_commit();
  dsv3::cuda::tc::cp_async_wait<0>();
  __syncthreads();
  float acc[2][4];
  dsv3::cuda::tc::zero_acc(acc);
  dsv3::cuda::tc::mma_abt<2, kK>(acc, as, kLd, bs, kLd);
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  for (int nb = 0; nb < 2; ++nb)
    for (int e = 0; e < 4; ++e) c[(g + 8 * (e / 2)) * 16 + nb * 8 + 2 * t + e % 2] = acc[nb][e];
}

// c [16][16] = a [16][kK] m [kK][16]: A as register fragments (packed from float, as P is), m
// row-major [k][n] read with ldmatrix.trans (mma_ab_reg, the P V step).
__global__ void ab_kernel(const float* a, const bf16* m, float* c) {
  constexpr int kLdm = 16 + kPad;
  __shared__ __align__(16) bf16 ms[kK * kLdm];
  dsv3::cuda::tc::load_tile_async<kK, 16, 32>(ms, dsv3::cuda::tc::rows_of(m, 16, 16), 0, kK, 16);
  dsv3::cuda::tc::cp_async_commit();
  dsv3::cuda::tc::cp_async_wait<0>();
  __syncthreads();
  // The A fragment of k-chunk kc for lane 4 g + t: (g, 2t..), (g + 8, 2t..), (g, 2t + 8..),
  // (g + 8, 2t + 8..) of columns kc * 16 ...
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t frag[kK / 16][4];
  for (int kc = 0; kc < kK / 16; ++kc)
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r % 2), col = kc * 16 + 2 * t + 8 * (r / 2);
      frag[kc][r] = dsv3::cuda::tc::pack_bf16(a[row * kK + col], a[row * kK + col + 1]);
    }
  float acc[2][4];
  dsv3::cuda::tc::zero_acc(acc);
  dsv3::cuda::tc::mma_ab_reg<2, kK / 16>(acc, frag, ms, kLdm);
  for (int nb = 0; nb < 2; ++nb)
    for (int e = 0; e < 4; ++e) c[(g + 8 * (e / 2)) * 16 + nb * 8 + 2 * t + e % 2] = acc[nb][e];
}

// A tile of 8 rows x 32 columns from two buffers: row r's columns [0, 16) at a + 40 r + 8 and
// [16, 24) at b + 8 r; columns 24.. and rows 5.. exist in neither and must load as zeros.
__global__ void split_rows_kernel(const bf16* a, const bf16* b, float* out) {
  constexpr int kCols = 32, kLdt = kCols + kPad;
  __shared__ __align__(16) bf16 tile[8 * kLdt];
  const dsv3::cuda::tc::RowSource src{a + 8, 40, b, 8, 16};
  dsv3::cuda::tc::load_tile_async<8, kCols, 32>(tile, src, 0, 5, 24);
  dsv3::cuda::tc::cp_async_commit();
  dsv3::cuda::tc::cp_async_wait<0>();
  __syncthreads();
  for (int i = threadIdx.x; i < 8 * kCols; i += 32)
    out[i] = __bfloat162float(tile[(i / kCols) * kLdt + i % kCols]);
}

// Reads the shared tile before and after the wait for its asynchronous copy.
__global__ void async_copy_kernel(const float* x, float* before, float* after) {
  __shared__ __align__(16) float tile[32 * 4];
  dsv3::cuda::tc::cp_async16(tile + 4 * threadIdx.x, x + 4 * threadIdx.x, true);
  dsv3::cuda::tc::cp_async_commit();
  for (int i = 0; i < 4; ++i) before[4 * threadIdx.x + i] = tile[4 * threadIdx.x + i];
  dsv3::cuda::tc::cp_async_wait<0>();
  for (int i = 0; i < 4; ++i) after[4 * threadIdx.x + i] = tile[4 * threadIdx.x + i];
}

// Two groups in flight: wait<1> lands the older only; valid false zero-fills.
__global__ void async_groups_kernel(const float* x, float* out) {
  __shared__ __align__(16) float first[4];
  __shared__ __align__(16) float second[4];
  if (threadIdx.x == 0) {
    dsv3::cuda::tc::cp_async16(first, x, false);
    dsv3::cuda::tc::cp_async_commit();
    dsv3::cuda::tc::cp_async16(second, x, true);
    dsv3::cuda::tc::cp_async_commit();
    dsv3::cuda::tc::cp_async_wait<1>();
    for (int i = 0; i < 4; ++i) out[i] = first[i], out[4 + i] = second[i];
    dsv3::cuda::tc::cp_async_wait<0>();
    for (int i = 0; i < 4; ++i) out[8 + i] = second[i];
  }
}

// Thread 0 starts reloading the shared tile (x[4..7] over x[0..3]) while the others still read
// it: a missing barrier. out[t] is what thread t read.
__global__ void reload_without_barrier_kernel(const float* x, float* out) {
  __shared__ __align__(16) float tile[4];
  if (threadIdx.x == 0) dsv3::cuda::tc::cp_async16(tile, x, true);
  dsv3::cuda::tc::cp_async_commit();
  dsv3::cuda::tc::cp_async_wait<0>();
  __syncthreads();
  // The next tile goes in flight (as a pipeline prefetches it), without the barrier that
  // would first let warp 1 finish with this one.
  if (threadIdx.x == 0) dsv3::cuda::tc::cp_async16(tile, x + 4, true);
  dsv3::cuda::tc::cp_async_commit();
  out[threadIdx.x] = tile[0];
  dsv3::cuda::tc::cp_async_wait<0>();
}

// ldmatrix with a row address 8 bytes off its 16-byte alignment.
__global__ void misaligned_ldmatrix_kernel(float* out) {
  __shared__ __align__(16) bf16 tile[16 * 24];
  for (int i = threadIdx.x; i < 16 * 24; i += 32) tile[i] = __float2bfloat16_rn(1.0f);
  __syncthreads();
  uint32_t r[4];
  dsv3::cuda::tc::ldmatrix_x4(r, tile + (threadIdx.x % 16) * 24 + 4);
  out[threadIdx.x] = float(r[0]);
}

// An asynchronous copy whose source is shared memory (not global): a fault on a GPU.
__global__ void shared_source_copy_kernel(float* out) {
  __shared__ __align__(16) float src[4];
  __shared__ __align__(16) float dst[4];
  dsv3::cuda::tc::cp_async16(dst, src, true);
  dsv3::cuda::tc::cp_async_commit();
  dsv3::cuda::tc::cp_async_wait<0>();
  out[threadIdx.x] = dst[0];
}

// Lanes 16..31 leave before the mma the whole warp must issue.
__global__ void partial_warp_mma_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  float acc[4] = {0, 0, 0, 0};
  const uint32_t a[4] = {0, 0, 0, 0};
  dsv3::cuda::tc::mma_bf16(acc, a, 0, 0);
  out[threadIdx.x] = acc[0];
}

struct Device {
  void* p = nullptr;
  explicit Device(size_t bytes) { EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess); }
  ~Device() { cudaFree(p); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

template <typename T>
void upload(const Device& d, const std::vector<T>& h) {
  ASSERT_EQ(cudaMemcpy(d.p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
}
template <typename T>
std::vector<T> download(const Device& d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d.p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

// Random values that bf16 holds exactly, and their bf16 form.
std::vector<float> bf16_exact(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (float& x : v) x = __bfloat162float(__float2bfloat16_rn(dist(rng)));
  return v;
}
std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = __float2bfloat16_rn(v[i]);
  return b;
}

// The products are of exact bf16 values, accumulated in float32 on a GPU: equal to the double
// product to float32 rounding of a 32-term sum.
void expect_close(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], 1e-5 * (1.0 + std::fabs(want[i]))) << "element " << i;
}

TEST(CudaTensorCores, LdmatrixAndMmaGiveAPlainProduct) {
  std::mt19937 rng(7);
  const std::vector<float> a = bf16_exact(16 * kK, rng), b = bf16_exact(16 * kK, rng);
  Device da(a.size() * 2), db(b.size() * 2), dc(16 * 16 * 4);
  upload(da, to_bf16(a));
  upload(db, to_bf16(b));
  abt_kernel<<<1, 32>>>(da.as<bf16>(), db.as<bf16>(), dc.as<float>());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<double> want(16 * 16);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      for (int k = 0; k < kK; ++k) want[size_t(i * 16 + j)] += double(a[size_t(i * kK + k)]) * b[size_t(j * kK + k)];
  expect_close(download<float>(dc, 256), want);
}

TEST(CudaTensorCores, SplitRowSourcesLoadEachPartAndZeroTheRest) {
  std::mt19937 rng(9);
  // a: 5 rows of 40 (a tile reads columns 8..23 of each), b: 5 rows of 8; both past 5 rows
  // too, so that a load of row 5 or more would read numbers, not zeros.
  const std::vector<float> a = bf16_exact(8 * 40, rng), b = bf16_exact(8 * 8, rng);
  Device da(a.size() * 2), db(b.size() * 2), dout(8 * 32 * 4);
  upload(da, to_bf16(a));
  upload(db, to_bf16(b));
  split_rows_kernel<<<1, 32>>>(da.as<bf16>(), db.as<bf16>(), dout.as<float>());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> got = download<float>(dout, 8 * 32);
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 32; ++c) {
      float want = 0.0f;
      if (r < 5 && c < 16) want = a[size_t(r * 40 + 8 + c)];
      else if (r < 5 && c < 24) want = b[size_t(r * 8 + c - 16)];
      EXPECT_EQ(got[size_t(r * 32 + c)], want) << "row " << r << " column " << c;
    }
}

TEST(CudaTensorCores, TransposedLoadsGiveAPlainProduct) {
  std::mt19937 rng(8);
  const std::vector<float> a = bf16_exact(16 * kK, rng), m = bf16_exact(kK * 16, rng);
  Device da(a.size() * 4), dm(m.size() * 2), dc(16 * 16 * 4);
  upload(da, a);
  upload(dm, to_bf16(m));
  ab_kernel<<<1, 32>>>(da.as<float>(), dm.as<bf16>(), dc.as<float>());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<double> want(16 * 16);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      for (int k = 0; k < kK; ++k) want[size_t(i * 16 + j)] += double(a[size_t(i * kK + k)]) * m[size_t(k * 16 + j)];
  expect_close(download<float>(dc, 256), want);
}

// Whether the emulation lands the cp.async copies of the next launch's (one) block at their
// wait, else at issue (tensor_core.cpp alternates from block to block). Call with no work
// queued.
bool next_launch_defers_copies() {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return ((dsv3emu::blocks_run() + 1) & 1) == 0;
}

TEST(CudaTensorCores, AsynchronousCopiesLandAtTheirWaitOrAtIssue) {
  std::vector<float> x(128);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i) + 0.5f;
  Device dx(512), before(512), after(512), groups(48);
  upload(dx, x);
  int deferred_launches = 0;
  for (int launch = 0; launch < 4; ++launch) {  // both landing modes, both thread orders
    const bool deferred = next_launch_defers_copies();
    deferred_launches += deferred;
    async_copy_kernel<<<1, 32>>>(dx.as<float>(), before.as<float>(), after.as<float>());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> b = download<float>(before, 128), a = download<float>(after, 128);
    for (size_t i = 0; i < 128; ++i) {
      if (deferred)
        EXPECT_TRUE(std::isnan(b[i])) << "element " << i << " read before the wait: " << b[i];
      else
        EXPECT_EQ(b[i], x[i]) << "element " << i << " landed at issue";
      EXPECT_EQ(a[i], x[i]) << "element " << i << " after the wait";
    }
  }
  EXPECT_GT(deferred_launches, 0);
  EXPECT_LT(deferred_launches, 4);
  for (int launch = 0; launch < 2; ++launch) {
    const bool groups_deferred = next_launch_defers_copies();
    async_groups_kernel<<<1, 32>>>(dx.as<float>(), groups.as<float>());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> g = download<float>(groups, 12);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(g[size_t(i)], 0.0f) << "the zero-filling copy of the older group";
      if (groups_deferred) {
        EXPECT_TRUE(std::isnan(g[size_t(4 + i)])) << "the newer group landed at wait<1>";
      }
      EXPECT_EQ(g[size_t(8 + i)], x[size_t(i)]) << "the newer group at wait<0>";
    }
  }
}

TEST(CudaTensorCores, AReloadWithoutABarrierIsSeenByTheOtherWarps) {
  // Warp 0 starts reloading the tile warp 1 still has to read, with no barrier between: on a
  // GPU warp 1 may read either tile. Over four launches (both landing modes, both thread
  // orders) the emulation shows warp 1 the reloaded tile at least once, so the missing barrier
  // shows (with copies landing only at waits, it never would).
  std::vector<float> x(8);
  for (int i = 0; i < 8; ++i) x[size_t(i)] = float(i + 1);
  Device dx(32), out(64 * 4);
  upload(dx, x);
  int saw_reload = 0;
  for (int launch = 0; launch < 4; ++launch) {
    reload_without_barrier_kernel<<<1, 64>>>(dx.as<float>(), out.as<float>());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> o = download<float>(out, 64);
    saw_reload += o[32] == 5.0f;  // warp 1's lane 0 read the second tile's first value
  }
  EXPECT_GT(saw_reload, 0);
}

TEST(CudaTensorCores, MisuseFailsTheLaunch) {
  Device out(32 * 4);
  misaligned_ldmatrix_kernel<<<1, 32>>>(out.as<float>());
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  dsv3emu::clear_sticky_error();
  partial_warp_mma_kernel<<<1, 32>>>(out.as<float>());
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  dsv3emu::clear_sticky_error();
  shared_source_copy_kernel<<<1, 32>>>(out.as<float>());
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  dsv3emu::clear_sticky_error();
}

}  // namespace
