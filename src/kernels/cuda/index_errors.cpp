// The device-side index checks' record and its host check (index_errors.h).
#include "kernels/cuda/index_errors.h"

#include <cuda_runtime.h>

#include "core/device.h"
#include "core/error.h"
#include "kernels/cuda/context.h"

namespace dsv3::cuda {

IndexError* index_error_record() {
  static IndexError* record = [] {
    void* p = nullptr;
    check(cudaMalloc(&p, sizeof(IndexError)), "index checks");
    check(cudaMemsetAsync(p, 0, sizeof(IndexError), stream()), "index checks");
    device::set_synchronize_check(check_index_errors);
    return static_cast<IndexError*>(p);
  }();
  return record;
}

void check_index_errors() {
  IndexError e{};
  IndexError* record = index_error_record();
  check(cudaMemcpy(&e, record, sizeof e, cudaMemcpyDeviceToHost), "index checks");
  if (e.code == kNoIndexError) return;
  check(cudaMemsetAsync(record, 0, sizeof(IndexError), stream()), "index checks");
  switch (e.code) {
    case kBadPosition:
      fail("rope: position {} at row {} is outside the table of {} positions", e.value, e.row,
           e.limit);
    case kBadTokenId:
      fail("token id {} at position {} is outside the vocabulary of {}", e.value, e.row, e.limit);
    case kBadTarget:
      fail("cross_entropy: target {} at row {} is outside the vocabulary of {}", e.value, e.row,
           e.limit);
    default:
      fail("a kernel recorded index error code {} (row {}, value {})", e.code, e.row, e.value);
  }
}

}  // namespace dsv3::cuda
