// The warp-level tensor-core and asynchronous-copy instructions of kernels/cuda/mma_bf16.cuh
// (cp.async, ldmatrix, mma.sync.m16n8k16 with bf16 inputs and float32 accumulation, ex2.approx),
// on the emulator's fibers (emulator_internal.h). The fragment layouts are the PTX ISA's, as
// mma_bf16.cuh describes them; the kernels' own code is what is being tested, so these follow
// the ISA, not that header.
//
// Kept strict where a GPU is undefined or fails:
// - ldmatrix and mma are warp-collective: all 32 lanes must take part (as with shuffles);
// - ldmatrix row addresses must be 16-byte aligned and inside the block's shared memory;
// - cp.async needs 16-byte aligned shared and global addresses. When its copy lands alternates
//   from block to block (so one launch of several blocks has both; the warp order alternates
//   from launch to launch):
//   - at the cp.async.wait_group that lets it: until then the shared bytes keep what they held
//     (poison in a fresh block), so a read without the wait, or before the barrier that follows
//     it, sees stale data instead of the tile;
//   - at issue: so a reload of a buffer that other warps are still reading (a missing barrier
//     before the reuse) overwrites their data while they need it, which a GPU may do too.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_emulation.h"
#include "emulator_internal.h"

namespace dsv3emu {
namespace {

using internal::fail_thread;

struct PendingCopy {
  void* dst;
  const void* src;  // null: zero-fill
  int group;        // 0: not committed yet; else the commit count that closed it
};
struct ThreadCopies {
  std::vector<PendingCopy> pending;
  int committed = 0;  // groups committed so far
};
std::vector<ThreadCopies> g_copies;  // by thread of the running block
uint64_t g_copies_block = ~uint64_t(0);

ThreadCopies& my_copies() {
  if (g_copies_block != internal::block_serial()) {  // a new block: no copies in flight
    g_copies.clear();
    g_copies_block = internal::block_serial();
  }
  const size_t t = size_t(internal::thread_linear());
  if (g_copies.size() <= t) g_copies.resize(t + 1);
  return g_copies[t];
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }

}  // namespace

void cp_async16(void* smem, const void* gmem, bool valid) {
  // Copies in flight are kept per thread of one block at a time (my_copies).
  if (internal::cooperative_launch())
    fail_thread("cp.async in a cooperative launch (whose blocks interleave) is not emulated");
  if (!aligned16(smem) || !internal::in_shared_memory(smem, 16))
    fail_thread("cp.async: the destination is not 16 aligned bytes of shared memory");
  if (valid && (!aligned16(gmem) || !internal::in_global_memory(gmem, 16)))
    fail_thread("cp.async: the source is not 16 aligned bytes of global memory");
  if (internal::block_serial() & 1) {  // this block lands its copies at issue
    if (valid)
      std::memcpy(smem, gmem, 16);
    else
      std::memset(smem, 0, 16);
    return;
  }
  my_copies().pending.push_back({smem, valid ? gmem : nullptr, 0});
}

void cp_async_commit() {
  ThreadCopies& c = my_copies();
  ++c.committed;
  for (PendingCopy& p : c.pending)
    if (p.group == 0) p.group = c.committed;
}

void cp_async_wait(int pending_groups) {
  ThreadCopies& c = my_copies();
  const int done_upto = c.committed - pending_groups;  // groups 1 .. done_upto complete
  std::vector<PendingCopy> still;
  for (const PendingCopy& p : c.pending) {
    if (p.group != 0 && p.group <= done_upto) {
      if (p.src)
        std::memcpy(p.dst, p.src, 16);
      else
        std::memset(p.dst, 0, 16);
    } else {
      still.push_back(p);
    }
  }
  c.pending.swap(still);
}

void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  if (!aligned16(row) || !internal::in_shared_memory(row, 16))
    fail_thread(std::string("ldmatrix") + (trans ? ".trans" : "") +
                ": a row address is not 16 aligned bytes of shared memory");
  const unsigned char* all = internal::warp_gather(&row, sizeof row, "ldmatrix");
  const auto row_of = [&](int lane) {
    const uint16_t* p;
    std::memcpy(&p, all + size_t(lane) * internal::kWarpRecordBytes, sizeof p);
    return p;
  };
  const int lane = internal::thread_linear() % 32, g = lane / 4, t = lane % 4;
  // Matrix i's eight rows come from lanes 8 i .. 8 i + 7. Without .trans, lane l receives row
  // g's elements 2t, 2t + 1; with .trans, column g's elements of rows 2t and 2t + 1.
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      lo = row_of(8 * i + g)[2 * t];
      hi = row_of(8 * i + g)[2 * t + 1];
    } else {
      lo = row_of(8 * i + 2 * t)[g];
      hi = row_of(8 * i + 2 * t + 1)[g];
    }
    r[i] = uint32_t(lo) | uint32_t(hi) << 16;
  }
  internal::warp_release();
}

void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct Fragments {
    uint32_t a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  const unsigned char* all = internal::warp_gather(&mine, sizeof mine, "mma.sync");
  // A [16][16] and B [16 k][8 n] from every lane's fragments: lane 4 g + t holds
  // a0 (g, 2t..2t+1), a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..),
  // b0 (k 2t..2t+1, n g), b1 (k 2t + 8.., n g); the lower index in the low half.
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    Fragments f;
    std::memcpy(&f, all + size_t(lane) * internal::kWarpRecordBytes, sizeof f);
    const int g = lane / 4, t = lane % 4;
    for (int half = 0; half < 2; ++half) {
      const auto pick = [half](uint32_t v) { return half ? bf16_hi(v) : bf16_lo(v); };
      A[g][2 * t + half] = pick(f.a[0]);
      A[g + 8][2 * t + half] = pick(f.a[1]);
      A[g][2 * t + 8 + half] = pick(f.a[2]);
      A[g + 8][2 * t + 8 + half] = pick(f.a[3]);
      B[2 * t + half][g] = pick(f.b[0]);
      B[2 * t + 8 + half][g] = pick(f.b[1]);
    }
  }
  internal::warp_release();
  // This lane's outputs: d0, d1 (g, 2t..2t+1), d2, d3 (g + 8, 2t..2t+1). The bf16 products are
  // exact in double; the sum is rounded once (a GPU's adder order and width differ, within the
  // tolerances the kernels' tests state).
  const int lane = internal::thread_linear() % 32, g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
    double sum = d[e];
    for (int k = 0; k < 16; ++k) sum += double(A[row][k]) * double(B[k][col]);
    d[e] = float(sum);
  }
}

float ex2_approx_ftz(float x) {
  const float y = exp2f(x);
  return std::fabs(y) < 1.17549435e-38f ? 0.0f : y;  // .ftz: subnormal results flush to zero
}

}  // namespace dsv3emu
