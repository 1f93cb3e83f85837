#pragma once
// The latent attention cache of one sequence: for every layer and position, exactly
// kv_lora_rank + qk_rope_head_dim values: RMSNorm_kv(c_kv) followed by the rotated k_pe
// (DESIGN.md section 2). BF16 (default) or F32. The capacity is fixed when the cache is made,
// so decoding never allocates; `truncate` rolls back rejected speculative positions. A cache
// of the GPU engine lives in device memory: its kernels write and read it there, and
// write/read below are for host caches only.
#include <cstdint>

#include "core/tensor.h"
#include "model/config.h"

namespace dsv3::infer {

class LatentCache {
 public:
  LatentCache() = default;
  // `layers` attention layers (the main model's, or 1 for an MTP depth), `capacity` positions.
  LatentCache(const ModelConfig& c, int layers, int capacity, DType dtype,
              Device device = Device::CPU);

  int len() const { return len_; }
  int capacity() const { return capacity_; }
  int width() const { return width_; }  // kv_lora_rank + qk_rope_head_dim
  int layers() const { return layers_; }
  Device device() const { return data_.device(); }
  void* data() const { return data_.data(); }  // [layers, capacity, width]
  DType dtype() const { return data_.dtype(); }
  size_t bytes() const { return data_.nbytes(); }

  // Stores position `pos` of `layer`: the normalized latent [R] and the rotated rope key [rope].
  void write(int layer, int pos, const float* c_kv_norm, const float* k_pe);
  // Positions [0, end) of `layer` as float32 [end, width]: a pointer into the cache when it is
  // F32, else converted into `scratch` (at least end * width floats).
  const float* read(int layer, int end, float* scratch) const;

  // Marks positions [0, n) as valid (after a forward pass wrote them).
  void set_len(int n);
  // Forgets positions from n on (n <= len).
  void truncate(int n);

 private:
  Tensor data_;  // [layers, capacity, width]
  int layers_ = 0, capacity_ = 0, width_ = 0, rank_ = 0, len_ = 0;
};

}  // namespace dsv3::infer
