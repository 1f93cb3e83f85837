// Grouped GEMM on BF16 tensor cores (params.h, GroupedGemmBf16): every group's product in one
// launch, float32 accumulation, float32 or BF16 output. It exists for the routed experts in mixed
// precision, where cuBLAS's grouped call refuses BF16 inputs with float32 outputs and the
// fallback is one cuBLAS call per expert (hundreds of small launches per step).
//
// ---- Launch shape ----
// One block of 256 threads (2 x 4 warps) per 128 x 128 output tile, the tiles numbered group by
// group (GemmGroup::first_tile) and the grid striding over them. Warp (wm, wn) owns rows
// 64 wm .. +63 and columns 32 wn .. +31 of its tile: 4 x 4 accumulators of mma.m16n8k16.
// K runs in steps of 32 through a ring of kStages shared-memory buffers: the A and B tiles of
// steps s + 1 .. s + kStages - 1 load (cp.async) while step s computes, so about three steps of
// global-memory latency are hidden instead of one. One barrier per step: the buffer step s
// refills is the one step s - 1 read, and every thread has finished step s - 1 once it passes
// step s's barrier.
// (The first version's 64 x 64 tiles of 4 warps ran a bench-1b step's expert products slower
// than one cuBLAS call per expert on an H100: half the arithmetic per byte brought to shared
// memory. The 128 x 128 tiles with two buffers have not been timed; nor has this ring.)
//
// ---- Operand tiles in shared memory (rows padded by kPad bf16: no ldmatrix bank conflicts) ----
//   A k-major [m][k]: As [128][32 + 8], fragments by ldmatrix        (attention's Q)
//   A m-major [k][m]: As [32][128 + 8], fragments by ldmatrix.trans  (the weight gradient's d_y^T)
//   B k-major [n][k]: Bs [128][32 + 8], ldmatrix                     (attention's K)
//   B n-major [k][n]: Bs [32][128 + 8], ldmatrix.trans               (attention's V)
// Rows and columns past the group's sizes load as zeros, so an edge tile computes on zeros and
// stores only what lies inside C. The column dimension of each operand (K of a k-major one, M
// or N of the others) is a multiple of 8, so each 16-byte chunk is wholly inside or outside.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma_bf16.cuh"

namespace dsv3::cuda {
namespace {

using namespace tc;

constexpr int kThreads = 256;
constexpr int kTile = int(kGroupedGemmTile), kStep = 32;
constexpr int kWarpRows = 64, kWarpCols = 32;  // a warp's part of the tile (2 x 4 warps)
constexpr int kRowBlocks = kWarpRows / 16;     // its mma row blocks
constexpr int kKMajorLd = kStep + kPad;   // a [128][32] tile's padded row
constexpr int kMnMajorLd = kTile + kPad;  // a [32][128] tile's padded row
static_assert(kTile == 2 * kWarpRows && kTile == 4 * kWarpCols, "2 x 4 warps cover the tile");
constexpr int kOperandElems =
    kTile * kKMajorLd > kStep * kMnMajorLd ? kTile * kKMajorLd : kStep * kMnMajorLd;
constexpr int kStages = 4;
// The ring [stage][A, B][kOperandElems] in dynamic shared memory (80 KiB: two blocks an SM).
constexpr size_t kSmemBytes = size_t(kStages) * 2 * kOperandElems * sizeof(bf16);

// Rows [r0, r0 + ROWS) x columns [c0, c0 + COLS) of a row-major bf16 matrix g (ld elements a
// row; rows x cols of it exist) into s [ROWS][COLS + kPad], zeros outside. All threads call it.
template <int ROWS, int COLS>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int64_t ld, int64_t r0,
                                          int64_t rows, int64_t c0, int64_t cols) {
  constexpr int kChunks = COLS / 8, kLd = COLS + kPad;
  for (int idx = threadIdx.x; idx < ROWS * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    const int64_t row = r0 + r, col = c0 + c;
    const bool valid = row < rows && col < cols;
    cp_async16(s + r * kLd + c, valid ? g + row * ld + col : g, valid);
  }
}

// kBf16Out: C is BF16 (p.c_bf16), an instantiation of its own so that the float32 one keeps its
// registers (the two epilogues in one kernel spilled).
template <bool kBf16Out>
__global__ void __launch_bounds__(kThreads, 2) grouped_gemm_bf16_kernel(GroupedGemmBf16 p) {
  extern __shared__ __align__(16) bf16 ring[];  // [kStages][A, B][kOperandElems]
  const auto operand = [&](int stage, int which) { return ring + (stage * 2 + which) * kOperandElems; };
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp >> 2, wn = warp & 3;
  const int g4 = lane >> 2, t4 = lane & 3;
  for (int64_t tile = blockIdx.x; tile < p.tiles; tile += gridDim.x) {
    // This tile's group: the last whose first tile is at or before it.
    int64_t lo = 0, hi = p.group_count - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (p.groups[mid].first_tile <= tile)
        lo = mid;
      else
        hi = mid - 1;
    }
    const GemmGroup gr = p.groups[lo];
    const int64_t tiles_n = (gr.n + kTile - 1) / kTile, local = tile - gr.first_tile;
    const int64_t m0 = (local / tiles_n) * kTile, n0 = (local % tiles_n) * kTile;
    const bf16* a = reinterpret_cast<const bf16*>(gr.a);
    const bf16* b = reinterpret_cast<const bf16*>(gr.b);

    // Step s's tiles into its stage; a step past the end loads nothing. Either way one commit,
    // so that "all but the newest kStages - 2 groups" always means "up to step s".
    const int64_t steps = (gr.k + kStep - 1) / kStep;  // >= 1: groups with k 0 are not launched
    const auto load_step = [&](int64_t step) {
      if (step < steps) {
        const int buf = int(step % kStages);
        const int64_t k0 = step * kStep;
        if (p.a_k_major)
          load_tile<kTile, kStep>(operand(buf, 0), a, p.lda, m0, gr.m, k0, gr.k);
        else
          load_tile<kStep, kTile>(operand(buf, 0), a, p.lda, k0, gr.k, m0, gr.m);
        if (p.b_k_major)
          load_tile<kTile, kStep>(operand(buf, 1), b, p.ldb, n0, gr.n, k0, gr.k);
        else
          load_tile<kStep, kTile>(operand(buf, 1), b, p.ldb, k0, gr.k, n0, gr.n);
      }
      cp_async_commit();
    };

    float acc[kRowBlocks][4][4];
#pragma unroll
    for (int mb = 0; mb < kRowBlocks; ++mb) zero_acc(acc[mb]);
    for (int st = 0; st < kStages - 1; ++st) load_step(st);
    for (int64_t s = 0; s < steps; ++s) {
      cp_async_wait<kStages - 2>();  // step s has landed (this thread's copies) ...
      __syncthreads();  // ... every thread's, and every thread is done with step s - 1
      load_step(s + kStages - 1);  // into step s - 1's stage
      const int buf = int(s % kStages);
      const bf16* as = operand(buf, 0);
      const bf16* bs = operand(buf, 1);
#pragma unroll
      for (int kc = 0; kc < kStep / 16; ++kc) {
        uint32_t af[kRowBlocks][4];
#pragma unroll
        for (int mb = 0; mb < kRowBlocks; ++mb) {
          const int m = wm * kWarpRows + mb * 16;
          if (p.a_k_major) {
            // Lane l: row m + l % 16, columns 8 (l / 16) of the chunk (a0..a3 in order).
            ldmatrix_x4(af[mb], as + (m + (lane & 15)) * kKMajorLd + kc * 16 + (lane >> 4) * 8);
          } else {
            // Matrix i = l / 8 holds k rows 8 (i / 2) .., m columns 8 (i % 2) ..; transposed,
            // it is a_i of the fragment: (m g, k 2t..2t+1) comes from k rows 2t, 2t + 1.
            ldmatrix_x4_trans(af[mb], as + (kc * 16 + (lane & 7) + ((lane >> 4) & 1) * 8) *
                                               kMnMajorLd +
                                           m + ((lane >> 3) & 1) * 8);
          }
        }
#pragma unroll
        for (int np = 0; np < 2; ++np) {  // n-blocks 2 np and 2 np + 1 of the warp
          const int n = wn * kWarpCols + np * 16;
          uint32_t bf[4];
          if (p.b_k_major) {
            // Matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
            ldmatrix_x4(bf, bs + (n + (lane >> 4) * 8 + (lane & 7)) * kKMajorLd + kc * 16 +
                                ((lane >> 3) & 1) * 8);
          } else {
            // Matrices: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
            ldmatrix_x4_trans(bf, bs + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * kMnMajorLd +
                                      n + (lane >> 4) * 8);
          }
#pragma unroll
          for (int mb = 0; mb < kRowBlocks; ++mb) {
            mma_bf16(acc[mb][2 * np], af[mb], bf[0], bf[1]);
            mma_bf16(acc[mb][2 * np + 1], af[mb], bf[2], bf[3]);
          }
        }
      }
    }
    // The next tile's first loads refill stages this tile's last steps may still be reading.
    __syncthreads();

    // Each lane holds column pairs (2 t4, 2 t4 + 1): one 8-byte store (4 bytes of BF16) where C
    // allows it.
    const bool pairs =
        p.ldc % 2 == 0 && (reinterpret_cast<uintptr_t>(gr.c) & (kBf16Out ? 3 : 7)) == 0;
#pragma unroll
    for (int mb = 0; mb < kRowBlocks; ++mb)
#pragma unroll
      for (int nb = 0; nb < 4; ++nb)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t row = m0 + wm * kWarpRows + mb * 16 + g4 + 8 * half;
          const int64_t col = n0 + wn * kWarpCols + nb * 8 + 2 * t4;
          if (row >= gr.m || col >= gr.n) continue;
          float v0 = acc[mb][nb][2 * half], v1 = acc[mb][nb][2 * half + 1];
          if constexpr (kBf16Out) {  // (never accumulated)
            uint16_t* c = static_cast<uint16_t*>(gr.c) + row * p.ldc + col;
            const uint32_t packed = pack2_bf16(v0, v1);  // v0 in the low half
            if (pairs && col + 1 < gr.n) {
              *reinterpret_cast<uint32_t*>(c) = packed;
            } else {
              c[0] = uint16_t(packed);
              if (col + 1 < gr.n) c[1] = uint16_t(packed >> 16);
            }
          } else {
            float* c = static_cast<float*>(gr.c) + row * p.ldc + col;
            if (pairs && col + 1 < gr.n) {
              if (p.accumulate) {
                const float2 old = *reinterpret_cast<const float2*>(c);
                v0 += old.x;
                v1 += old.y;
              }
              *reinterpret_cast<float2*>(c) = make_float2(v0, v1);
            } else {
              c[0] = p.accumulate ? c[0] + v0 : v0;
              if (col + 1 < gr.n) c[1] = p.accumulate ? c[1] + v1 : v1;
            }
          }
        }
  }
}

}  // namespace

bool grouped_gemm_bf16_fits(int64_t lda, int64_t ldb, int64_t ldc) {
  return lda % 8 == 0 && ldb % 8 == 0 && ldc >= 1;
}

cudaError_t grouped_gemm_bf16(const GroupedGemmBf16& p, cudaStream_t stream) {
  if (p.tiles == 0 || p.group_count == 0) return cudaSuccess;
  const int64_t grid = p.tiles < (int64_t(1) << 30) ? p.tiles : (int64_t(1) << 30);
  // Past the 48 KiB default: opted in at each launch, as the attention kernels do (the setting
  // is per device).
  void (*const kernel)(GroupedGemmBf16) =
      p.c_bf16 ? grouped_gemm_bf16_kernel<true> : grouped_gemm_bf16_kernel<false>;
  const cudaError_t opted_in =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes));
  if (opted_in != cudaSuccess) return opted_in;
  kernel<<<unsigned(grid), kThreads, kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dsv3::cuda
