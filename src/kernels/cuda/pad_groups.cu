// The moves between a grouped GEMM's compact rows and their padded layout (params.h,
// GroupPadding; grouped_padded.cpp uses them for the groups' tails). One warp per padded row,
// the lanes over the columns: 16 bytes per lane and step when the rows allow it (cols a
// multiple of 8 BF16 or 4 float32 values, both pointers 16-byte aligned), else one value. The
// values are moved, never summed or rounded, so the result does not depend on the launch shape.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

constexpr int kRowThreads = 256, kRowWarps = kRowThreads / 32;

// The compact row of padded row p (row i of group g), or -1 for a zero row of padding.
__device__ __forceinline__ int64_t compact_row(const GroupPadding& l, int64_t p) {
  const int64_t g = p / l.cap, i = p - g * l.cap;
  const int64_t begin = l.bounds[2 * g];
  return i < l.bounds[2 * g + 1] - begin ? begin + i : -1;
}

#define FOR_EACH_WARP_ROW(p, rows)                                                         \
  for (int64_t p = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / 32; p < (rows);          \
       p += int64_t(gridDim.x) * kRowWarps)

template <bool kVec>
__global__ void pad_groups_kernel(PadGroups a) {
  const int lane = threadIdx.x & 31;
  const int64_t cols = a.layout.cols;
  FOR_EACH_WARP_ROW(p, a.layout.groups * a.layout.cap) {
    const int64_t r = compact_row(a.layout, p);
    uint16_t* dst = a.dst + p * cols;
    if constexpr (kVec) {
      for (int64_t c = int64_t(lane) * 8; c < cols; c += 32 * 8)
        *reinterpret_cast<uint4*>(dst + c) =
            r >= 0 ? *reinterpret_cast<const uint4*>(a.src + r * cols + c) : uint4{0u, 0u, 0u, 0u};
    } else {
      for (int64_t c = lane; c < cols; c += 32) dst[c] = r >= 0 ? a.src[r * cols + c] : uint16_t(0);
    }
  }
}

// The rows move as V units: uint4 (16 bytes) when the rows allow, else one value (uint16_t for
// BF16, uint32_t for float32); `units` per row.
template <typename V>
__global__ void unpad_groups_kernel(UnpadGroups a, int64_t units) {
  const int lane = threadIdx.x & 31;
  FOR_EACH_WARP_ROW(p, a.layout.groups * a.layout.cap) {
    const int64_t r = compact_row(a.layout, p);
    if (r < 0) continue;  // uniform over the warp
    const V* src = static_cast<const V*>(a.src) + p * units;
    V* dst = static_cast<V*>(a.dst) + r * units;
    for (int64_t c = lane; c < units; c += 32) dst[c] = src[c];
  }
}

#undef FOR_EACH_WARP_ROW

// Launches a move over the padded rows of p: `wide`, 16 bytes per lane and step, where a row
// is whole 16-byte chunks (cols a multiple of `per_16_bytes` values) and both buffers are
// 16-byte aligned, else `narrow`.
template <typename P>
cudaError_t launch_over_padded_rows(const P& p, int64_t per_16_bytes, void (*wide)(P),
                                    void (*narrow)(P), cudaStream_t stream) {
  const int64_t rows = p.layout.groups * p.layout.cap;
  if (rows == 0 || p.layout.cols == 0) return cudaSuccess;
  const bool vec =
      p.layout.cols % per_16_bytes == 0 && aligned_to(p.dst, 16) && aligned_to(p.src, 16);
  void (*const move_rows)(P) = vec ? wide : narrow;
  move_rows<<<grid_for(rows, kRowWarps), kRowThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t pad_groups(const PadGroups& p, cudaStream_t stream) {
  return launch_over_padded_rows(p, 8, pad_groups_kernel<true>, pad_groups_kernel<false>, stream);
}

cudaError_t unpad_groups(const UnpadGroups& p, cudaStream_t stream) {
  const int64_t rows = p.layout.groups * p.layout.cap;
  if (rows == 0 || p.layout.cols == 0) return cudaSuccess;
  if (p.elem_bytes != 2 && p.elem_bytes != 4) return cudaErrorInvalidValue;
  const int64_t bytes = p.layout.cols * p.elem_bytes;  // of a row
  const dim3 grid(grid_for(rows, kRowWarps)), block(kRowThreads);
  if (bytes % 16 == 0 && aligned_to(p.dst, 16) && aligned_to(p.src, 16))
    unpad_groups_kernel<uint4><<<grid, block, 0, stream>>>(p, bytes / 16);
  else if (p.elem_bytes == 2)
    unpad_groups_kernel<uint16_t><<<grid, block, 0, stream>>>(p, p.layout.cols);
  else
    unpad_groups_kernel<uint32_t><<<grid, block, 0, stream>>>(p, p.layout.cols);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
