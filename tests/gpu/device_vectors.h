#pragma once
// Host vectors to and from device memory for the GPU tests (cudaMalloc'ed, freed by the caller
// with cudaFree, or left to the process's end in a short test).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

namespace dsv3::test {

template <typename T>
T* to_device(const std::vector<T>& v) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, v.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return static_cast<T*>(p);
}

template <typename T>
std::vector<T> to_host(const T* p, size_t n) {
  std::vector<T> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

}  // namespace dsv3::test
