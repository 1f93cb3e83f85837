#pragma once
// The kernels of the inference forward pass on a GPU (infer/cuda/forward_cuda.cpp drives them).
// Every kernel reads its per-row inputs (token ids, positions, cache addresses, chosen experts)
// from device memory, so one decode step is the same sequence of launches at every position and
// can be captured once into a CUDA graph and replayed.
//
// Activations are float32; weights are float32 or bfloat16 (widened exactly, float32
// accumulation); the latent cache is float32 or bfloat16 (written rounded to nearest even, as
// the CPU cache is).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/launch.h"
#include "model/expert_selection.h"

namespace dsv3::infer::gpu {

// While an object of this class lives (on this thread), the kernels below are launched with
// programmatic dependent launch (sm_90 and later): each grid may be scheduled while the one
// before it on the stream finishes, fetches the weights it will read into L2, and waits for
// that grid (griddepcontrol) before it touches any activation. A decode step captured into a
// graph so launched keeps the GPU streaming weights across its kernel boundaries instead of
// draining and refilling at each of them. Results are the same either way.
class ProgrammaticLaunch {
 public:
  explicit ProgrammaticLaunch(bool on);
  ~ProgrammaticLaunch();
  ProgrammaticLaunch(const ProgrammaticLaunch&) = delete;
  ProgrammaticLaunch& operator=(const ProgrammaticLaunch&) = delete;

 private:
  bool was_;
};

// y[r, o] (= or +=) sum_k x[r / x_row_div, xoff(o) + k] * W_r[wrow(o), k] for r < rows, o < out.
// W_r is `w`, or table[table_idx[r]] when a table is given (the routed experts: row r uses the
// expert chosen for it). All weight matrices are contiguous [*, in].
// Grouped outputs (group > 0): output o = g * group + i reads weight row
// g * w_group_stride + w_group_offset + i and the input columns from g * x_group_stride: per-head
// products such as MLA's value up-projection out of kv_b.
// SwiGLU (swiglu): W is the gate and `up` (or up_table[table_idx[r]]) the up projection, both
// [out, in]; y[r, o] = silu(g) * u of the two sums, in one launch (the FFN's first half).
// A second matrix (second.out > 0): outputs out .. out + second.out - 1 are second.w's rows,
// written to second.y with its own leading dimension: two products of one input in one launch
// (MLA's q_a and kv_a). Not combined with a table, groups or SwiGLU.
// A fused RMSNorm (norm.w set): the products read x[r, k] * inv_r * norm.w[k] instead of
// x[r, k], inv_r = 1 / sqrt(mean(x[r, :in]^2) + eps) reduced in the block exactly as
// rmsnorm_rows reduces it, so the result equals rmsnorm_rows then gemv bit for bit and the norm
// costs no launch of its own. Not combined with a table, groups or x_row_div > 1.
// A shared entry (a table and shared_w): rows come in groups of picks + 1 per token; slot
// j < picks of token t uses table[table_idx[t * picks + j]] (up_table likewise), slot picks uses
// shared_w (shared_up): the MoE layer's shared expert, when it has a routed expert's shape, in
// the routed experts' launch.
struct GemvNorm {
  const float* w = nullptr;
  float eps = 0.0f;
};
struct GemvSecond {
  const void* w = nullptr;
  int64_t out = 0;
  float* y = nullptr;
  int64_t ldy = 0;
};
struct Gemv {
  const float* x = nullptr;
  int64_t ldx = 0;
  int x_row_div = 1;
  const void* w = nullptr;
  const void* const* table = nullptr;
  const int32_t* table_idx = nullptr;
  bool w_bf16 = false;
  int64_t in = 0;
  float* y = nullptr;
  int64_t ldy = 0;
  bool accumulate = false;
  int64_t rows = 0, out = 0;
  int64_t group = 0, w_group_stride = 0, w_group_offset = 0, x_group_stride = 0;
  bool swiglu = false;
  const void* up = nullptr;
  const void* const* up_table = nullptr;
  GemvSecond second;
  GemvNorm norm;
  int64_t picks = 0;
  const void* shared_w = nullptr;
  const void* shared_up = nullptr;
};
cudaError_t gemv(const Gemv& p, cudaStream_t s);

// The MoE layer's second half at decode, in one launch: residual[t, o] += v, where v starts at
// the shared experts' output (the product shared_w[o, :] . g[t * slots + picks, :] when shared_w
// is given, slots = picks + 1; else shared_out[t, o], or 0 when that is null too; slots =
// picks) and adds gates[t, j] * (W_j[o, :] . g[t * slots + j, :]) in order over j < picks,
// W_j = table[chosen[t * picks + j]]. g [rows * slots, width] holds the SwiGLU outputs of
// each slot. Each product is gemv's own sum, and the order of the additions is combine_experts',
// so the result equals gemv then combine_experts bit for bit.
struct ExpertsDown {
  const float* g = nullptr;
  int64_t width = 0;
  const void* const* table = nullptr;
  const int32_t* chosen = nullptr;
  const float* gates = nullptr;
  bool w_bf16 = false;
  int64_t rows = 0;
  int picks = 0;
  int experts = 0;  // the table's size (> 0: its rows are prefetched before the wait)
  int64_t dim = 0;
  const void* shared_w = nullptr;     // [dim, width], the shared expert's down projection
  const float* shared_out = nullptr;  // or its output [rows, dim], computed apart
  float* residual = nullptr;          // [rows, dim]
};
cudaError_t experts_down(const ExpertsDown& p, cudaStream_t s);

// out[r, :] = table[ids[r], :] widened to float32 (a zero row for id -1); table [V, dim].
cudaError_t embed_rows(const void* table, bool bf16, const int32_t* ids, int64_t rows, int64_t dim,
                       float* out, cudaStream_t s);

// y[r, :dim] = x[r, :dim] * rsqrt(mean(x^2) + eps) * w (y may alias x).
cudaError_t rmsnorm_rows(const float* x, int64_t ldx, const float* w, int64_t rows, int64_t dim,
                         float eps, float* y, int64_t ldy, cudaStream_t s);

cudaError_t swiglu_rows(float* g, const float* u, int64_t n, cudaStream_t s);  // g = silu(g) u

// Where each row's latent cache is: cache_base[r] is its cache's data ([layers, capacity[r],
// width], f32 or bf16); pos[r] its position.
struct CacheRows {
  void* const* base = nullptr;
  const int32_t* capacity = nullptr;
  const int32_t* pos = nullptr;
  int layer = 0;
  int width = 0;  // kv_lora_rank + qk_rope_head_dim
  bool bf16 = false;
};

// Rope tables [max_pos, rope / 2] (float32) for interleaved pairs (x[2i], x[2i+1]).
struct RopeTable {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int rope = 0;
};

// Stores each row's normalised latent RMSNorm_kv(kv_a[r, :rank]) and rotated rope key
// rope(kv_a[r, rank:]) at its position of its cache. kv_a [rows, rank + rope].
cudaError_t write_latents(const float* kv_a, const float* norm_w, float eps, int64_t rows,
                          int rank, const RopeTable& rope, const CacheRows& cache, cudaStream_t s);

// Absorbed queries: qcat[r, h, :rank] = q_nope[r, h] . W_uk(h) (W_uk(h) = rows
// h * (nope + v) .. + nope of kv_b [H * (nope + v), rank]) and qcat[r, h, rank:] = the rotated
// q_pe[r, h]. q [rows, H, nope + rope].
// With kv_a given, the same launch also does write_latents(kv_a, kv_a_norm, eps, ..., cache)
// (bit for bit: the same block reduction), saving the step a launch.
struct AbsorbQuery {
  const float* q = nullptr;
  const void* kv_b = nullptr;
  bool kv_b_bf16 = false;
  const int32_t* pos = nullptr;
  RopeTable rope;
  int64_t rows = 0;
  int heads = 0, nope = 0, v = 0, rank = 0;
  float* qcat = nullptr;
  const float* kv_a = nullptr;
  const float* kv_a_norm = nullptr;
  float eps = 0.0f;
  CacheRows cache;
};
cudaError_t absorb_query(const AbsorbQuery& p, cudaStream_t s);

// Attention over the latent cache: for row r and head h, softmax over positions j <= pos[r] of
// scale * (qcat[r, h] . cache_j), and olat[r, h] = sum_j p_j latent_j (the first rank values of
// each cache row). qcat [rows, H, width], olat [rows, H, rank]. rank <= kMaxDecodeRank,
// width <= kMaxDecodeWidth; every cache base 16-byte aligned (a width that is a multiple of 4
// is read four columns per load, where qcat is aligned too).
// splits > 1 (at most kAttnSplits) spreads each (row, head)'s positions over that many blocks,
// position j to block j % splits: a decode step has one row and a few heads, which alone would
// leave most of the GPU idle while each block walks the whole context. Their partial softmax
// states go to `partial` [rows, H, splits, rank + 2] (rows <= kAttnSplitRows when splits > 1);
// the last block of each (row, head) to
// finish, counted in `arrived` [rows, H] (zero before the launch, zero again after it), merges
// them. The split count is fixed by the caller, not by the context length, so a captured step
// replays at every position.
constexpr int kMaxDecodeRank = 1024;
constexpr int kMaxDecodeWidth = 1152;  // rank + rope of a cache row (1024 + 128)
constexpr int kAttnSplits = 16;
constexpr int kAttnSplitRows = 8;
cudaError_t latent_attention(const float* qcat, const CacheRows& cache, int64_t rows, int heads,
                             int rank, float scale, int splits, float* partial, unsigned* arrived,
                             float* olat, cudaStream_t s);

// The router: scores (sigmoid or softmax) of logits [rows, E], the group-limited top-k of
// scores + bias (model/expert_selection.h), the chosen ids ascending in chosen [rows, K] and
// their gates (unbiased scores, normalised when norm_topk_prob, times routed_scaling_factor) in
// gates [rows, K]. E <= kMaxRouterExperts.
constexpr int kMaxRouterExperts = dsv3::cuda::kMaxWarpSelectExperts;  // the warp selection's limit
struct Route {
  const float* logits = nullptr;
  const float* bias = nullptr;
  int64_t rows = 0;
  ExpertSelection select;
  bool sigmoid = true, norm_topk = true;
  float scaling = 1.0f;
  int32_t* chosen = nullptr;
  float* gates = nullptr;
};
cudaError_t route(const Route& p, cudaStream_t s);

// The MoE layer's router at decode, in one launch: xn[t, :] = RMSNorm(x[t, :in]; norm_w) (kept
// for the experts), the logits [t, E] = W xn[t] (gemv's sums: W [E, in]) and route's choice from
// them, into route.chosen and route.gates. The last of a token's blocks to finish its logits
// (counted in arrived [rows], zero before the launch and again after it) routes it. Bit for bit
// rmsnorm_rows, then gemv, then route. route.logits is not read: the logits go to `logits`.
struct RouterStep {
  const float* x = nullptr;
  int64_t ldx = 0;
  const float* norm_w = nullptr;
  float eps = 0.0f;
  float* xn = nullptr;  // [rows, in]
  const void* w = nullptr;
  bool w_bf16 = false;
  int64_t in = 0;
  float* logits = nullptr;     // [rows, E]
  unsigned* arrived = nullptr;  // [rows]
  Route route;                  // rows, selection, bias, scoring, chosen, gates
};
cudaError_t router_step(const RouterStep& p, cudaStream_t s);

// The MoE layer's output added to the residual stream: residual[t, :] += v, where
// v = shared[t, :] (the shared experts' output; zeros when null) plus, in order over j < k,
// gates[t, j] * y[row(t, j), :], row(t, j) = y_rows[t * k + j] (t * k + j when y_rows is null).
cudaError_t combine_experts(const float* y, const int32_t* y_rows, const float* gates,
                            int64_t rows, int k, int64_t dim, const float* shared,
                            float* residual, cudaStream_t s);

// dst[i, :] = src[idx[i], :] for i < n; rows of `dim` floats.
cudaError_t gather_rows(const float* src, const int32_t* idx, int64_t n, int64_t dim, float* dst,
                        cudaStream_t s);

// ---- the decode program: a whole decode step in one launch ----
//
// A decode step is ~10 dependent kernels per layer, each moving a few megabytes of weights; every
// kernel boundary drains the GPU and ramps it up again. While a DecodeRecording lives (on this
// thread), the launch functions above record a stage (the kernel and its arguments) into a
// DecodeProgram instead of launching. launch_decode_program then runs every stage in one
// cooperative launch of as many blocks as the GPU holds at once: each block takes its stage's
// blocks ("units") in turn, each unit first asks for its weights in L2, then waits until every
// unit of the stage before has finished (a count in device memory), so the next weights stream
// in while the last units of a stage finish. Each unit runs the very body of the kernel it
// stands for, so the results equal the launches' bit for bit.
//
// Only the kernels of a one-row decode step on the vector path are recorded (every matrix's
// columns a multiple of 8, one weight dtype, a cache row of a multiple of 4 and at most 640
// columns: V3's is 576); a program with anything else is not runnable (runnable() false, why()
// says what), and the caller runs the plain launches.
constexpr size_t kDecodeStageArgBytes = 320;
struct DecodeStage {
  int32_t kind = 0;     // which kernel (decode_kernels.cu)
  int32_t variant = 0;  // its template choice
  uint32_t grid[3] = {1, 1, 1};
  uint32_t smem = 0;  // dynamic shared memory, bytes
  alignas(16) unsigned char args[kDecodeStageArgBytes] = {};
};

class DecodeProgram {
 public:
  const std::vector<DecodeStage>& stages() const { return stages_; }
  bool runnable() const { return why_.empty() && !stages_.empty(); }
  const std::string& why() const { return why_; }
  // Counts the launch needs in device memory: zero before its first launch (it leaves them so).
  size_t counters() const { return stages_.size() + 1; }

  // For the recording launch functions.
  void add(const DecodeStage& stage);
  void refuse(const std::string& why);
  void weights(bool bf16);
  void attention(bool cache_bf16, int per_lane);

  bool weights_bf16 = false, cache_bf16 = false;
  int per_lane = 0;  // cache columns per lane of the latent attention (0: none)
  size_t smem = 0;   // the largest stage's dynamic shared memory

 private:
  std::vector<DecodeStage> stages_;
  std::string why_;
  bool weights_set_ = false;
};

class DecodeRecording {
 public:
  explicit DecodeRecording(DecodeProgram* program);
  ~DecodeRecording();
  DecodeRecording(const DecodeRecording&) = delete;
  DecodeRecording& operator=(const DecodeRecording&) = delete;

 private:
  DecodeProgram* was_;
};

// Runs a runnable program on s: `stages` is its stages() in device memory, `counters` its
// counters() counts (zero before the first launch; each launch leaves them zero).
cudaError_t launch_decode_program(const DecodeProgram& program, const DecodeStage* stages,
                                  unsigned* counters, cudaStream_t s);
// Programs launched so far in this process (tests check that a step ran as one).
uint64_t decode_programs_launched();

}  // namespace dsv3::infer::gpu
