// The GPU forward pass (infer/device_forward.h) in a build without the CUDA backend.
#include "core/device.h"
#include "infer/device_forward.h"

namespace dsv3::infer {

std::unique_ptr<DeviceForward> make_cuda_forward(std::shared_ptr<const InferWeights>,
                                                 const RopeTables&) {
  device::require_cuda("inference on cuda");
  fail("inference on cuda: CUDA device requested but dsv3 was built without CUDA");
}

}  // namespace dsv3::infer
