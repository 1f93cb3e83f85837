// The MoE layer's permutation moves (ops::moe_*): gather token rows into expert order, combine
// the experts' outputs back per token, and the backward of both.
//
// A block per output row (grid-stride over rows past the grid's size), its threads across the
// row's columns, so every load and store of a warp touches consecutive addresses. A token's K
// contributions are added by the one thread that owns the output element, in order
// j = 0 .. K-1: no atomics, and the result is the same every run. The gather, the combine and
// the scatter-add move four values at a time when the row length and the pointers allow it.
// The rows the combine and the scatter-add read (the routed experts' outputs and input
// gradients) are float32 or, in mixed precision, BF16, widened exactly; the sums are float32.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

constexpr int64_t kMaxRowBlocks = int64_t(65535) * 16;  // rows past this loop in the kernel

// Threads for a row of `cols` elements: whole warps, up to 256, so that short rows (the tests,
// small models) do not leave most of a block idle and long rows (7168 for V3) loop a few times.
int row_threads(int64_t cols) {
  int64_t t = (cols + 31) / 32 * 32;
  return int(t < 32 ? 32 : (t > 256 ? 256 : t));
}

unsigned row_blocks(int64_t rows) { return unsigned(rows < kMaxRowBlocks ? rows : kMaxRowBlocks); }

// Rows moved as they are, `units` values of V per row: float or float4 (float32 rows), uint16_t
// or uint4 (BF16 rows, 8 values a uint4).
template <typename V>
__global__ void gather_kernel(const V* x, V* out, const int32_t* src_row, int64_t rows,
                              int64_t units) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const V* src = x + int64_t(src_row[r]) * units;
    V* dst = out + r * units;
    for (int64_t c = threadIdx.x; c < units; c += blockDim.x) dst[c] = src[c];
  }
}

template <typename V>
cudaError_t launch_gather(const void* x, void* out, const MoeGather& p, int64_t units,
                          cudaStream_t stream) {
  gather_kernel<V><<<row_blocks(p.rows), row_threads(units), 0, stream>>>(
      static_cast<const V*>(x), static_cast<V*>(out), p.src_row, p.rows, units);
  return cudaGetLastError();
}

// The gather into BF16 (mixed precision: the rows only feed BF16 GEMMs): a float4 read and four
// rounded values written per step when dim is a multiple of 4, else one value.
template <int W>  // 1 or 4
__global__ void gather_bf16_kernel(MoeGather p) {
  const int64_t cols = p.dim / W;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* src = p.x + int64_t(p.src_row[r]) * p.dim;
    uint16_t* dst = p.out_bf16 + r * p.dim;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      if constexpr (W == 4) {
        const float4 v = reinterpret_cast<const float4*>(src)[c];
        const uint2 packed = make_uint2(pack2_bf16(v.x, v.y), pack2_bf16(v.z, v.w));
        reinterpret_cast<uint2*>(dst)[c] = packed;
      } else {
        store_f32_or_bf16(nullptr, dst, c, src[c]);
      }
    }
  }
}

// Up to this many picks per token, the sums below keep each pick's row pointer and weight in
// registers for the whole row (loaded once per token rather than once per element: the output
// stores may alias them, so the compiler reloaded them every element); more picks take the
// plain loop.
constexpr int kMaxPicks = 16;

// acc += w * v per component, the plain loop's expression.
__device__ __forceinline__ void add_scaled(float4& acc, float w, const float4& v) {
  acc.x += w * v.x;
  acc.y += w * v.y;
  acc.z += w * v.z;
  acc.w += w * v.w;
}
__device__ __forceinline__ void add_scaled(float& acc, float w, float v) { acc += w * v; }

// The V (float or float4) at element i of a float32 (f) or BF16 (bf16, when set) buffer.
template <typename V>
__device__ __forceinline__ V load_v(const float* f, const uint16_t* bf16, int64_t i) {
  if constexpr (sizeof(V) == 16)
    return load4_f32_or_bf16(f, bf16, i);
  else
    return load_f32_or_bf16(f, bf16, i);
}

// out[t] += sum_j w[t, j] src[row_of[t, j]], in order j = 0 .. K-1 (scatter_add: w = 1, its own
// expression below), then out[t] = residual[t] + out[t] when residual is set (the combine into
// the MoE block's output). V: float, or float4 when dim is a multiple of 4 and the rows aligned.
template <typename V, bool kWeighted>
__global__ void sum_picks_kernel(const float* src, const uint16_t* src_bf16, const int32_t* row_of,
                                 const float* weights, const float* residual, float* out, int64_t n,
                                 int k, int64_t dim) {
  constexpr int64_t kW = int64_t(sizeof(V) / sizeof(float));  // values per V
  const int64_t cols = dim / kW;
  for (int64_t t = blockIdx.x; t < n; t += gridDim.x) {
    int64_t rows[kMaxPicks] = {};  // each pick's first element (read only below k)
    float w[kMaxPicks] = {};
#pragma unroll
    for (int j = 0; j < kMaxPicks; ++j) {
      if (j >= k) break;
      rows[j] = int64_t(row_of[t * k + j]) * dim;
      w[j] = kWeighted ? weights[t * k + j] : 1.0f;
    }
    V* o = reinterpret_cast<V*>(out + t * dim);
    const V* res = residual ? reinterpret_cast<const V*>(residual + t * dim) : nullptr;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      V acc = o[c];
#pragma unroll
      for (int j = 0; j < kMaxPicks; ++j) {
        if (j >= k) break;
        const V v = load_v<V>(src, src_bf16, rows[j] + c * kW);
        if constexpr (kWeighted) {
          add_scaled(acc, w[j], v);
        } else if constexpr (sizeof(V) == 16) {
          acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
        } else {
          acc += v;
        }
      }
      if (res) {  // add(residual, out)'s sum
        const V r = res[c];
        if constexpr (sizeof(V) == 16) {
          acc.x = r.x + acc.x, acc.y = r.y + acc.y, acc.z = r.z + acc.z, acc.w = r.w + acc.w;
        } else {
          acc = r + acc;
        }
      }
      o[c] = acc;
    }
  }
}

// The plain loops, for more than kMaxPicks picks.
__global__ void combine_kernel(MoeCombine p) {
  for (int64_t t = blockIdx.x; t < p.n; t += gridDim.x) {
    const int32_t* rows = p.row_of + t * p.k;
    const float* w = p.weights + t * p.k;
    float* o = p.out + t * p.dim;
    for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      float acc = o[i];
      for (int64_t j = 0; j < p.k; ++j)
        acc += w[j] * load_f32_or_bf16(p.y_perm, p.y_perm_bf16, int64_t(rows[j]) * p.dim + i);
      o[i] = p.residual ? p.residual[t * p.dim + i] + acc : acc;
    }
  }
}

// Per token, all its picks in one pass over d_out (read once, not once per pick): the scaled
// copies of d_out, and each pick's dot product, a thread's columns in the plain loop's order,
// then reduced over the block in block_sum's tree (warps, then the warps' sums), all picks'
// sums behind one barrier: the plain loop's arithmetic below, each sum in its order and tree.
__global__ void combine_backward_picks_kernel(MoeCombine p) {
  __shared__ float red[kMaxPicks][32];  // [pick][warp]
  const int k = int(p.k), lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  for (int64_t t = blockIdx.x; t < p.n; t += gridDim.x) {
    const float* g = p.d_out + t * p.dim;
    int64_t rows[kMaxPicks];
    float w[kMaxPicks], dot[kMaxPicks];
#pragma unroll
    for (int j = 0; j < kMaxPicks; ++j) {
      if (j >= k) break;
      rows[j] = p.row_of[t * k + j];
      w[j] = p.weights[t * k + j];
      dot[j] = 0.0f;
    }
    for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const float gi = g[i];
      // Every pick's value is loaded before the first store: the stores could alias y_perm for
      // all the compiler knows, so loads interleaved with them would wait one by one.
      float y[kMaxPicks];
#pragma unroll
      for (int j = 0; j < kMaxPicks; ++j) {
        if (j >= k) break;
        y[j] = load_f32_or_bf16(p.y_perm, p.y_perm_bf16, rows[j] * p.dim + i);
      }
#pragma unroll
      for (int j = 0; j < kMaxPicks; ++j) {
        if (j >= k) break;
        store_f32_or_bf16(p.d_y_perm, p.d_y_perm_bf16, rows[j] * p.dim + i, w[j] * gi);
        dot[j] += gi * y[j];
      }
    }
    __syncthreads();  // the previous token's sums have been read
#pragma unroll
    for (int j = 0; j < kMaxPicks; ++j) {
      if (j >= k) break;
      const float v = warp_sum(dot[j]);
      if (lane == 0) red[j][warp] = v;
    }
    __syncthreads();
    for (int j = warp; j < k; j += warps) {
      const float total = warp_sum(lane < warps ? red[j][lane] : 0.0f);
      if (lane == 0) p.d_weights[t * k + j] = total;
    }
  }
}

// Per token and expert: the scaled copy of d_out, and the dot product reduced over the block
// (a fixed tree, so the same sum every run). For more than kMaxPicks picks.
__global__ void combine_backward_kernel(MoeCombine p) {
  __shared__ float red[32];
  for (int64_t t = blockIdx.x; t < p.n; t += gridDim.x) {
    const float* g = p.d_out + t * p.dim;
    for (int64_t j = 0; j < p.k; ++j) {
      const int64_t r = p.row_of[t * p.k + j];
      const float w = p.weights[t * p.k + j];
      float* dy = p.d_y_perm ? p.d_y_perm + r * p.dim : nullptr;
      float dot = 0.0f;
      uint16_t* dy_bf16 = p.d_y_perm_bf16 ? p.d_y_perm_bf16 + r * p.dim : nullptr;
      for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
        const float gi = g[i];
        store_f32_or_bf16(dy, dy_bf16, i, w * gi);
        dot += gi * load_f32_or_bf16(p.y_perm, p.y_perm_bf16, r * p.dim + i);
      }
      dot = block_sum(dot, red);
      if (threadIdx.x == 0) p.d_weights[t * p.k + j] = dot;
    }
  }
}

__global__ void scatter_add_kernel(MoeScatterAdd p) {
  for (int64_t t = blockIdx.x; t < p.n; t += gridDim.x) {
    const int32_t* rows = p.row_of + t * p.k;
    float* dx = p.d_x + t * p.dim;
    for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      float acc = dx[i];
      for (int64_t j = 0; j < p.k; ++j)
        acc += load_f32_or_bf16(p.d_x_perm, p.d_x_perm_bf16, int64_t(rows[j]) * p.dim + i);
      dx[i] = acc;
    }
  }
}

}  // namespace

cudaError_t moe_gather_rows(const MoeGather& p, cudaStream_t stream) {
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  if (p.x_bf16) {  // a BF16 copy of x: the rows as they are, no rounding
    if (!p.out_bf16) return cudaErrorInvalidValue;
    if (p.dim % 8 == 0 && aligned_to(p.x_bf16, 16) && aligned_to(p.out_bf16, 16))
      return launch_gather<uint4>(p.x_bf16, p.out_bf16, p, p.dim / 8, stream);
    return launch_gather<uint16_t>(p.x_bf16, p.out_bf16, p, p.dim, stream);
  }
  if (p.out_bf16) {
    // Rows of 4k values start 16-byte aligned in x and 8-byte aligned in out when the bases are.
    if (p.dim % 4 == 0 && aligned_to(p.x, 16) && aligned_to(p.out_bf16, 8)) {
      gather_bf16_kernel<4><<<row_blocks(p.rows), row_threads(p.dim / 4), 0, stream>>>(p);
    } else {
      gather_bf16_kernel<1><<<row_blocks(p.rows), row_threads(p.dim), 0, stream>>>(p);
    }
    return cudaGetLastError();
  }
  // Every row starts 16-byte aligned when the bases are and dim is a multiple of 4.
  if (p.dim % 4 == 0 && aligned_to(p.x, 16) && aligned_to(p.out, 16))
    return launch_gather<float4>(p.x, p.out, p, p.dim / 4, stream);
  return launch_gather<float>(p.x, p.out, p, p.dim, stream);
}

namespace {

// sum_picks_kernel when the picks fit, four columns per step when the rows allow (src float32,
// or BF16 when src_bf16 is set).
template <bool kWeighted>
cudaError_t launch_sum_picks(const float* src, const uint16_t* src_bf16, const int32_t* row_of,
                             const float* weights, const float* residual, float* out, int64_t n,
                             int64_t k, int64_t dim, cudaStream_t stream) {
  const bool vec = dim % 4 == 0 && four_values_aligned(src, src_bf16) && aligned_to(out, 16) &&
                   aligned_to(residual, 16);
  const unsigned blocks = row_blocks(n);
  if (vec)
    sum_picks_kernel<float4, kWeighted><<<blocks, row_threads(dim / 4), 0, stream>>>(
        src, src_bf16, row_of, weights, residual, out, n, int(k), dim);
  else
    sum_picks_kernel<float, kWeighted><<<blocks, row_threads(dim), 0, stream>>>(
        src, src_bf16, row_of, weights, residual, out, n, int(k), dim);
  return cudaGetLastError();
}

}  // namespace

cudaError_t moe_combine(const MoeCombine& p, cudaStream_t stream) {
  if (p.n == 0 || p.dim == 0 || p.k == 0) return cudaSuccess;
  if (p.k <= kMaxPicks)
    return launch_sum_picks<true>(p.y_perm, p.y_perm_bf16, p.row_of, p.weights, p.residual, p.out,
                                  p.n, p.k, p.dim, stream);
  combine_kernel<<<row_blocks(p.n), row_threads(p.dim), 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t moe_combine_backward(const MoeCombine& p, cudaStream_t stream) {
  if (p.n == 0 || p.k == 0) return cudaSuccess;
  // dim 0 still writes d_weights (zeros): the block runs with one warp and an empty loop.
  if (p.k <= kMaxPicks)
    combine_backward_picks_kernel<<<row_blocks(p.n), row_threads(p.dim), 0, stream>>>(p);
  else
    combine_backward_kernel<<<row_blocks(p.n), row_threads(p.dim), 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t moe_scatter_add(const MoeScatterAdd& p, cudaStream_t stream) {
  if (p.n == 0 || p.dim == 0 || p.k == 0) return cudaSuccess;
  if (p.k <= kMaxPicks)
    return launch_sum_picks<false>(p.d_x_perm, p.d_x_perm_bf16, p.row_of, nullptr, nullptr, p.d_x,
                                   p.n, p.k, p.dim, stream);
  scatter_add_kernel<<<row_blocks(p.n), row_threads(p.dim), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
