#pragma once
// The SwiGLU feed-forward network down(silu(gate(x)) * up(x)): the dense FFN of the first
// layers, every routed expert and the shared experts.
#include "core/arena.h"
#include "model/weights.h"

namespace dsv3 {

// Saved for backward, for `rows` inputs of an FFN of `width`; the backward's scratch has the
// same shapes and holds the gradients of the two.
struct FfnActivations {
  Tensor gate_up;  // [rows, 2 * width] gate(x) | up(x); as scratch, d gate_up
  Tensor act;      // [rows, width]     silu(gate) * up; as scratch, d act
  FfnActivations() = default;
  // What the forward saves, or the backward's scratch. Of each, the buffer that only GEMMs read
  // (act; d gate_up) is in the arena's matmul operand dtype (Arena::alloc_matmul_operand).
  enum class Role { Saved, Gradients };
  FfnActivations(Arena& arena, int64_t rows, int64_t width, Role role = Role::Saved);
  FfnActivations rows(int64_t begin, int64_t end) const;  // a row range, sharing storage
};

// out [rows, hidden] = FFN(x [rows, hidden])
void ffn_forward(const SwigluWeights& w, const Tensor& x, FfnActivations& act, Tensor& out);
// d_x (= or +=) and the weights' gradients (+=). `scratch` has the shapes of FfnActivations.
void ffn_backward(SwigluWeights& w, const Tensor& x, const FfnActivations& act, const Tensor& d_out,
                  FfnActivations& scratch, Tensor& d_x, bool accumulate_d_x);

}  // namespace dsv3
