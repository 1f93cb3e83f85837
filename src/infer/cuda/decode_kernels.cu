// The inference kernels (infer/cuda/decode_kernels.h): each a launch of its body
// (decode_units.cuh), and the decode program that runs a step's bodies in one launch. Launch
// shapes are fixed by the sizes alone, never by the data, so a captured decode step replays at
// every position.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "infer/cuda/decode_kernels.h"
#include "infer/cuda/decode_units.cuh"
#include "kernels/cuda/common.cuh"

namespace dsv3::infer::gpu {
namespace {

using dsv3::cuda::aligned_to;
using dsv3::cuda::grid_for;

// ---- launches ----

// Set while a ProgrammaticLaunch lives on this thread (decode_kernels.h).
thread_local bool t_programmatic_launch = false;
// Set while a DecodeRecording lives on this thread: launches are recorded, not run.
thread_local DecodeProgram* t_recording = nullptr;

// The kernels a decode program's stage can stand for (decode_program_kernel).
enum class StageKind : int32_t { Embed, Norm, Gemv, ExpertsDown, AbsorbQuery, Attention, Router };
constexpr int kGemvSwiGlu = 1, kGemvNorm = 2;  // a Gemv stage's variant bits
constexpr int kRouterBf16 = 1;                 // a Router stage's variant bit

// Appends a stage to the program being recorded (launch functions call it instead of
// launching while t_recording is set).
template <typename A>
cudaError_t record_stage(StageKind kind, int variant, dim3 grid, size_t smem, const A& args) {
  static_assert(sizeof(A) <= kDecodeStageArgBytes, "a stage's arguments fit DecodeStage::args");
  static_assert(std::is_trivially_copyable_v<A>, "stage arguments are copied as bytes");
  static_assert(alignof(A) <= 16, "DecodeStage::args is 16-byte aligned");
  DecodeStage st;
  st.kind = int32_t(kind);
  st.variant = variant;
  st.grid[0] = grid.x, st.grid[1] = grid.y, st.grid[2] = grid.z;
  st.smem = uint32_t(smem);
  std::memcpy(st.args, &args, sizeof(A));
  t_recording->add(st);
  return cudaSuccess;
}

cudaError_t refuse_stage(const char* why) {
  t_recording->refuse(why);
  return cudaSuccess;
}

// Launches kernel(args) on s with the given shape, with the programmatic stream serialization
// attribute when it is asked for: then the grid may start while the one before it on s finishes,
// and every kernel here calls wait_for_prior_grids (kernels/cuda/common.cuh) before it touches what
// that grid writes or reads.
template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                          A... args) {
  if (!t_programmatic_launch) {
    kernel<<<grid, block, smem, s>>>(args...);
    return cudaGetLastError();
  }
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  // Positional: grid, block, dynamic shared memory, stream, attributes and their count.
  cudaLaunchConfig_t cfg = {grid, block, smem, s, attr, 1};
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <int R, bool kVec, bool kBf16, bool kSwiGlu, bool kNorm>
__global__ void __launch_bounds__(kRowThreads) gemv_kernel(Gemv p) {
  gemv_unit<R, kVec, kBf16, kSwiGlu, kNorm>(p, hardware_block(), AfterPriorGrids{});
}

// Blocks along y (at most 65535; kernels loop over the rest).
unsigned y_blocks(int64_t n) { return unsigned(n < 1 ? 1 : n > 65535 ? 65535 : n); }

template <int R, bool kSwiGlu, bool kNorm>
cudaError_t launch_gemv(const Gemv& p, bool vec, cudaStream_t s) {
  const int64_t outputs = p.out + p.second.out;
  const dim3 grid(unsigned((outputs + kGemvWarps - 1) / kGemvWarps), y_blocks((p.rows + R - 1) / R));
  const dim3 block(kRowThreads);
  if (t_recording) {
    if (R != 1 || !vec) return refuse_stage("a GEMV of several rows or off the vector path");
    t_recording->weights(p.w_bf16);
    return record_stage(StageKind::Gemv, (kSwiGlu ? kGemvSwiGlu : 0) | (kNorm ? kGemvNorm : 0),
                        grid, 0, p);
  }
  if (vec && p.w_bf16)
    return launch_kernel(gemv_kernel<R, true, true, kSwiGlu, kNorm>, grid, block, 0, s, p);
  if (vec) return launch_kernel(gemv_kernel<R, true, false, kSwiGlu, kNorm>, grid, block, 0, s, p);
  if (p.w_bf16)
    return launch_kernel(gemv_kernel<R, false, true, kSwiGlu, kNorm>, grid, block, 0, s, p);
  return launch_kernel(gemv_kernel<R, false, false, kSwiGlu, kNorm>, grid, block, 0, s, p);
}

template <int R, bool kSwiGlu>
cudaError_t launch_gemv(const Gemv& p, bool vec, cudaStream_t s) {
  return p.norm.w ? launch_gemv<R, kSwiGlu, true>(p, vec, s)
                  : launch_gemv<R, kSwiGlu, false>(p, vec, s);
}

template <bool kVec, bool kBf16>
__global__ void __launch_bounds__(kRowThreads) experts_down_kernel(ExpertsDown p) {
  experts_down_unit<kVec, kBf16>(p, hardware_block(), AfterPriorGrids{});
}


// ---- elementwise and per-row kernels ----

__global__ void embed_kernel(EmbedArgs a) { embed_unit(a, hardware_block(), AfterPriorGrids{}); }

__global__ void rmsnorm_rows_kernel(NormArgs a) {
  rmsnorm_unit(a, hardware_block(), AfterPriorGrids{});
}

__global__ void swiglu_kernel(float* g, const float* u, int64_t n) {
  begin_after_prior_grids();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    g[i] = silu_times(g[i], u[i]);
}

__global__ void __launch_bounds__(kRowThreads)
    write_latents_kernel(const float* kv_a, const float* norm_w, float eps, int rank,
                         RopeTable rope, CacheRows cache) {
  begin_after_prior_grids();
  __shared__ float red[32];
  write_latent_row(kv_a, norm_w, eps, rank, rope, cache, blockIdx.x, red);
}

template <bool kBf16>
__global__ void absorb_query_kernel(AbsorbQuery p) {
  absorb_query_unit<kBf16>(p, hardware_block(), AfterPriorGrids{});
}

template <bool kBf16, int kVec, int kPerLane>
__global__ void latent_attention_kernel(AttentionArgs a) {
  latent_attention_unit<kBf16, kVec, kPerLane>(a, hardware_block(), AfterPriorGrids{});
}

__global__ void route_kernel(Route p) {
  begin_after_prior_grids();
  __shared__ float sel_shared[kRouteWarps][kMaxRouterExperts];  // selection scores, or exps
  __shared__ int32_t picks_shared[kRouteWarps][kMaxRouterExperts];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (t >= p.rows) return;  // whole warps
  route_token(p, p.logits + t * p.select.experts, t, sel_shared[warp], picks_shared[warp], lane);
}

template <bool kVec, bool kBf16>
__global__ void __launch_bounds__(kRowThreads) router_step_kernel(RouterStep p) {
  router_step_unit<kVec, kBf16>(p, hardware_block(), AfterPriorGrids{});
}

// One thread per element of [rows, dim], spread over the whole GPU (a decode step has one row).
__global__ void combine_kernel(const float* __restrict__ y, const int32_t* __restrict__ y_rows,
                               const float* __restrict__ gates, int k, int64_t rows, int64_t dim,
                               const float* __restrict__ shared, float* __restrict__ residual) {
  begin_after_prior_grids();
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < rows * dim;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = idx / dim, i = idx - t * dim;
    float v = shared ? shared[idx] : 0.0f;
    for (int j = 0; j < k; ++j) {
      const int64_t row = y_rows ? y_rows[t * k + j] : t * k + j;
      v = fmaf(gates[t * k + j], y[row * dim + i], v);  // explicit: experts_down's expression
    }
    residual[idx] += v;
  }
}

__global__ void gather_kernel(const float* src, const int32_t* idx, int64_t dim, float* dst) {
  begin_after_prior_grids();
  const int64_t i = blockIdx.x;
  const float* s = src + int64_t(idx[i]) * dim;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) dst[i * dim + c] = s[c];
}


// ---- the decode program (decode_kernels.h): every stage of a decode step in one launch ----


// What a unit of stage s waits for: every unit of stage s - 1 done (their count in `done`).
// Thread 0 spins with acquire loads, then fences (as a cooperative grid's sync does before its
// blocks read each other's writes with plain loads); the barrier passes that to the block.
struct AfterStage {
  const unsigned* done;  // null for the first stage
  unsigned units;
  __device__ __forceinline__ bool operator()() const {
    if (done == nullptr) return true;
    if (threadIdx.x == 0) {
      while (dsv3::cuda::load_acquire(done) < units) __nanosleep(32);
      __threadfence();
    }
    __syncthreads();
    return true;
  }
};

// A unit's end: every thread's writes, the barrier, then thread 0's fence (cumulative: it
// orders the writes the barrier ordered before it) and the count.
__device__ __forceinline__ void unit_done(unsigned* done) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(done, 1u);
  }
}

template <bool kBf16, bool kCacheBf16, int kPerLane, typename Wait>
__device__ __forceinline__ void run_unit(const DecodeStage& st, Unit u, Wait wait) {
  switch (StageKind(st.kind)) {
    case StageKind::Embed:
      embed_unit(*reinterpret_cast<const EmbedArgs*>(st.args), u, wait);
      break;
    case StageKind::Norm:
      rmsnorm_unit(*reinterpret_cast<const NormArgs*>(st.args), u, wait);
      break;
    case StageKind::Gemv: {
      const Gemv& p = *reinterpret_cast<const Gemv*>(st.args);
      switch (st.variant) {
        case 0: gemv_unit<1, true, kBf16, false, false>(p, u, wait); break;
        case kGemvSwiGlu: gemv_unit<1, true, kBf16, true, false>(p, u, wait); break;
        case kGemvNorm: gemv_unit<1, true, kBf16, false, true>(p, u, wait); break;
        default: gemv_unit<1, true, kBf16, true, true>(p, u, wait); break;
      }
      break;
    }
    case StageKind::ExpertsDown:
      experts_down_unit<true, kBf16>(*reinterpret_cast<const ExpertsDown*>(st.args), u, wait);
      break;
    case StageKind::AbsorbQuery:
      absorb_query_unit<kBf16>(*reinterpret_cast<const AbsorbQuery*>(st.args), u, wait);
      break;
    case StageKind::Attention: {
      const AttentionArgs& a = *reinterpret_cast<const AttentionArgs*>(st.args);
      latent_attention_unit<kCacheBf16, 4, kPerLane>(a, u, wait);
      break;
    }
    case StageKind::Router: {
      const RouterStep& p = *reinterpret_cast<const RouterStep*>(st.args);
      if (st.variant & kRouterBf16) router_step_unit<true, true>(p, u, wait);
      else router_step_unit<true, false>(p, u, wait);
      break;
    }
  }
}

// Unit i of a stage's grid.
__device__ __forceinline__ Unit unit_of(const DecodeStage& st, unsigned i) {
  const dim3 grid(st.grid[0], st.grid[1], st.grid[2]);
  return Unit{{i % grid.x, (i / grid.x) % grid.y, i / (grid.x * grid.y)}, grid};
}
__device__ __forceinline__ unsigned units_of(const DecodeStage& st) {
  return st.grid[0] * st.grid[1] * st.grid[2];
}

// Block b's units of stage `st` ask for their weights in L2 (each body's part before its wait).
template <bool kBf16, bool kCacheBf16, int kPerLane>
__device__ __noinline__ void prefetch_stage(const DecodeStage& st) {
  for (unsigned i = blockIdx.x; i < units_of(st); i += gridDim.x)
    run_unit<kBf16, kCacheBf16, kPerLane>(st, unit_of(st, i), PrefetchOnly{});
}

// Block b takes units b, b + gridDim.x, ... of every stage in order. counters: [count] units
// done per stage, then the blocks that have left; the last block to leave zeroes them all for
// the next launch (no block reads them after it has left).
//
// Weights are asked for one stage ahead, as programmatic launch does between kernels: a block
// entering stage s asks for its units' weights of stage s + 1 before it waits for stage s - 1,
// so they stream in while stage s runs. (Asking only for the block's next unit of the same
// stage, as at first, left every stage boundary to start from memory: two blocks per SM hold
// too few loads in flight to hide that.) A body's part before its wait reads no activation it
// could misuse: fixed matrices, or routed ids clamped to the table (decode_units.cuh).
template <bool kBf16, bool kCacheBf16, int kPerLane>
__global__ void __launch_bounds__(kRowThreads, 2)
    decode_program_kernel(const DecodeStage* stages, int count, unsigned* counters) {
  __shared__ DecodeStage stage;  // the current stage, read by every unit of it
  unsigned prior_units = 0;
  if (count > 0) prefetch_stage<kBf16, kCacheBf16, kPerLane>(stages[0]);
  for (int s = 0; s < count; ++s) {
    __syncthreads();  // the previous stage's units are done with `stage`
    const uint32_t* src = reinterpret_cast<const uint32_t*>(stages + s);
    uint32_t* dst = reinterpret_cast<uint32_t*>(&stage);
    for (int i = threadIdx.x; i < int(sizeof(DecodeStage) / 4); i += blockDim.x) dst[i] = src[i];
    __syncthreads();
    if (s + 1 < count) prefetch_stage<kBf16, kCacheBf16, kPerLane>(stages[s + 1]);
    const unsigned units = units_of(stage);
    const AfterStage wait{s == 0 ? nullptr : counters + (s - 1), prior_units};
    for (unsigned i = blockIdx.x; i < units; i += gridDim.x) {
      run_unit<kBf16, kCacheBf16, kPerLane>(stage, unit_of(stage, i), wait);
      unit_done(counters + s);
    }
    prior_units = units;
  }
  if (last_block_to_arrive(counters + count, gridDim.x))
    for (int i = threadIdx.x; i <= count; i += blockDim.x) counters[i] = 0;
}

uint64_t g_programs_launched = 0;


}  // namespace

ProgrammaticLaunch::ProgrammaticLaunch(bool on) : was_(t_programmatic_launch) {
  t_programmatic_launch = on;
}
ProgrammaticLaunch::~ProgrammaticLaunch() { t_programmatic_launch = was_; }

cudaError_t gemv(const Gemv& p, cudaStream_t s) {
  if (p.rows == 0 || p.out + p.second.out == 0) return cudaSuccess;
  const bool has_table = p.table != nullptr;
  if (p.second.out > 0 && (has_table || p.group > 0 || p.swiglu)) return cudaErrorInvalidValue;
  if (p.swiglu && (p.group > 0 || has_table != (p.up_table != nullptr) ||
                   (!has_table && p.up == nullptr)))
    return cudaErrorInvalidValue;
  if (p.norm.w != nullptr && (has_table || p.group > 0 || p.x_row_div != 1))
    return cudaErrorInvalidValue;
  if (p.shared_w != nullptr && (!has_table || p.picks < 1 || p.x_row_div != p.picks + 1 ||
                                p.swiglu != (p.shared_up != nullptr)))
    return cudaErrorInvalidValue;
  // The vector path reads 8 weights and 8 inputs per lane step: every weight row and input row
  // start must be 16-byte aligned (in % 8 == 0 makes every weight row start so), and so must
  // the norm's weight.
  bool vec = p.in % 8 == 0 && p.ldx % 4 == 0 && p.x_group_stride % 4 == 0 &&
             aligned_to(p.x, 16) && (p.norm.w == nullptr || aligned_to(p.norm.w, 16));
  // Table entries are weights at 256-byte offsets of one allocation (aligned); plain matrices
  // are checked.
  if (!has_table) vec = vec && aligned_to(p.w, 16) && (!p.swiglu || aligned_to(p.up, 16)) &&
                        (p.second.out == 0 || aligned_to(p.second.w, 16));
  else
    vec = vec && (p.shared_w == nullptr ||
                  (aligned_to(p.shared_w, 16) && (!p.swiglu || aligned_to(p.shared_up, 16))));
  // A row's sum is the same fmaf chain whatever R, so the choice never changes a result.
  const bool one_row = has_table || p.rows < 4;
  if (p.swiglu) return one_row ? launch_gemv<1, true>(p, vec, s) : launch_gemv<4, true>(p, vec, s);
  return one_row ? launch_gemv<1, false>(p, vec, s) : launch_gemv<4, false>(p, vec, s);
}

cudaError_t experts_down(const ExpertsDown& p, cudaStream_t s) {
  if (p.rows == 0 || p.dim == 0) return cudaSuccess;
  if (p.picks < 1 || (p.shared_w != nullptr && p.shared_out != nullptr))
    return cudaErrorInvalidValue;
  // Table entries are 256-byte aligned (see gemv); the shared matrix and g are checked.
  const bool vec = p.width % 8 == 0 && aligned_to(p.g, 16) &&
                   (p.shared_w == nullptr || aligned_to(p.shared_w, 16));
  const dim3 grid(unsigned((p.dim + kGemvWarps - 1) / kGemvWarps), y_blocks(p.rows));
  if (t_recording) {
    if (!vec) return refuse_stage("an expert down projection off the vector path");
    t_recording->weights(p.w_bf16);
    return record_stage(StageKind::ExpertsDown, 0, grid, 0, p);
  }
  if (vec && p.w_bf16)
    return launch_kernel(experts_down_kernel<true, true>, grid, kRowThreads, 0, s, p);
  if (vec) return launch_kernel(experts_down_kernel<true, false>, grid, kRowThreads, 0, s, p);
  if (p.w_bf16) return launch_kernel(experts_down_kernel<false, true>, grid, kRowThreads, 0, s, p);
  return launch_kernel(experts_down_kernel<false, false>, grid, kRowThreads, 0, s, p);
}

cudaError_t embed_rows(const void* table, bool bf16, const int32_t* ids, int64_t rows, int64_t dim,
                       float* out, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  const EmbedArgs a{table, bf16, ids, dim, out};
  if (t_recording) return record_stage(StageKind::Embed, 0, dim3(unsigned(rows)), 0, a);
  return launch_kernel(embed_kernel, unsigned(rows), kRowThreads, 0, s, a);
}

cudaError_t rmsnorm_rows(const float* x, int64_t ldx, const float* w, int64_t rows, int64_t dim,
                         float eps, float* y, int64_t ldy, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  const NormArgs a{x, ldx, w, dim, eps, y, ldy};
  if (t_recording) return record_stage(StageKind::Norm, 0, dim3(unsigned(rows)), 0, a);
  return launch_kernel(rmsnorm_rows_kernel, unsigned(rows), kRowThreads, 0, s, a);
}

cudaError_t swiglu_rows(float* g, const float* u, int64_t n, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  if (t_recording) return refuse_stage("a separate SwiGLU");
  return launch_kernel(swiglu_kernel, grid_for(n, 256), 256, 0, s, g, u, n);
}

cudaError_t write_latents(const float* kv_a, const float* norm_w, float eps, int64_t rows,
                          int rank, const RopeTable& rope, const CacheRows& cache, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  if (t_recording) return refuse_stage("a separate latent cache write");
  return launch_kernel(write_latents_kernel, unsigned(rows), kRowThreads, 0, s, kv_a, norm_w, eps,
                       rank, rope, cache);
}

cudaError_t absorb_query(const AbsorbQuery& p, cudaStream_t s) {
  if (p.rows == 0) return cudaSuccess;
  const dim3 grid{unsigned(p.heads), y_blocks(p.rows), unsigned((p.rank + kAbsorbCols - 1) / kAbsorbCols)};
  const size_t smem = (size_t(p.nope) + kAbsorbSlices * kAbsorbCols) * 4;
  if (t_recording) {
    t_recording->weights(p.kv_b_bf16);
    return record_stage(StageKind::AbsorbQuery, 0, grid, smem, p);
  }
  if (p.kv_b_bf16)
    return launch_kernel(absorb_query_kernel<true>, grid, kAbsorbThreads, smem, s, p);
  return launch_kernel(absorb_query_kernel<false>, grid, kAbsorbThreads, smem, s, p);
}

cudaError_t latent_attention(const float* qcat, const CacheRows& cache, int64_t rows, int heads,
                             int rank, float scale, int splits, float* partial, unsigned* arrived,
                             float* olat, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  if (rank > kMaxDecodeRank || cache.width > kMaxDecodeWidth || cache.width < rank ||
      splits < 1 || splits > kAttnSplits ||
      (splits > 1 && rows > kAttnSplitRows))  // the split states hold kAttnSplitRows rows
    return cudaErrorInvalidValue;
  const dim3 grid{unsigned(heads), y_blocks(rows), unsigned(splits)};
  const size_t smem = size_t(kAttnWarps) * (size_t(rank) + 2) * 4;
  // Registers per lane for a cache row: the smallest of three sizes that holds the width
  // (V3's 576 takes 20); four columns per load where the rows allow it (every cache's base is
  // 16-byte aligned: decode_kernels.h).
  const bool vec = cache.width % 4 == 0 && aligned_to(qcat, 16);
  const AttentionArgs a{qcat, cache, rows, heads, rank, scale, splits, partial, arrived, olat};
  auto go = [&](auto per_lane, auto per_load) {
    constexpr int kPerLane = decltype(per_lane)::value, kVec = decltype(per_load)::value;
    if (t_recording) {
      if (kVec != 4) return refuse_stage("a latent attention over single-column loads");
      // The program's kernels are built for rows of up to 20 * 32 columns (V3's 576 take 20 a
      // lane); wider ones (an exotic latent rank) would be two more large instantiations.
      if (kPerLane > 20) return refuse_stage("a latent cache row wider than 640 columns");
      t_recording->attention(cache.bf16, kPerLane);
      return record_stage(StageKind::Attention, 0, grid, smem, a);
    }
    if (cache.bf16)
      return launch_kernel(latent_attention_kernel<true, kVec, kPerLane>, grid, kAttnWarps * 32,
                           smem, s, a);
    return launch_kernel(latent_attention_kernel<false, kVec, kPerLane>, grid, kAttnWarps * 32,
                         smem, s, a);
  };
  auto sized = [&](auto per_lane) {
    return vec ? go(per_lane, std::integral_constant<int, 4>{})
               : go(per_lane, std::integral_constant<int, 1>{});
  };
  static_assert(kMaxDecodeWidth == 36 * 32);
  if (cache.width <= 4 * 32) return sized(std::integral_constant<int, 4>{});
  if (cache.width <= 20 * 32) return sized(std::integral_constant<int, 20>{});
  return sized(std::integral_constant<int, 36>{});
}

cudaError_t route(const Route& p, cudaStream_t s) {
  if (p.rows == 0) return cudaSuccess;
  if (p.select.experts > kMaxRouterExperts || p.select.groups > 64 || p.select.groups < 1 ||
      p.select.k > p.select.experts)
    return cudaErrorInvalidValue;
  if (t_recording) return refuse_stage("a separate router");
  return launch_kernel(route_kernel, unsigned((p.rows + kRouteWarps - 1) / kRouteWarps),
                       kRouteWarps * 32, 0, s, p);
}

cudaError_t router_step(const RouterStep& p, cudaStream_t s) {
  if (p.route.rows == 0) return cudaSuccess;
  const ExpertSelection& sel = p.route.select;
  if (sel.experts > kMaxRouterExperts || sel.experts < 1 || sel.groups > 64 || sel.groups < 1 ||
      sel.k > sel.experts || p.in < 1)
    return cudaErrorInvalidValue;
  const bool vec = p.in % 8 == 0 && p.ldx % 4 == 0 && aligned_to(p.x, 16) && aligned_to(p.norm_w, 16) &&
                   aligned_to(p.w, 16);
  const dim3 grid(unsigned((sel.experts + kGemvWarps - 1) / kGemvWarps), y_blocks(p.route.rows));
  if (t_recording) {
    if (!vec) return refuse_stage("a router off the vector path");
    return record_stage(StageKind::Router, p.w_bf16 ? kRouterBf16 : 0, grid, 0, p);
  }
  if (vec && p.w_bf16) return launch_kernel(router_step_kernel<true, true>, grid, kRowThreads, 0, s, p);
  if (vec) return launch_kernel(router_step_kernel<true, false>, grid, kRowThreads, 0, s, p);
  if (p.w_bf16) return launch_kernel(router_step_kernel<false, true>, grid, kRowThreads, 0, s, p);
  return launch_kernel(router_step_kernel<false, false>, grid, kRowThreads, 0, s, p);
}

cudaError_t combine_experts(const float* y, const int32_t* y_rows, const float* gates,
                            int64_t rows, int k, int64_t dim, const float* shared,
                            float* residual, cudaStream_t s) {
  if (rows == 0) return cudaSuccess;
  if (t_recording) return refuse_stage("a separate expert combine");
  return launch_kernel(combine_kernel, grid_for(rows * dim, 128), 128, 0, s, y, y_rows, gates, k,
                       rows, dim, shared, residual);
}

cudaError_t gather_rows(const float* src, const int32_t* idx, int64_t n, int64_t dim, float* dst,
                        cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  if (t_recording) return refuse_stage("a row gather");
  return launch_kernel(gather_kernel, unsigned(n), 256, 0, s, src, idx, dim, dst);
}

// ---- the decode program ----

void DecodeProgram::add(const DecodeStage& stage) {
  stages_.push_back(stage);
  smem = std::max<size_t>(smem, stage.smem);
}
void DecodeProgram::refuse(const std::string& why) {
  if (why_.empty()) why_ = why;
}
void DecodeProgram::attention(bool bf16, int lanes) {
  if (per_lane != 0 && (lanes != per_lane || bf16 != cache_bf16)) refuse("two cache layouts");
  per_lane = lanes;
  cache_bf16 = bf16;
}
void DecodeProgram::weights(bool bf16) {
  if (weights_set_ && bf16 != weights_bf16) refuse("weights of two dtypes");
  weights_set_ = true;
  weights_bf16 = bf16;
}

DecodeRecording::DecodeRecording(DecodeProgram* program) : was_(t_recording) {
  t_recording = program;
}
DecodeRecording::~DecodeRecording() { t_recording = was_; }

uint64_t decode_programs_launched() { return g_programs_launched; }

cudaError_t launch_decode_program(const DecodeProgram& program, const DecodeStage* stages,
                                  unsigned* counters, cudaStream_t s) {
  if (!program.runnable()) return cudaErrorInvalidValue;
  using Kernel = void (*)(const DecodeStage*, int, unsigned*);
  const auto pick = [&](auto per_lane) -> Kernel {
    constexpr int kPerLane = decltype(per_lane)::value;
    if (program.weights_bf16)
      return program.cache_bf16 ? decode_program_kernel<true, true, kPerLane>
                                : decode_program_kernel<true, false, kPerLane>;
    return program.cache_bf16 ? decode_program_kernel<false, true, kPerLane>
                              : decode_program_kernel<false, false, kPerLane>;
  };
  // The attention's registers per lane (a program without attention takes the smallest).
  const Kernel kernel = program.per_lane == 20 ? pick(std::integral_constant<int, 20>{})
                                               : pick(std::integral_constant<int, 4>{});
  // As many blocks as the GPU holds at once (a cooperative launch's rule: every block resident,
  // so that a unit may wait for units of other blocks), no more than the largest stage's units.
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess)
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRowThreads, program.smem);
  if (e != cudaSuccess) return e;
  if (per_sm < 1) return cudaErrorInvalidConfiguration;
  uint64_t most_units = 1;
  for (const DecodeStage& st : program.stages())
    most_units = std::max<uint64_t>(most_units, uint64_t(st.grid[0]) * st.grid[1] * st.grid[2]);
  const unsigned blocks = unsigned(std::min<uint64_t>(uint64_t(sms) * per_sm, most_units));
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  // Positional: grid, block, dynamic shared memory, stream, attributes and their count.
  cudaLaunchConfig_t cfg = {dim3(blocks), dim3(kRowThreads), program.smem, s, attr, 1};
  ++g_programs_launched;
  return cudaLaunchKernelEx(&cfg, kernel, stages, int(program.stages().size()), counters);
}

}  // namespace dsv3::infer::gpu
