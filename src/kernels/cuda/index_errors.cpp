// The device-side index checks' record and its host check (index_errors.h).
#include "kernels/cuda/index_errors.h"

#include <cuda_runtime.h>

#include <cstring>

#include "core/device.h"
#include "core/error.h"
#include "kernels/cuda/context.h"

namespace dsv3::cuda {

namespace {

// The wait check (core/device.h): the record's copy, brought back by a wait the caller makes
// anyway. A recorded error is cleared on the device and raised.
void raise_recorded_error(const void* host_copy) {
  IndexError e{};
  std::memcpy(&e, host_copy, sizeof e);
  if (e.code == kNoIndexError) return;
  check(cudaMemsetAsync(index_error_record(), 0, sizeof(IndexError), stream()), "index checks");
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

}  // namespace

IndexError* index_error_record() {
  static IndexError* record = [] {
    void* p = nullptr;
    check(cudaMalloc(&p, sizeof(IndexError)), "index checks");
    check(cudaMemsetAsync(p, 0, sizeof(IndexError), stream()), "index checks");
    device::set_wait_check(p, sizeof(IndexError), raise_recorded_error);
    return static_cast<IndexError*>(p);
  }();
  return record;
}

void check_index_errors() {
  index_error_record();          // sets the wait check on first use
  device::copy_to_host({});      // a wait that brings the record back and checks it
}

}  // namespace dsv3::cuda
