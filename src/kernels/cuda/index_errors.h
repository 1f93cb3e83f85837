#pragma once
// Token ids, targets and positions checked on the device instead of on the host: the kernels
// that index with them (embedding, cross-entropy, rope) record the first value out of range in
// one device record (params.h, IndexError) and skip that element, so a bad index never touches
// memory out of bounds and no call copies indices back and waits. The error is raised where
// the host waits anyway: the loss and gradient-norm readbacks, the routing counts, and
// device::synchronize. Host code only (compiled with the CUDA backend).
#include "kernels/cuda/params.h"

namespace dsv3::cuda {

// The device record, zeroed; created on first use and kept for the process.
IndexError* index_error_record();

// A wait on the stream that reads the record back and, when a kernel recorded an error, clears
// the record and throws it as a dsv3::Error naming the op, the row, the value and the bound.
// Every device::copy_to_host and device::synchronize does the same check within its own wait
// (the record is their wait check, core/device.h), so readbacks need not call this.
void check_index_errors();

}  // namespace dsv3::cuda
