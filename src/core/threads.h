#pragma once
// Threading: OpenMP underneath (oneDNN, our kernels and OpenBLAS share its pool).
namespace dsv3 {
// Sets the number of threads for everything dsv3 runs on the CPU; 0 keeps the default.
void set_num_threads(int n);
int num_threads();
}  // namespace dsv3
