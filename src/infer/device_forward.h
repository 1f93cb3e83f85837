#pragma once
// The inference forward pass on a GPU, behind the Engine (infer/engine.h): the same chunks in,
// the same hidden states and logits out (copied back to the host for sampling), with the weights
// and the latent caches in device memory. infer/cuda/forward_cuda.cpp implements it; a build
// without CUDA has only make_cuda_forward, which fails with a message that says so.
#include <memory>
#include <span>
#include <vector>

#include "infer/engine.h"

namespace dsv3::infer {

class DeviceForward {
 public:
  virtual ~DeviceForward() = default;
  // depth 0: the main model over `chunks`; depth k >= 1: MTP depth k, whose row r input is
  // h_prev[r] (host, [rows, D]). The caches must live on the device. Afterwards `hidden` holds
  // every row's output after the final norm [rows, D] and `logits` the rows `which` chooses.
  virtual void forward(int depth, std::span<const Chunk> chunks, const float* h_prev,
                       LogitsFor which, std::vector<float>& hidden, std::vector<float>& logits,
                       int& logits_rows) = 0;
};

// Copies the weights and rope tables to the GPU. Throws when CUDA is not built or no device is
// visible, or when the weights do not fit in device memory.
std::unique_ptr<DeviceForward> make_cuda_forward(std::shared_ptr<const InferWeights> weights,
                                                 const RopeTables& rope);

}  // namespace dsv3::infer
