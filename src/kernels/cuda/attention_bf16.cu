// Causal attention forward on BF16 q, k, v with tensor cores (FlashAttention-2 structure). The
// float32 kernels (attention.cu) stay the path for float32 inputs; this one runs when q, k, v
// are BF16 (kernels/cuda/dispatch.cpp), on head-major buffers or on MLA's token-major
// projections (dispatch_mla.cpp): each operand's rows are found through its HeadRows strides,
// and the key's columns may come from two buffers (params.h).
//
// ---- Launch shape ----
// grid (ceil(seq / 64), bh), 128 threads. Block x owns query rows m0 = 64 q .. m0 + 63 with
// q = gridDim.x - 1 - x: the last query tiles see the most keys, so they start first. Warp w
// owns the 16 rows m0 + 16 w ..; per key tile of 64 keys it computes S = Q K^T (16 x 64, float32
// accumulators), the online softmax in registers, and O += P V with P packed to bf16 straight
// from the S accumulators (mma_bf16.cuh). Causal: key tiles 0 .. q only; tile q (the diagonal,
// query and key tiles are both 64 and aligned) masks key > row. Every row meets key m0 <= row
// in the diagonal tile, so its running max is finite after it (no fully masked rows).
//
// ---- Shared memory (bf16, rows padded by kPad) ----
//   Qs [64][DQ + 8]        the block's queries, loaded once
//   Ks [2][64][DQ + 8]     key tiles, double-buffered: tile t + 1 loads (cp.async) while tile t
//   Vs [2][64][DV + 8]     is computed
// DQ, DV are compile-time capacities (multiples of 64); columns past the real head dims and rows
// past seq are zero-filled. 104 KB at 192/128, 169 KB at 256/256 (above 48 KB the launcher raises
// the limit; sm_80 and sm_90 grant up to 163 / 227 KB).
//
// Softmax in base 2: scores are multiplied by scale * log2(e) so that exp2 replaces exp; the
// row sum l adds the float32 P, the P V product uses P rounded to bf16 (as FlashAttention does).
// lse = (m + log2 l) ln 2, natural log, as the float32 kernels store it.
#include "kernels/cuda/attention_bf16_common.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

using namespace tc;

constexpr int kThreads = 128;  // 4 warps x 16 query rows
constexpr int kQ = 64, kK = 64;

template <int DQ, int DV>
constexpr size_t fwd_smem() {
  return sizeof(bf16) * size_t(kQ * (DQ + kPad) + 2 * kK * (DQ + kPad) + 2 * kK * (DV + kPad));
}

template <int DQ, int DV>
__global__ void __launch_bounds__(kThreads) attention_fwd_bf16_kernel(AttentionForwardBf16 p) {
  constexpr int LQ = DQ + kPad, LV = DV + kPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + kQ * LQ;
  bf16* Vs = Ks + 2 * kK * LQ;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t bh = blockIdx.y, seq = p.seq, dq = p.qk_dim, dv = p.v_dim;
  const int qtile = int(gridDim.x - 1 - blockIdx.x);
  const int64_t m0 = int64_t(qtile) * kQ;
  const HeadOf at{bh, p.heads};
  const QkvRows in = qkv_rows(p, at);
  const RowSource &qg = in.q, &kg = in.k, &vg = in.v;

  load_tile_async<kQ, DQ, kThreads>(Qs, qg, m0, seq, dq);
  load_tile_async<kK, DQ, kThreads>(Ks, kg, 0, seq, dq);
  load_tile_async<kK, DV, kThreads>(Vs, vg, 0, seq, dv);
  cp_async_commit();

  const float c = p.scale * kLog2e;
  float o[DV / 8][4];
  zero_acc(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g and g + 8 of the warp
  const int row_local0 = warp * 16 + g;                        // + 8 r

  const int n_tiles = qtile + 1;
  for (int t = 0; t < n_tiles; ++t) {
    const int buf = t & 1;
    if (t + 1 < n_tiles) {
      // Buffer buf ^ 1 was last read in iteration t - 1, which ended with a barrier.
      load_tile_async<kK, DQ, kThreads>(Ks + (buf ^ 1) * kK * LQ, kg, int64_t(t + 1) * kK, seq,
                                        dq);
      load_tile_async<kK, DV, kThreads>(Vs + (buf ^ 1) * kK * LV, vg, int64_t(t + 1) * kK, seq,
                                        dv);
      cp_async_commit();
      cp_async_wait<1>();  // everything but tile t + 1 has landed (this thread's copies)
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // ... and every thread's copies are visible

    float s[kK / 8][4];
    zero_acc(s);
    mma_abt<kK / 8, DQ>(s, Qs + warp * 16 * LQ, LQ, Ks + buf * kK * LQ, LQ);

    const bool diag = t == qtile;
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nb = 0; nb < kK / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nb][e] * c;
        // Diagonal tile: key (nb 8 + 2 t4 + e % 2) against row (row_local0 + 8 (e / 2)).
        if (diag && nb * 8 + 2 * t4 + (e & 1) > row_local0 + 8 * (e >> 1)) x = -INFINITY;
        s[nb][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    float corr[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // The four lanes of a quad hold the same two rows.
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFullMask, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFullMask, mx[r], 2));
      corr[r] = exp2_approx(m[r] - mx[r]);  // 0 on the first tile (m = -inf, mx finite)
      m[r] = mx[r];
    }
#pragma unroll
    for (int nb = 0; nb < kK / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = exp2_approx(s[nb][e] - m[e >> 1]);
        s[nb][e] = pv;
        sum[e >> 1] += pv;
      }
    // l stays a per-lane partial sum (the quad's lanes share corr); reduced once at the end.
#pragma unroll
    for (int r = 0; r < 2; ++r) l[r] = l[r] * corr[r] + sum[r];
#pragma unroll
    for (int nb = 0; nb < DV / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[nb][e] *= corr[e >> 1];

    uint32_t pa[kK / 16][4];
    acc_to_a(s, pa);
    mma_ab_reg<DV / 8, kK / 16>(o, pa, Vs + buf * kK * LV, LV);
    __syncthreads();  // Ks / Vs[buf] are reloaded in iteration t + 1
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(kFullMask, l[r], 1);
    l[r] += __shfl_xor_sync(kFullMask, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = m0 + row_local0 + 8 * r;
    if (i >= seq) continue;  // rows past the end: computed on zeros, never stored
    const float inv = 1.0f / l[r];
    if (p.o_f32) {
      float* orow = static_cast<float*>(p.o) + at.offset(p.o_rows) + i * p.o_rows.row;
#pragma unroll
      for (int nb = 0; nb < DV / 8; ++nb) {
        const int col = nb * 8 + 2 * t4;  // dv is a multiple of 8: col + 1 < dv with col
        if (col < dv)
          *reinterpret_cast<float2*>(orow + col) =
              make_float2(o[nb][2 * r] * inv, o[nb][2 * r + 1] * inv);
      }
    } else {
      bf16* orow = static_cast<bf16*>(p.o) + at.offset(p.o_rows) + i * p.o_rows.row;
#pragma unroll
      for (int nb = 0; nb < DV / 8; ++nb) {
        const int col = nb * 8 + 2 * t4;
        if (col < dv)
          *reinterpret_cast<uint32_t*>(orow + col) =
              pack_bf16(o[nb][2 * r] * inv, o[nb][2 * r + 1] * inv);
      }
    }
    if (t4 == 0) p.lse[bh * seq + i] = (m[r] + __log2f(l[r])) * kLn2;  // [bh, seq]
  }
}

template <int DQ, int DV>
cudaError_t launch_fwd(const AttentionForwardBf16& p, cudaStream_t stream) {
  constexpr size_t smem = fwd_smem<DQ, DV>();
  auto kernel = attention_fwd_bf16_kernel<DQ, DV>;
  if (smem > 48 * 1024) {
    cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(unsigned((p.seq + kQ - 1) / kQ), unsigned(p.bh));
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

bool attention_bf16_forward_supported(int64_t qk_dim, int64_t v_dim) {
  return fwd_capacity(qk_dim, v_dim).dq != 0;
}

size_t attention_bf16_forward_smem_bytes(int64_t qk_dim, int64_t v_dim) {
  const Capacity cap = fwd_capacity(qk_dim, v_dim);
  switch (cap.id) {
    case 0: return fwd_smem<64, 64>();
    case 1: return fwd_smem<128, 128>();
    case 2: return fwd_smem<192, 128>();
    case 3: return fwd_smem<256, 256>();
    default: return 0;
  }
}

cudaError_t attention_forward_bf16(const AttentionForwardBf16& p, cudaStream_t stream) {
  if (p.bh == 0 || p.seq == 0) return cudaSuccess;
  if (p.bh > 65535) return cudaErrorInvalidValue;
  switch (fwd_capacity(p.qk_dim, p.v_dim).id) {
    case 0: return launch_fwd<64, 64>(p, stream);
    case 1: return launch_fwd<128, 128>(p, stream);
    case 2: return launch_fwd<192, 128>(p, stream);
    case 3: return launch_fwd<256, 256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace dsv3::cuda
