#pragma once
// Threading: OpenMP underneath (oneDNN, our kernels and OpenBLAS share its pool).
namespace dsv3 {
// Sets the number of threads for everything dsv3 runs on the CPU; 0 keeps the default.
void set_num_threads(int n);
int num_threads();
// Process-wide runtime settings for steady step times: large buffers that libraries allocate
// per call (GEMM packing) are kept in the heap instead of being mapped and unmapped each time.
void configure_runtime();
}  // namespace dsv3
