#pragma once
// Planned allocation: a bump allocator over one block. Buffers for a whole step are laid out
// once, from the config and the batch shape, and reused for every step, so nothing is allocated
// inside the training or decoding loop.
//
// Use it in two passes: plan with a measuring arena (no memory, only offsets), then allocate one
// block of the measured size and lay the same buffers out again:
//   Arena measure = Arena::measuring();   Plan plan(measure, ...);
//   Arena arena(measure.used());          Plan plan(arena, ...);
// A device arena (Arena(bytes, Device::CUDA)) is planned the same way, measured with
// Arena::measuring(Device::CUDA) (device views are 256-byte aligned, host ones 64), and the
// second pass hands out views into one device block, so a whole step's device memory is one
// cudaMalloc made before the loop.
#include <memory>
#include <optional>

#include "core/tensor.h"

namespace dsv3 {

class Arena {
 public:
  // A plan for `device`: plans may differ by device (a GPU saves less for attention).
  static Arena measuring(Device device = Device::CPU) {
    Arena a;
    a.device_ = device;
    return a;
  }
  explicit Arena(size_t capacity_bytes, Device device = Device::CPU);

  // A zero-initialised view of the next `shape` elements, 64-byte aligned (256 on a GPU), on the
  // arena's device;
  // without a dtype, in the arena's real dtype (floating activations: F32, or F64 for a
  // float64 step).
  Tensor alloc(const Shape& shape) { return alloc(shape, real_dtype_); }
  Tensor alloc(const Shape& shape, DType dtype);
  void set_real_dtype(DType dtype) { real_dtype_ = dtype; }
  DType real_dtype() const { return real_dtype_; }
  // Activations that only matrix products read (GEMM inputs, as activations or output
  // gradients; the tensor-core attention's q, k, v and d_o): stored in the products' operand
  // dtype once one is set (BF16 in mixed precision, where the product would round a float32
  // buffer to BF16 anyway), else in the real dtype. The same values reach the products; half
  // the bytes are written, and none are converted again.
  Tensor alloc_matmul_operand(const Shape& shape) {
    return alloc(shape, matmul_operand_dtype_ ? *matmul_operand_dtype_ : real_dtype_);
  }
  void set_matmul_operand_dtype(DType dtype) { matmul_operand_dtype_ = dtype; }
  DType matmul_operand_dtype() const {
    return matmul_operand_dtype_ ? *matmul_operand_dtype_ : real_dtype_;
  }
  // The FFNs' intermediates (gate/up outputs, the SwiGLU output's gradient) and the routed
  // experts' outputs and input gradients in expert order: products write them and elementwise
  // ops read them (SwiGLU, the combine, the scatter-add), which widen each value and compute in
  // float32. In mixed precision they are stored in the operand dtype (BF16), as BF16 training
  // in PyTorch stores them: the products round their float32 sums once on the way out, where a
  // float32 buffer over N x K rows would be written and read at twice the bytes. Else the real
  // dtype.
  Tensor alloc_ffn_intermediate(const Shape& shape) { return alloc_matmul_operand(shape); }
  // A copy of an activation in the products' operand dtype, for the products that read it beside
  // readers of the real dtype (the op that makes the activation writes both): allocated only
  // where the two dtypes differ (mixed precision); otherwise undefined, and the products read
  // the original (matmul_view).
  Tensor alloc_matmul_copy(const Shape& shape) {
    return matmul_operand_dtype() == real_dtype_ ? Tensor() : alloc_matmul_operand(shape);
  }
  size_t used() const { return used_; }
  size_t capacity() const { return capacity_; }
  bool is_measuring() const { return base_ == nullptr; }
  Device device() const { return device_; }

  // Where buffers that host code reads and writes go (routing decisions, index arrays, their
  // staging copies): this arena itself for the CPU, the attached host arena for a device arena.
  // Plan both in the same pass: attach a measuring host arena to the measuring device arena.
  Arena& host();
  void attach_host(Arena& host_arena) { host_ = &host_arena; }
  // A host buffer and its twin on this arena's device, for data that crosses between host code
  // and device ops; one and the same tensor when this arena is the host's own.
  struct Mirrored {
    Tensor host, device;
  };
  Mirrored alloc_mirrored(const Shape& shape) { return alloc_mirrored(shape, real_dtype_); }
  Mirrored alloc_mirrored(const Shape& shape, DType dtype);

 private:
  Arena() = default;
  std::shared_ptr<void> block_;
  char* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
  Device device_ = Device::CPU;
  DType real_dtype_ = DType::F32;
  std::optional<DType> matmul_operand_dtype_;  // unset: the real dtype
  Arena* host_ = nullptr;
};

// What a product reads of t: its copy in the operand dtype where one was made
// (Arena::alloc_matmul_copy), else t itself.
inline const Tensor& matmul_view(const Tensor& t, const Tensor& copy) {
  return copy.defined() ? copy : t;
}

}  // namespace dsv3
