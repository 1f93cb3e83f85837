#pragma once
// What every module of one training/evaluation step shares: the window shape, the positions of
// its rows, the rope tables and the config.
#include <cstdint>

#include "core/arena.h"
#include "model/config.h"
#include "model/rope.h"

namespace dsv3 {

// BF16 copies of one layer's attention inputs, shared by every layer: filled just before each
// attention call (forward, and again in backward), so attention runs on tensor cores while the
// saved activations stay float32. Present only in BF16 mixed precision.
struct AttentionCasts {
  Tensor q, k;    // [B, H, T, qk_head_dim] BF16
  Tensor v, d_o;  // [B, H, T, v_head_dim] BF16
};

struct StepContext {
  const ModelConfig* config = nullptr;
  const RopeTables* rope = nullptr;
  int64_t batch = 0, seq = 0;          // the window: batch sequences of seq tokens
  const int32_t* positions = nullptr;  // [batch * seq] position of each row in its sequence
  const AttentionCasts* bf16_attention = nullptr;  // null: attention in float32
  int64_t rows() const { return batch * seq; }
};

}  // namespace dsv3
