#pragma once
// One transformer block: x + MLA(RMSNorm(x)), then + FFN(RMSNorm(.)) where the FFN is a dense
// SwiGLU or a DeepSeekMoE layer.
#include <memory>

#include "model/ffn.h"
#include "model/mla.h"
#include "model/moe.h"

namespace dsv3 {

struct BlockActivations {
  Tensor h_attn, rstd_attn;  // [N, hidden] (matmul operand dtype), [N]: the attention input norm
  Tensor attn_out;           // [N, hidden]
  Tensor x_mid;              // [N, hidden]  x + attention
  Tensor h_ffn, rstd_ffn;    // [N, hidden], [N]: RMSNorm(x_mid) feeding the FFN (matmul operand
                             // dtype in dense layers, which only products read)
  Tensor h_ffn_mm;           // MoE layers: h_ffn's copy for the products (alloc_matmul_copy;
                             // the router reads h_ffn in float32)
  MlaActivations mla;
  std::unique_ptr<FfnActivations> dense;  // dense layers
  std::unique_ptr<MoeActivations> moe;    // MoE layers

  BlockActivations(Arena& arena, const ModelConfig& c, bool is_moe, int64_t batch, int64_t seq);
};

// Backward scratch shared by every block (one block is in backward at a time).
struct BlockScratch {
  Tensor d_h;  // [N, hidden]
  // [N, hidden]: the residual gradient's copy for the products (alloc_matmul_copy), written with
  // it by the norm backward that makes it (residual_norm_backward).
  Tensor d_residual_mm;
  MlaScratch mla;
  std::unique_ptr<FfnActivations> d_dense;
  std::unique_ptr<MoeScratch> moe;
  BlockScratch(Arena& arena, const ModelConfig& c, int64_t batch, int64_t seq);
};

// out [N, hidden] = block(x [N, hidden])
void block_forward(const StepContext& ctx, const BlockWeights& w, const Tensor& x,
                   BlockActivations& act, Tensor& out);
// d_residual (= or +=) the input gradient of y = RMSNorm(x) with weight w (whose gradient
// accumulates), and s.d_residual_mm its copy where the scratch has one. The products read
// matmul_view(d_residual, s.d_residual_mm).
void residual_norm_backward(const Tensor& x, Param& w, const Tensor& rstd, const Tensor& d_y,
                            Tensor& d_residual, bool accumulate, BlockScratch& s);

// In place: d_residual holds d(out) on entry and d(x) on return (and s.d_residual_mm its copy,
// where there is one, on entry and on return: residual_norm_backward writes both). alpha:
// balance-loss weight.
void block_backward(const StepContext& ctx, BlockWeights& w, const Tensor& x,
                    const BlockActivations& act, double alpha, BlockScratch& s, Tensor& d_residual);

}  // namespace dsv3
