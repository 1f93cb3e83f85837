// Causal attention backward from lse on BF16 q, k, v, d_o with tensor cores (FlashAttention-2
// structure without atomics, like the float32 kernels of attention_backward.cu). Three kernels:
//   1. rows: D_i = dO_i . O_i (float32), one warp per query row;
//   2. dkv:  grid (ceil(seq / 64), bh), 128 threads; block x owns keys j0 = 64 x ..; warp w owns
//            16 of them. For each query tile of 16 rows from j0 on (causal) it computes
//            S^T = K Q^T and dP^T = V dO^T (16 keys x 16 queries per warp), P^T = exp2(S^T c -
//            lse_i log2 e), dS^T = P^T (dP^T - D_i), then dV += P^T dO and dK += dS^T Q with P^T
//            and dS^T packed to bf16 from the accumulators. d_k, d_v (float32) of its keys are
//            written once at the end.
//   3. dq:   grid (ceil(seq / 64), bh), 128 threads; block owns 64 query rows (the last tiles
//            first), warp w 16 of them; per key tile of 64 (two products of 32 keys) up to
//            the diagonal: S = Q K^T,
//            dP = dO V^T, dS = P (dP - D), dQ += dS K. d_q written once: float32, or BF16
//            with the query rope undone in the store (AttentionBackwardBf16::d_q_bf16).
// S and dP are computed in both tile kernels: the price of owning every output row in one block
// (deterministic, run-to-run identical) instead of adding dQ with atomics.
// Operands are found through their HeadRows strides (params.h), as in the forward; the dkv
// kernel writes d_k's first k_split columns and d_v in float32 or BF16 (MLA's d_kv) and d_k's
// other columns (MLA's rope key, shared by the heads) to d_k2, per head, for the caller to sum.
//
// Masking: query and key tiles are aligned (64 = 4 x 16), so only tiles that reach the diagonal
// (or run past seq) are masked element by element: j > i and i >= seq give P = dS = 0. Row 0
// has one key: its softmax is the constant 1, so P = 1 and dS = 0 exactly, as in the float32
// kernels. Rows and keys past seq are zero-filled in shared memory and never stored.
//
// Shared memory (bf16 tiles, rows padded by kPad; DQ, DV the capacities):
//   dkv: Ks [64][DQ+8], Vs [64][DV+8] once; Qs [2][16][DQ+8], dOs [2][16][DV+8] double-buffered;
//        Ls, Ds [2][16] float (lse log2 e and D of the query tile). 65 KB at 192/128.
//   dq:  Qs [64][DQ+8], dOs [64][DV+8] once; Ks [2][64][DQ+8], Vs [2][64][DV+8]. 129 KB at
//        192/128.
// Registers: the dkv kernel keeps d_k and d_v of 16 keys per warp, (DQ + DV) / 2 floats per
// thread), hence the 16-query tile (S^T, dP^T take 8 floats each; 250 registers, no spills at
// 192/128 with nvcc 13.0) and the 192/128 capacity. The dq kernel: 168 registers at 192/128.
#include "kernels/cuda/attention_bf16_common.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {
namespace {

using namespace tc;

constexpr int kThreads = 128;
constexpr int kKeyTile = 64;  // dkv: keys per block (16 per warp)
constexpr int kQTile = 16;    // dkv: queries per step
constexpr int kRowTile = 64;  // dq: queries per block (16 per warp)
constexpr int kKTile = 64;    // dq: keys per step (loaded together)
constexpr int kKHalf = 32;    // dq: keys per product
static_assert(kKeyTile % kQTile == 0 && kRowTile == kKTile, "aligned causal tiles");

template <int DQ, int DV>
constexpr size_t dkv_smem() {
  return sizeof(bf16) * size_t(kKeyTile * (DQ + kPad) + kKeyTile * (DV + kPad) +
                               2 * kQTile * (DQ + kPad) + 2 * kQTile * (DV + kPad)) +
         sizeof(float) * size_t(4 * kQTile);
}
template <int DQ, int DV>
constexpr size_t dq_smem() {
  return sizeof(bf16) * size_t(kRowTile * (DQ + kPad) + kRowTile * (DV + kPad) +
                               2 * kKTile * (DQ + kPad) + 2 * kKTile * (DV + kPad));
}

// D_i = dO_i . O_i, one warp per row (grid-stride; the loop bound is warp-uniform).
__global__ void __launch_bounds__(256) attention_bf16_rows_kernel(AttentionBackwardBf16 p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int64_t rows = p.bh * p.seq, dv = p.v_dim;
  for (int64_t row = int64_t(blockIdx.x) * warps + warp; row < rows;
       row += int64_t(gridDim.x) * warps) {
    const int64_t bh = row / p.seq, i = row % p.seq;
    const HeadOf at{bh, p.heads};
    const bf16* gb = at.bf16_rows(p.d_o, p.d_o_rows) + i * p.d_o_rows.row;
    const int64_t o_at = at.offset(p.o_rows) + i * p.o_rows.row;
    float acc = 0.0f;
    if (p.o_f32) {
      const float* o = static_cast<const float*>(p.o) + o_at;
      for (int64_t c = lane; c < dv; c += 32) acc = fmaf(__bfloat162float(gb[c]), o[c], acc);
    } else {
      const bf16* o = static_cast<const bf16*>(p.o) + o_at;
      for (int64_t c = lane; c < dv; c += 32)
        acc = fmaf(__bfloat162float(gb[c]), __bfloat162float(o[c]), acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) p.d_rows[row] = acc;
  }
}

// Where head bh's q, k, v and d_o rows come from (both tile kernels read all four).
struct Inputs {
  QkvRows qkv;
  RowSource d_o;
  __device__ __forceinline__ Inputs(const AttentionBackwardBf16& p, const HeadOf& at)
      : qkv(qkv_rows(p, at)),
        d_o(rows_of(at.bf16_rows(p.d_o, p.d_o_rows), p.d_o_rows.row, p.v_dim)) {}
};

// The query tile's lse (times log2 e) and D into Ls / Ds (plain stores; the barrier that makes
// the cp.async tiles visible covers them too). Rows past seq get 0: they are masked.
__device__ __forceinline__ void load_rows(float* Ls, float* Ds, const AttentionBackwardBf16& p,
                                          int64_t bh, int64_t i0, int n) {
  for (int r = threadIdx.x; r < n; r += kThreads) {
    const int64_t i = i0 + r;
    Ls[r] = i < p.seq ? p.lse[bh * p.seq + i] * kLog2e : 0.0f;
    Ds[r] = i < p.seq ? p.d_rows[bh * p.seq + i] : 0.0f;
  }
}

template <int DQ, int DV>
__global__ void __launch_bounds__(kThreads) attention_bf16_dkv_kernel(AttentionBackwardBf16 p) {
  constexpr int LQ = DQ + kPad, LV = DV + kPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + kKeyTile * LQ;
  bf16* Qs = Vs + kKeyTile * LV;   // [2][kQTile][LQ]
  bf16* dOs = Qs + 2 * kQTile * LQ;  // [2][kQTile][LV]
  float* Ls = reinterpret_cast<float*>(dOs + 2 * kQTile * LV);  // [2][kQTile]
  float* Ds = Ls + 2 * kQTile;                                   // [2][kQTile]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t bh = blockIdx.y, seq = p.seq, dq = p.qk_dim, dv = p.v_dim;
  const int64_t j0 = int64_t(blockIdx.x) * kKeyTile;  // block 0 has the most query tiles
  const HeadOf at{bh, p.heads};
  const Inputs in(p, at);
  const RowSource &qg = in.qkv.q, &kg = in.qkv.k, &vg = in.qkv.v, &gg = in.d_o;

  load_tile_async<kKeyTile, DQ, kThreads>(Ks, kg, j0, seq, dq);
  load_tile_async<kKeyTile, DV, kThreads>(Vs, vg, j0, seq, dv);
  load_tile_async<kQTile, DQ, kThreads>(Qs, qg, j0, seq, dq);
  load_tile_async<kQTile, DV, kThreads>(dOs, gg, j0, seq, dv);
  cp_async_commit();
  load_rows(Ls, Ds, p, bh, j0, kQTile);

  const float c = p.scale * kLog2e;
  float acc_k[DQ / 8][4], acc_v[DV / 8][4];
  zero_acc(acc_k);
  zero_acc(acc_v);
  const int64_t key0 = j0 + warp * 16 + g;  // this lane's keys: key0, key0 + 8

  const int n_tiles = int((seq - j0 + kQTile - 1) / kQTile);
  for (int t = 0; t < n_tiles; ++t) {
    const int buf = t & 1;
    const int64_t i0 = j0 + int64_t(t) * kQTile;
    if (t + 1 < n_tiles) {
      // Buffer buf ^ 1 was last read in iteration t - 1, which ended with a barrier.
      const int nb = buf ^ 1;
      load_tile_async<kQTile, DQ, kThreads>(Qs + nb * kQTile * LQ, qg, i0 + kQTile, seq, dq);
      load_tile_async<kQTile, DV, kThreads>(dOs + nb * kQTile * LV, gg, i0 + kQTile, seq, dv);
      cp_async_commit();
      load_rows(Ls + nb * kQTile, Ds + nb * kQTile, p, bh, i0 + kQTile, kQTile);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    const bf16* Qt = Qs + buf * kQTile * LQ;
    const bf16* dOt = dOs + buf * kQTile * LV;
    const float* Lt = Ls + buf * kQTile;
    const float* Dt = Ds + buf * kQTile;
    float st[kQTile / 8][4], dpt[kQTile / 8][4];  // [16 keys x 16 queries] of this warp
    zero_acc(st);
    zero_acc(dpt);
    mma_abt<kQTile / 8, DQ>(st, Ks + warp * 16 * LQ, LQ, Qt, LQ);
    mma_abt<kQTile / 8, DV>(dpt, Vs + warp * 16 * LV, LV, dOt, LV);

    // Tiles before the diagonal and inside seq need no mask (block-uniform test).
    const bool edge = i0 < j0 + kKeyTile || i0 + kQTile > seq;
#pragma unroll
    for (int nb = 0; nb < kQTile / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int il = nb * 8 + 2 * t4 + (e & 1);  // query within the tile
        const int64_t i = i0 + il, j = key0 + 8 * (e >> 1);
        float pv = exp2_approx(st[nb][e] * c - Lt[il]);
        float ds = pv * (dpt[nb][e] - Dt[il]);
        if (edge) {
          if (i >= seq || j > i) pv = ds = 0.0f;
          else if (i == 0) pv = 1.0f, ds = 0.0f;
        }
        st[nb][e] = pv;
        dpt[nb][e] = ds;
      }
    uint32_t pa[kQTile / 16][4], da[kQTile / 16][4];
    acc_to_a(st, pa);
    acc_to_a(dpt, da);
    mma_ab_reg<DV / 8, kQTile / 16>(acc_v, pa, dOt, LV);  // dV += P^T dO
    mma_ab_reg<DQ / 8, kQTile / 16>(acc_k, da, Qt, LQ);   // dK += dS^T Q (scale below)
    __syncthreads();  // Qs / dOs / Ls / Ds [buf] are reloaded in iteration t + 1
  }

  // d_k's columns [0, k_split) and d_v in float32 or bf16; d_k's [k_split, dq) to d_k2 (float32).
  const int64_t dk_at = at.offset(p.d_k_rows), dk2_at = at.offset(p.d_k2_rows),
                dv_at = at.offset(p.d_v_rows);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = key0 + 8 * r;
    if (j >= seq) continue;
#pragma unroll
    for (int nb = 0; nb < DQ / 8; ++nb) {
      const int col = nb * 8 + 2 * t4;  // head dims and k_split are multiples of 8: the pair
      if (col >= dq) continue;          // lies in one part
      const float x = acc_k[nb][2 * r] * p.scale, y = acc_k[nb][2 * r + 1] * p.scale;
      if (col >= p.k_split)
        *reinterpret_cast<float2*>(p.d_k2 + dk2_at + j * p.d_k2_rows.row + (col - p.k_split)) =
            make_float2(x, y);
      else if (p.d_kv_bf16)
        *reinterpret_cast<uint32_t*>(static_cast<bf16*>(p.d_k) + dk_at + j * p.d_k_rows.row +
                                     col) = pack_bf16(x, y);
      else
        *reinterpret_cast<float2*>(static_cast<float*>(p.d_k) + dk_at + j * p.d_k_rows.row +
                                   col) = make_float2(x, y);
    }
#pragma unroll
    for (int nb = 0; nb < DV / 8; ++nb) {
      const int col = nb * 8 + 2 * t4;
      if (col >= dv) continue;
      const float x = acc_v[nb][2 * r], y = acc_v[nb][2 * r + 1];
      if (p.d_kv_bf16)
        *reinterpret_cast<uint32_t*>(static_cast<bf16*>(p.d_v) + dv_at + j * p.d_v_rows.row +
                                     col) = pack_bf16(x, y);
      else
        *reinterpret_cast<float2*>(static_cast<float*>(p.d_v) + dv_at + j * p.d_v_rows.row +
                                   col) = make_float2(x, y);
    }
  }
}

// The dq kernel's store into d_q_bf16 (params.h): this thread's rows i0 and i0 + 8, columns
// (col, col + 1) of each 8-column block; a rope pair is such a column pair (rope_offset even),
// rotated back from the float32 values the plain store would write.
template <int DQ>
__device__ __forceinline__ void store_d_q_rotated_back(const AttentionBackwardBf16& p,
                                                       const HeadOf& at, const float (*acc)[4],
                                                       int64_t i0, int t4) {
  const int64_t half = p.rope_dim / 2;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = i0 + 8 * r;
    if (i >= p.seq) continue;
    const int64_t pos = p.positions[at.b * p.seq + i];
    const bool valid = pos >= 0 && pos < p.max_pos;
    if (!valid && at.h == 0 && t4 == 0)
      report_index_error(p.error, kBadPosition, at.b * p.seq + i, pos, p.max_pos);
    uint16_t* dqr = p.d_q_bf16 + at.offset(p.d_q_rows) + i * p.d_q_rows.row;
#pragma unroll
    for (int nb = 0; nb < DQ / 8; ++nb) {
      const int col = nb * 8 + 2 * t4;
      if (col >= p.qk_dim) continue;
      float2 v = make_float2(acc[nb][2 * r] * p.scale, acc[nb][2 * r + 1] * p.scale);
      const int64_t j = col - p.rope_offset;
      if (valid && j >= 0 && j < p.rope_dim)
        v = rope_rotate_pair(v.x, v.y, p.rope_cos[pos * half + j / 2],
                             -p.rope_sin[pos * half + j / 2]);
      *reinterpret_cast<uint32_t*>(dqr + col) = pack2_bf16(v.x, v.y);
    }
  }
}

template <int DQ, int DV>
__global__ void __launch_bounds__(kThreads) attention_bf16_dq_kernel(AttentionBackwardBf16 p) {
  constexpr int LQ = DQ + kPad, LV = DV + kPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* dOs = Qs + kRowTile * LQ;
  bf16* Ks = dOs + kRowTile * LV;  // [2][kKTile][LQ]
  bf16* Vs = Ks + 2 * kKTile * LQ;  // [2][kKTile][LV]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t bh = blockIdx.y, seq = p.seq, dq = p.qk_dim, dv = p.v_dim;
  const int qtile = int(gridDim.x - 1 - blockIdx.x);  // the longest blocks start first
  const int64_t m0 = int64_t(qtile) * kRowTile;
  const HeadOf at{bh, p.heads};
  const Inputs in(p, at);
  const RowSource &qg = in.qkv.q, &kg = in.qkv.k, &vg = in.qkv.v, &gg = in.d_o;

  load_tile_async<kRowTile, DQ, kThreads>(Qs, qg, m0, seq, dq);
  load_tile_async<kRowTile, DV, kThreads>(dOs, gg, m0, seq, dv);
  load_tile_async<kKTile, DQ, kThreads>(Ks, kg, 0, seq, dq);
  load_tile_async<kKTile, DV, kThreads>(Vs, vg, 0, seq, dv);
  cp_async_commit();

  // This lane's rows: row_l0 and row_l0 + 8 of the block.
  const int row_l0 = warp * 16 + g;
  float L[2], D[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = m0 + row_l0 + 8 * r;
    L[r] = i < seq ? p.lse[bh * seq + i] * kLog2e : 0.0f;  // past seq: finite, never stored
    D[r] = i < seq ? p.d_rows[bh * seq + i] : 0.0f;
  }
  const float c = p.scale * kLog2e;
  float acc[DQ / 8][4];
  zero_acc(acc);

  const int n_tiles = qtile + 1;
  for (int t = 0; t < n_tiles; ++t) {
    const int buf = t & 1;
    if (t + 1 < n_tiles) {
      const int nb = buf ^ 1;
      load_tile_async<kKTile, DQ, kThreads>(Ks + nb * kKTile * LQ, kg, int64_t(t + 1) * kKTile,
                                            seq, dq);
      load_tile_async<kKTile, DV, kThreads>(Vs + nb * kKTile * LV, vg, int64_t(t + 1) * kKTile,
                                            seq, dv);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    // The 64-key tile in two halves of 32: S, dP and dS of a half take 16 floats each, which
    // keeps the 192/128 kernel inside 255 registers next to the 96 of dQ.
#pragma unroll 1
    for (int h = 0; h < kKTile / kKHalf; ++h) {
      const bf16* Kt = Ks + (buf * kKTile + h * kKHalf) * LQ;
      const bf16* Vt = Vs + (buf * kKTile + h * kKHalf) * LV;
      float s[kKHalf / 8][4], dp[kKHalf / 8][4];
      zero_acc(s);
      zero_acc(dp);
      mma_abt<kKHalf / 8, DQ>(s, Qs + warp * 16 * LQ, LQ, Kt, LQ);
      mma_abt<kKHalf / 8, DV>(dp, dOs + warp * 16 * LV, LV, Vt, LV);

      const bool diag = t == qtile;
#pragma unroll
      for (int nb = 0; nb < kKHalf / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          const float pv = exp2_approx(s[nb][e] * c - L[r]);
          float ds = pv * (dp[nb][e] - D[r]);
          if (diag) {
            const int jl = h * kKHalf + nb * 8 + 2 * t4 + (e & 1), il = row_l0 + 8 * r;
            // j > i masked; row 0 (il 0 of tile 0) has dS = 0 exactly.
            if (jl > il || (qtile == 0 && il == 0)) ds = 0.0f;
          }
          s[nb][e] = ds;
        }
      uint32_t da[kKHalf / 16][4];
      acc_to_a(s, da);
      mma_ab_reg<DQ / 8, kKHalf / 16>(acc, da, Kt, LQ);  // dQ += dS K (scale below)
    }
    __syncthreads();
  }

  if (p.d_q_bf16) {
    store_d_q_rotated_back<DQ>(p, at, acc, m0 + row_l0, t4);
    return;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = m0 + row_l0 + 8 * r;
    if (i >= seq) continue;
    float* dqr = p.d_q + at.offset(p.d_q_rows) + i * p.d_q_rows.row;
#pragma unroll
    for (int nb = 0; nb < DQ / 8; ++nb) {
      const int col = nb * 8 + 2 * t4;
      if (col < dq)
        *reinterpret_cast<float2*>(dqr + col) =
            make_float2(acc[nb][2 * r] * p.scale, acc[nb][2 * r + 1] * p.scale);
    }
  }
}

constexpr size_t bigger(size_t a, size_t b) { return a > b ? a : b; }

cudaError_t allow_smem(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

template <int DQ, int DV>
cudaError_t launch_bwd(const AttentionBackwardBf16& p, cudaStream_t stream) {
  constexpr size_t smem_kv = dkv_smem<DQ, DV>(), smem_q = dq_smem<DQ, DV>();
  auto dkv = attention_bf16_dkv_kernel<DQ, DV>;
  auto dqk = attention_bf16_dq_kernel<DQ, DV>;
  cudaError_t e = allow_smem(reinterpret_cast<const void*>(dkv), smem_kv);
  if (e == cudaSuccess) e = allow_smem(reinterpret_cast<const void*>(dqk), smem_q);
  if (e != cudaSuccess) return e;
  attention_bf16_rows_kernel<<<grid_for(p.bh * p.seq, 8), 256, 0, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  const dim3 grid_kv(unsigned((p.seq + kKeyTile - 1) / kKeyTile), unsigned(p.bh));
  dkv<<<grid_kv, kThreads, smem_kv, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  const dim3 grid_q(unsigned((p.seq + kRowTile - 1) / kRowTile), unsigned(p.bh));
  dqk<<<grid_q, kThreads, smem_q, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

bool attention_bf16_backward_supported(int64_t qk_dim, int64_t v_dim) {
  return bwd_capacity(qk_dim, v_dim).id >= 0;
}

size_t attention_bf16_backward_smem_bytes(int64_t qk_dim, int64_t v_dim) {
  switch (bwd_capacity(qk_dim, v_dim).id) {
    case 0: return bigger(dkv_smem<64, 64>(), dq_smem<64, 64>());
    case 1: return bigger(dkv_smem<128, 128>(), dq_smem<128, 128>());
    case 2: return bigger(dkv_smem<192, 128>(), dq_smem<192, 128>());
    default: return 0;
  }
}

cudaError_t attention_backward_bf16(const AttentionBackwardBf16& p, cudaStream_t stream) {
  if (p.bh == 0 || p.seq == 0) return cudaSuccess;
  if (p.bh > 65535) return cudaErrorInvalidValue;
  switch (bwd_capacity(p.qk_dim, p.v_dim).id) {
    case 0: return launch_bwd<64, 64>(p, stream);
    case 1: return launch_bwd<128, 128>(p, stream);
    case 2: return launch_bwd<192, 128>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace dsv3::cuda
