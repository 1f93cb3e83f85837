#pragma once
// The two ceilings of a GPU, measured rather than read off a datasheet (docs/benchmarks.md):
// the dense GEMM rate that MFU is taken against, and the device-to-device copy bandwidth that
// the decode roofline is taken against. CUDA builds only; otherwise "built without CUDA".
#include "core/dtype.h"

namespace dsv3::ops {

// Median GFLOP/s of a square 8192 GEMM (C = A B^T, float32 accumulation) on random data, in
// `dtype` operands (F32: true float32, no TF32; BF16: bfloat16 tensor cores), after warm-up.
double measure_device_gemm_gflops(DType dtype);
// Median GB/s of a 2 GiB device-to-device copy, counting bytes read plus bytes written.
double measure_device_copy_gbps();

}  // namespace dsv3::ops
