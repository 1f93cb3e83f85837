#pragma once
// The launchers of the CUDA kernels: one per kernel, each taking its parameter struct
// (kernels/cuda/params.h) and the stream to queue on. They return the launch's error (an
// invalid configuration, say) without synchronising; kernels/cuda/dispatch.cpp turns it into a
// dsv3::Error. Faults inside a kernel surface at the next synchronising call.
#include <cuda_runtime_api.h>

#include "kernels/cuda/params.h"

namespace dsv3::cuda {

cudaError_t rmsnorm_forward(const RmsNormForward& p, cudaStream_t stream);
// The routers' warp selection (warp_select.cuh) holds up to this many routed experts.
constexpr int kMaxWarpSelectExperts = 512;
cudaError_t rmsnorm_backward(const RmsNormBackward& p, cudaStream_t stream);
// The RMSNorm weight gradient is summed per chunk of rows, then over the chunks in order. Up to
// kRmsNormFusedMaxDim columns the d_x kernel sums the chunks (a block of 8 warps each, about 256
// chunks at most, at least 8 rows: one per warp); wider rows take a separate pass over
// 128-row chunks. rmsnorm_dw_chunks is the rows of RmsNormBackward::d_w_partial.
constexpr int64_t kRmsNormFusedMaxDim = 2048;
inline int64_t rmsnorm_dw_chunk_rows(int64_t rows, int64_t dim) {
  if (dim > kRmsNormFusedMaxDim) return 128;
  const int64_t rows_per_chunk = (rows + 255) / 256;
  return rows_per_chunk <= 8 ? 8 : (rows_per_chunk + 7) / 8 * 8;
}
inline int64_t rmsnorm_dw_chunks(int64_t rows, int64_t dim) {
  const int64_t chunk_rows = rmsnorm_dw_chunk_rows(rows, dim);
  return (rows + chunk_rows - 1) / chunk_rows;
}
cudaError_t rope(const Rope& p, cudaStream_t stream);
cudaError_t swiglu_forward(const SwiGlu& p, cudaStream_t stream);
cudaError_t swiglu_backward(const SwiGlu& p, cudaStream_t stream);
cudaError_t cross_entropy(const CrossEntropy& p, cudaStream_t stream);
cudaError_t embedding_forward(const Embedding& p, cudaStream_t stream);
cudaError_t embedding_backward(const Embedding& p, cudaStream_t stream);
constexpr int64_t kEmbeddingBackwardMaxDim = 32768;  // 1024 threads x 32 columns held each
cudaError_t tokens_to_heads(const HeadMove& p, cudaStream_t stream);
cudaError_t heads_to_tokens(const HeadMove& p, cudaStream_t stream);
cudaError_t copy_columns(const ColumnCopy& p, cudaStream_t stream);
cudaError_t attention_forward(const AttentionForward& p, cudaStream_t stream);
cudaError_t attention_backward(const AttentionBackward& p, cudaStream_t stream);
// Dynamic shared memory per block of the attention backward kernels at these head dims (the
// caller checks it against the device's opt-in limit to give a clear message).
size_t attention_backward_smem_bytes(int64_t qk_dim, int64_t v_dim);
// BF16 tensor-core attention (attention_bf16.cu, attention_bf16_backward.cu). supported: a
// kernel exists for these head dims (multiples of 8, capacities in the .cu files); smem: its
// dynamic shared memory per block (0 when unsupported), for the caller to check against the
// device's opt-in limit.
bool attention_bf16_forward_supported(int64_t qk_dim, int64_t v_dim);
size_t attention_bf16_forward_smem_bytes(int64_t qk_dim, int64_t v_dim);
cudaError_t attention_forward_bf16(const AttentionForwardBf16& p, cudaStream_t stream);
bool attention_bf16_backward_supported(int64_t qk_dim, int64_t v_dim);
size_t attention_bf16_backward_smem_bytes(int64_t qk_dim, int64_t v_dim);
cudaError_t attention_backward_bf16(const AttentionBackwardBf16& p, cudaStream_t stream);
// Elementwise dtype conversions (round to nearest even), for the float32 fallback.
cudaError_t bf16_to_f32(const uint16_t* x, float* y, int64_t n, cudaStream_t stream);
cudaError_t f32_to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t stream);
cudaError_t causal_softmax_from_lse(const CausalSoftmaxFromLse& p, cudaStream_t stream);
cudaError_t softmax_backward(const SoftmaxBackward& p, cudaStream_t stream);
cudaError_t add(const Add& p, cudaStream_t stream);
cudaError_t scale_matrix(const ScaleMatrix& p, cudaStream_t stream);
// The grouped BF16 GEMM: the output tile edge (rows and columns of C per tile), and whether a
// product of these leading dimensions and layout can run (every row of A, B and C starts
// 16-byte aligned: leading dimensions and the inner sizes multiples of 8 elements).
constexpr int64_t kGroupedGemmTile = 128;
bool grouped_gemm_bf16_fits(int64_t lda, int64_t ldb, int64_t ldc);
cudaError_t grouped_gemm_bf16(const GroupedGemmBf16& p, cudaStream_t stream);
cudaError_t pad_groups(const PadGroups& p, cudaStream_t stream);
cudaError_t unpad_groups(const UnpadGroups& p, cudaStream_t stream);
cudaError_t moe_gather_rows(const MoeGather& p, cudaStream_t stream);
cudaError_t moe_combine(const MoeCombine& p, cudaStream_t stream);
cudaError_t moe_combine_backward(const MoeCombine& p, cudaStream_t stream);
cudaError_t moe_scatter_add(const MoeScatterAdd& p, cudaStream_t stream);
// route_forward's per-sequence sums run in chunks of p.chunk tokens: p.seq_partial holds
// [batch, route_seq_chunks(seq, chunk), E] values.
inline int64_t route_seq_chunks(int64_t seq, int64_t chunk) { return (seq + chunk - 1) / chunk; }
cudaError_t route_forward(const RouteForward& p, cudaStream_t stream);
cudaError_t route_backward(const RouteBackward& p, cudaStream_t stream);
cudaError_t moe_permute(const MoePermute& p, cudaStream_t stream);
cudaError_t scale_inplace(const ScaleInplace& p, cudaStream_t stream);
cudaError_t sum_squares_all(const SumSquaresAll& p, cudaStream_t stream);
cudaError_t f32_to_bf16_chunks(const ConvertChunk* chunks, int64_t count, cudaStream_t stream);
cudaError_t adamw_update_all(const AdamWUpdateAll& p, cudaStream_t stream);

}  // namespace dsv3::cuda
