#pragma once
// Rotary embedding tables for MLA's decoupled rope part, with YaRN context extension.
#include "core/tensor.h"
#include "model/config.h"

namespace dsv3 {

struct RopeTables {
  Tensor cos, sin;             // [positions, qk_rope_head_dim / 2], YaRN mscale folded in
  double softmax_scale = 1.0;  // (nope + rope)^-0.5, times m(factor, mscale_all_dim)^2 for YaRN
};

// YaRN's attention-magnitude correction m(s, a) = 0.1 a ln(s) + 1 (1 when s <= 1).
double yarn_mscale(double factor, double mscale);

// Computed in float64 and stored as `dtype` (F32, or F64 for the float64 step).
RopeTables build_rope_tables(const ModelConfig& config, int positions, DType dtype = DType::F32);

}  // namespace dsv3
