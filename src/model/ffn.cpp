#include "model/ffn.h"

#include "kernels/ops.h"

namespace dsv3 {

FfnActivations::FfnActivations(Arena& arena, int64_t rows, int64_t width, Role role) {
  // Only GEMMs read act (down's input) and d gate_up (gate_up's output gradient); the
  // forward's gate_up and the backward's d act are products' outputs that SwiGLU reads. All
  // four are BF16 in mixed precision (Arena::alloc_ffn_intermediate).
  if (role == Role::Saved) {
    gate_up = arena.alloc_ffn_intermediate({rows, 2 * width});
    act = arena.alloc_matmul_operand({rows, width});
  } else {
    gate_up = arena.alloc_matmul_operand({rows, 2 * width});
    act = arena.alloc_ffn_intermediate({rows, width});
  }
}

FfnActivations FfnActivations::rows(int64_t begin, int64_t end) const {
  FfnActivations r;
  r.gate_up = gate_up.slice_rows(begin, end);
  r.act = act.slice_rows(begin, end);
  return r;
}

void ffn_forward(const SwigluWeights& w, const Tensor& x, FfnActivations& act, Tensor& out) {
  ops::linear_forward(x, w.gate_up.for_matmul(), act.gate_up);
  ops::swiglu_forward(act.gate_up, act.act);
  ops::linear_forward(act.act, w.down.for_matmul(), out);
}

void ffn_backward(SwigluWeights& w, const Tensor& x, const FfnActivations& act, const Tensor& d_out,
                  FfnActivations& scratch, Tensor& d_x, bool accumulate_d_x) {
  ops::linear_backward(act.act, w.down.for_matmul(), d_out, &scratch.act, &w.down.grad, false,
                       w.down.accumulate_grad());
  ops::swiglu_backward(act.gate_up, scratch.act, scratch.gate_up);
  ops::linear_backward(x, w.gate_up.for_matmul(), scratch.gate_up, &d_x, &w.gate_up.grad,
                       accumulate_d_x, w.gate_up.accumulate_grad());
}

}  // namespace dsv3
