// The BF16 tensor-core attention kernels (kernels/cuda/attention_bf16*.cu) are written in
// instructions the CPU emulation does not implement (mma.sync, ldmatrix, cp.async). In the
// emulated build they report themselves unsupported for every head size, which is the
// dispatcher's existing path to the float32 kernels; the op cases that exist to test them
// (attention_*_lse_bf16_cuda) are left out of the emulated test run (cmake/cuda_emulation.cmake).
#include "kernels/cuda/launch.h"

namespace dsv3::cuda {

bool attention_bf16_forward_supported(int64_t, int64_t) { return false; }
size_t attention_bf16_forward_smem_bytes(int64_t, int64_t) { return 0; }
cudaError_t attention_forward_bf16(const AttentionForwardBf16&, cudaStream_t) {
  return cudaErrorNotSupported;
}
bool attention_bf16_backward_supported(int64_t, int64_t) { return false; }
size_t attention_bf16_backward_smem_bytes(int64_t, int64_t) { return 0; }
cudaError_t attention_backward_bf16(const AttentionBackwardBf16&, cudaStream_t) {
  return cudaErrorNotSupported;
}

}  // namespace dsv3::cuda
