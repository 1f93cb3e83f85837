#pragma once
// What the emulator's core (emulator.cpp: blocks, fibers, barriers, memory, streams) offers the
// files that emulate further instructions or libraries on top of it (tensor_core.cpp,
// cublas.cpp). Not part of the emulated CUDA API.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "cuda_emulation.h"

namespace dsv3emu::internal {

// The running thread's linear index in its block, and a number that changes with every block
// run (per-thread state kept elsewhere is stale when it changes).
int thread_linear();
uint64_t block_serial();
// Whether the running launch is cooperative (its blocks interleave).
bool cooperative_launch();

// A warp-collective step: every lane of the running thread's warp publishes `bytes` (at most
// kWarpRecordBytes) and waits until all 32 have; the result holds lane i's record at
// i * kWarpRecordBytes. Read it, then call warp_release(), which waits until every lane has
// read (the records may then be overwritten). Like a shuffle, it needs all 32 lanes, and all
// of them at the same instruction (`what`), else the launch fails.
constexpr size_t kWarpRecordBytes = 64;
const unsigned char* warp_gather(const void* mine, size_t bytes, const char* what);
void warp_release();

// Whether [p, p + bytes) lies inside the running block's shared memory (dynamic or one static
// variable), or inside device or pinned memory.
bool in_shared_memory(const void* p, size_t bytes);
bool in_global_memory(const void* p, size_t bytes);

// Fails the launch (a sticky error), naming the running thread, and ends that thread. `why` is
// taken by value and released before the thread ends (its fiber never unwinds).
[[noreturn]] void fail_thread(std::string why);

// Whether device bytes [p, p + bytes) lie inside one device allocation; says on stderr which
// range is not, for `what`.
bool device_range(const void* p, size_t bytes, const char* what);
// Queues host work on stream s, run in stream order (or recorded, while s is captured), as a
// library call's kernels would be; the stream's error if it cannot be queued.
cudaError_t enqueue(cudaStream_t s, const char* what, std::function<void()> work);
// Fails the work that is running from the queue, as a fault in a kernel would: said on stderr,
// then sticky.
void fail_queued_work(const std::string& why);

}  // namespace dsv3emu::internal
