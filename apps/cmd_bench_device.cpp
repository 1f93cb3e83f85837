// `dsv3 bench device`: the GPU's measured ceilings (dense GEMM rate per dtype, copy bandwidth),
// the denominators of every MFU and roofline figure dsv3 reports.
#include <cstdio>

#include "command.h"
#include "kernels/device_peak.h"

namespace {
dsv3::app::Registrar reg(
    "bench device", "Measure the GPU's dense GEMM peak (FP32, BF16) and copy bandwidth",
    [](CLI::App&) {
      return []() {
        using namespace dsv3;
        std::printf("gemm_f32_gflops=%.0f\n", ops::measure_device_gemm_gflops(DType::F32));
        std::printf("gemm_bf16_gflops=%.0f\n", ops::measure_device_gemm_gflops(DType::BF16));
        std::printf("copy_gbps=%.0f\n", ops::measure_device_copy_gbps());
        return 0;
      };
    });
}  // namespace
