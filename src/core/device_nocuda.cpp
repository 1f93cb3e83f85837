// The memory functions of core/device.h in a build without the CUDA backend: every request for
// CUDA memory fails with a message that says how to get it.
#include "core/device.h"

#include <cstring>

namespace dsv3::device {

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }

void require_cuda(const char* what) {
  fail("{}: CUDA device requested but dsv3 was built without CUDA (configure with "
       "-DDSV3_CUDA=ON on a machine with nvcc)",
       what);
}

void* cuda_alloc(size_t) {
  require_cuda("cuda_alloc");
  return nullptr;
}
void cuda_free(void*) {}

void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t n) {
  if (dst_device != Device::CPU || src_device != Device::CPU) require_cuda("copy");
  if (n) std::memmove(dst, src, n);
}

void zero(void* p, Device device, size_t n) {
  if (device != Device::CPU) require_cuda("zero");
  if (n) std::memset(p, 0, n);
}

void copy_to_host(std::span<const ToHost> regions) {
  if (regions.size()) require_cuda("copy_to_host");
}
void synchronize(Device) {}
void set_wait_check(const void*, size_t, void (*)(const void*)) {}
double cuda_elapsed_ms(const std::function<void()>&) {
  require_cuda("cuda_elapsed_ms");
  return 0.0;
}
bool is_cuda_pointer(const void*) { return false; }

}  // namespace dsv3::device
