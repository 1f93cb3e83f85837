#pragma once
// Warp-level BF16 tensor-core building blocks (sm_80 and later) for the attention kernels:
// cp.async tile loads, ldmatrix, mma.sync.m16n8k16 (bf16 inputs, float32 accumulation).
//
// ---- Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16") ----
// lane = 4 g + t (g = lane / 4 in 0..7, t = lane % 4). Each 32-bit register holds two bf16, the
// lower column (or k) index in the low half.
//   A 16x16 (row-major):  a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B 16x8  (k x n):      b0 (k 2t..2t+1, n g)  b1 (k 2t+8..2t+9, n g)
//   C 16x8  (float):      c0, c1 (g, 2t..2t+1)  c2, c3 (g+8, 2t..2t+1)
// ldmatrix.x4 loads four 8x8 b16 matrices; lanes 8i .. 8i+7 give the row addresses of matrix i
// and register i of lane l receives (row l / 4, columns 2 (l % 4) ..+1) of matrix i, so:
//   - A from a row-major tile: lane l points at row l % 16, column 8 (l / 16);
//   - B = M^T from a row-major M [n][k] (K for Q K^T): rows are n, columns k, non-transposed;
//   - B = M from a row-major M [k][n] (V for P V): .trans hands lane l the column
//     (M[2t][g], M[2t+1][g]) of each 8x8 matrix, which is b0 / b1.
// The C fragment of a 16x16 pair of n-blocks is the A fragment of the next product once packed
// to bf16 (FlashAttention-2's register reuse of P): see acc_to_a.
//
// Shared-memory tiles are row-major with kPad bf16 of padding per row. With head dims that are
// multiples of 64 (the instantiated capacities) a row is 128 n + 16 bytes, so the eight 16-byte
// rows one ldmatrix phase reads fall in eight different bank groups: no conflicts.
#include <cuda_bf16.h>

#include <cstdint>

namespace dsv3::cuda::tc {

using bf16 = __nv_bfloat16;

constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The CPU emulation of CUDA (tests/cuda_emulation) has no PTX: there each instruction below is
// a call into its emulation (tensor_core.cpp), with the same operands.
#ifndef DSV3_CUDA_EMULATION
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}
#endif

// 16 bytes global -> shared, asynchronously; with valid false the 16 bytes are zero-filled
// (src-size 0 reads nothing; gmem must still be a valid address).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#ifdef DSV3_CUDA_EMULATION
  ::dsv3emu::cp_async16(smem, gmem, valid);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)),
               "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef DSV3_CUDA_EMULATION
  ::dsv3emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef DSV3_CUDA_EMULATION
  ::dsv3emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
#ifdef DSV3_CUDA_EMULATION
  ::dsv3emu::ldmatrix_x4(r, p, false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
#ifdef DSV3_CUDA_EMULATION
  ::dsv3emu::ldmatrix_x4(r, p, true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}

// d += a b (16x8 += 16x16 * 16x8)
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
#ifdef DSV3_CUDA_EMULATION
  ::dsv3emu::mma_m16n8k16_bf16(d, a, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  uint32_t u;
  __builtin_memcpy(&u, &v, sizeof u);  // a register move; no type-punned pointer
  return u;
}

// 2^x; ex2.approx has a relative error of about 2^-22, far below the bf16 rounding of P, and
// gives +0 for -inf (masked scores).
__device__ __forceinline__ float exp2_approx(float x) {
#ifdef DSV3_CUDA_EMULATION
  return ::dsv3emu::ex2_approx_ftz(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

template <int NB>
__device__ __forceinline__ void zero_acc(float (&acc)[NB][4]) {
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
}

// Where a tile's rows come from: row r, columns [0, split) at a + r * lda, columns [split, dim)
// at b + r * ldb + (column - split). One buffer: b = a, ldb = lda, split = dim (rows_of).
// split, lda, ldb and dim are multiples of 8 and a, b 16-byte aligned, so every 16-byte chunk
// is aligned and lies wholly in one part.
struct RowSource {
  const bf16* a;
  int64_t lda;
  const bf16* b;
  int64_t ldb;
  int64_t split;
};
__device__ __forceinline__ RowSource rows_of(const bf16* g, int64_t ld, int64_t dim) {
  return {g, ld, g, ld, dim};
}

// Loads rows [row0, row0 + ROWS) x columns [0, COLS) of src (rows x dim of it exist) into a
// shared tile s [ROWS][COLS + kPad]; rows at or past `rows` and columns at or past `dim` become
// zero (so padding never carries NaN bit patterns into a product). Call from all THREADS threads.
template <int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void load_tile_async(bf16* s, const RowSource& src, int64_t row0,
                                                int64_t rows, int64_t dim) {
  constexpr int kChunks = COLS / 8, kLd = COLS + kPad;
  for (int idx = threadIdx.x; idx < ROWS * kChunks; idx += THREADS) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    const int64_t row = row0 + r;
    const bool valid = row < rows && c < dim;
    const bf16* g = !valid        ? src.a  // any mapped address: nothing is read
                    : c < src.split ? src.a + row * src.lda + c
                                    : src.b + row * src.ldb + (c - src.split);
    cp_async16(s + r * kLd + c, g, valid);
  }
}

// acc[16 x 8 NB] += A[16 x K] B[8 NB x K]^T; A rows at a (stride lda), B rows at b (stride ldb),
// both row-major bf16 in shared memory (so B^T's columns are B's rows: non-transposed ldmatrix).
template <int NB, int K>
__device__ __forceinline__ void mma_abt(float (&acc)[NB][4], const bf16* a, int lda, const bf16* b,
                                        int ldb) {
  static_assert(NB % 2 == 0 && K % 16 == 0, "whole 16x16 tiles");
  const int lane = threadIdx.x & 31;
  const bf16* a_lane = a + (lane & 15) * lda + (lane >> 4) * 8;
  // Matrices 0..3: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
  const bf16* b_lane = b + ((lane >> 4) * 8 + (lane & 7)) * ldb + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kc = 0; kc < K / 16; ++kc) {
    uint32_t af[4];
    ldmatrix_x4(af, a_lane + kc * 16);
#pragma unroll
    for (int np = 0; np < NB / 2; ++np) {
      uint32_t bf[4];
      ldmatrix_x4(bf, b_lane + np * 16 * ldb + kc * 16);
      mma_bf16(acc[2 * np], af, bf[0], bf[1]);
      mma_bf16(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// acc[16 x 8 NB] += A[16 x 16 KC] B[16 KC x 8 NB]; A as bf16 fragments in registers, B row-major
// [k][n] in shared memory (stride ldb), read with ldmatrix.trans.
template <int NB, int KC>
__device__ __forceinline__ void mma_ab_reg(float (&acc)[NB][4], const uint32_t (&a)[KC][4],
                                           const bf16* b, int ldb) {
  static_assert(NB % 2 == 0, "pairs of n-blocks");
  const int lane = threadIdx.x & 31;
  // Matrices 0..3: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
  const bf16* b_lane = b + (((lane >> 3) & 1) * 8 + (lane & 7)) * ldb + (lane >> 4) * 8;
#pragma unroll
  for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
    for (int np = 0; np < NB / 2; ++np) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, b_lane + kc * 16 * ldb + np * 16);
      mma_bf16(acc[2 * np], a[kc], bf[0], bf[1]);
      mma_bf16(acc[2 * np + 1], a[kc], bf[2], bf[3]);
    }
  }
}

// The C fragments of n-blocks 2 kc and 2 kc + 1 (16 rows x 16 columns) as the A fragment of
// k-chunk kc: a0 = rows g, cols 2t (block 2kc c0 c1), a1 = rows g+8 (c2 c3), a2/a3 the same of
// block 2kc + 1.
template <int NB>
__device__ __forceinline__ void acc_to_a(const float (&s)[NB][4], uint32_t (&a)[NB / 2][4]) {
#pragma unroll
  for (int kc = 0; kc < NB / 2; ++kc) {
    a[kc][0] = pack_bf16(s[2 * kc][0], s[2 * kc][1]);
    a[kc][1] = pack_bf16(s[2 * kc][2], s[2 * kc][3]);
    a[kc][2] = pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]);
    a[kc][3] = pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3]);
  }
}

}  // namespace dsv3::cuda::tc
