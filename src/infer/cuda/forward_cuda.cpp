// The inference forward pass on a GPU (infer/device_forward.h): the CPU engine's pass
// (infer/engine.cpp, infer/attention.cpp), op for op, on device memory.
//
// Memory: the weights are copied once into one device allocation, in the precision they were
// loaded in (F32 or BF16; FP8 checkpoints arrive dequantized). Working buffers are one more
// allocation, sized for the largest pass seen. Each pass uploads its per-row inputs (token ids,
// positions, cache addresses) in one copy; every kernel reads them from device memory.
//
// Products: up to kSmallRows rows (decode, verification, small batches) a hand-written GEMV
// streams each weight row once for all rows; more rows (prefill) use cuBLAS, with the
// activations rounded to BF16 against BF16 weights as the CPU's prefill GEMM does. The routed
// experts of a decode pass take the GEMV with a per-row expert table (each row reads the expert
// the router chose for it), so no routing count comes back to the host; a prefill waits once
// per MoE layer for the choices and runs one GEMM per expert over its rows.
// On the GEMV path launches are fused wherever the result stays bit for bit the separate
// kernels': each RMSNorm rides in the GEMV that reads it; the MoE's norm, router logits and
// expert choice are one launch (which stores the norm for the experts); gate, up and SwiGLU are
// one launch, q_a and kv_a another; the latent cache write rides in the query absorption; a
// shared expert of a routed expert's shape is one more slot of the routed experts' launches;
// the down projections, the weighted combination and the residual add are one launch; the
// output projection adds into the residual stream itself. Every launch of a decode step costs
// a few microseconds of ramp and drain whatever it does
// (tests/cuda_emulation/test_decode_launches.cpp counts them).
//
// CUDA graphs: a one-token pass of one sequence (a decode step) is the same launches at every
// position, so it is captured once per (depth, logits or not, cache dtype) and replayed; the
// first such pass runs its launches directly (loading every kernel before any capture) and the
// second is captured. The graphs are dropped when the working buffers grow.
// DSV3_CUDA_GRAPHS=0 turns them off; DSV3_CUDA_SYNC=1 waits after every launch (debugging).
// The steps are captured with programmatic dependent launch (decode_kernels.h): each kernel
// fetches its weights into L2 while the one before it finishes (sm_90 and later; 4-6% more
// tokens/s on an H100). DSV3_CUDA_PDL=0 captures them without it.
// DSV3_CUDA_PERSISTENT=1 runs each such step as one launch instead (gpu::DecodeProgram: the
// step's kernels recorded once per key, then run as units of one cooperative grid that wait
// on counts instead of kernel boundaries), captured and replayed the same way; bit for bit the
// separate launches. A model whose step the program cannot hold (see DecodeProgram) says so
// once on stderr and runs the launches.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "core/device.h"
#include "core/error.h"
#include "infer/cuda/decode_kernels.h"
#include "infer/device_forward.h"
#include "infer/matmul.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "model/router.h"

namespace dsv3::infer {
namespace {

using cuda::check;

cudaError_t device_alloc(void** p, size_t n) { return cudaMalloc(p, n); }
cudaError_t pinned_alloc(void** p, size_t n) { return cudaMallocHost(p, n); }
cudaError_t device_free(void* p) { return cudaFree(p); }
cudaError_t pinned_free(void* p) { return cudaFreeHost(p); }

double mib(size_t bytes) { return double(bytes) / (1 << 20); }

// The error of a failed allocation of `bytes` for `what`: its size and, for device memory, what
// the device has free, so that a prompt too long for the GPU says so.
[[noreturn]] void fail_allocation(cudaError_t e, size_t bytes, const std::string& what,
                                  bool device) {
  size_t free_b = 0, total_b = 0;
  std::string free_note;
  if (device && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
    free_note = fmt::format(", the GPU has {:.1f} of {:.1f} MiB free", mib(free_b), mib(total_b));
  (void)cudaGetLastError();  // an allocation's error is not sticky: the engine stays usable
  fail("inference on cuda: {}: cannot allocate {:.1f} MiB of {} memory{} ({})", what, mib(bytes),
       device ? "device" : "pinned host", free_note, cudaGetErrorName(e));
}

// Memory from Alloc, given back with Free on destruction: device memory for the weights and
// working buffers, pinned host memory for the per-pass upload. `what` names the buffer in the
// error when the allocation fails.
template <cudaError_t (*Alloc)(void**, size_t), cudaError_t (*Free)(void*)>
class OwnedMemory {
 public:
  OwnedMemory() = default;
  OwnedMemory(size_t bytes, const std::string& what) {
    const cudaError_t e = Alloc(&p_, bytes ? bytes : 256);
    if (e == cudaSuccess) return;
    p_ = nullptr;
    fail_allocation(e, bytes, what, Alloc != pinned_alloc);
  }
  ~OwnedMemory() {
    if (p_) Free(p_);
  }
  OwnedMemory(OwnedMemory&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  OwnedMemory& operator=(OwnedMemory&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  char* get() const { return static_cast<char*>(p_); }

 private:
  void* p_ = nullptr;
};
using DeviceBuffer = OwnedMemory<device_alloc, device_free>;
using PinnedBuffer = OwnedMemory<pinned_alloc, pinned_free>;

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// A weight matrix in device memory, contiguous [rows, cols].
struct DMat {
  const void* p = nullptr;
  bool bf16 = false;
  int64_t rows = 0, cols = 0;
};
struct DFfn {
  DMat gate, up, down;
};
struct DAttn {
  DMat q_a, q_b, q_proj, kv_a, kv_b, o;
  const float* q_a_norm = nullptr;
  const float* kv_a_norm = nullptr;
};
struct DLayer {
  const float* input_norm = nullptr;
  const float* post_norm = nullptr;
  DAttn attn;
  bool moe = false;
  DFfn dense;
  DMat router;
  const float* router_bias = nullptr;
  const void* const* gate_table = nullptr;  // [E] device pointers to each expert's matrix
  const void* const* up_table = nullptr;
  const void* const* down_table = nullptr;
  std::vector<const void*> gate_ptrs, up_ptrs, down_ptrs;  // the same pointers, on the host
  bool experts_bf16 = false;
  bool has_shared = false;
  DFfn shared;
  // The shared experts have a routed expert's shape and dtype: at decode they are one more
  // slot of the routed experts' launches.
  bool shared_as_slot = false;
};
struct DMtp {
  const float* enorm = nullptr;
  const float* hnorm = nullptr;
  const float* head_norm = nullptr;
  DMat eh_proj;
  DLayer block;
};

// Copies the weights into one device allocation: a first pass sizes it, a second copies.
class WeightUploader {
 public:
  explicit WeightUploader(bool copying, char* base) : copying_(copying), base_(base) {}
  size_t bytes() const { return offset_; }

  DMat mat(const MatRef& m) {
    if (m.empty()) return {};
    DSV3_CHECK(m.dtype == DType::F32 || m.dtype == DType::BF16,
               "inference on cuda: weight dtype {} (F32 or BF16 expected)", dtype_name(m.dtype));
    const size_t es = dtype_size(m.dtype);
    auto key = std::make_tuple(m.data, m.rows, m.cols);
    auto it = seen_.find(key);  // tied embeddings: one copy
    size_t off;
    if (it != seen_.end()) {
      off = it->second;
    } else {
      off = take(size_t(m.rows * m.cols) * es);
      seen_[key] = off;
      if (copying_)
        check(cudaMemcpy2D(base_ + off, size_t(m.cols) * es, m.data, size_t(m.ld) * es,
                           size_t(m.cols) * es, size_t(m.rows), cudaMemcpyHostToDevice),
              "inference on cuda: copying a weight");
    }
    return {copying_ ? base_ + off : nullptr, m.dtype == DType::BF16, m.rows, m.cols};
  }
  const float* vec(const Tensor& t) {
    if (!t.defined()) return nullptr;
    Tensor f = t.dtype() == DType::F32 ? t : t.to_f32();
    const size_t off = take(size_t(f.numel()) * 4);
    if (!copying_) return nullptr;
    check(cudaMemcpy(base_ + off, f.data(), size_t(f.numel()) * 4, cudaMemcpyHostToDevice),
          "inference on cuda: copying a vector");
    return reinterpret_cast<const float*>(base_ + off);
  }
  const void* const* table(const std::vector<const void*>& ptrs) {
    const size_t off = take(ptrs.size() * sizeof(void*));
    if (!copying_) return nullptr;
    check(cudaMemcpy(base_ + off, ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice),
          "inference on cuda: copying an expert table");
    return reinterpret_cast<const void* const*>(base_ + off);
  }

 private:
  size_t take(size_t bytes) {
    const size_t off = offset_;
    offset_ += align256(bytes);
    return off;
  }
  bool copying_;
  char* base_;
  size_t offset_ = 0;
  std::map<std::tuple<const void*, int64_t, int64_t>, size_t> seen_;
};

class CudaForward final : public DeviceForward {
 public:
  CudaForward(std::shared_ptr<const InferWeights> w, const RopeTables& rope)
      : w_(std::move(w)), c_(w_->config()) {
    device::require_cuda("inference on cuda");
    DSV3_CHECK(c_.kv_lora_rank <= gpu::kMaxDecodeRank,
               "inference on cuda: kv_lora_rank = {} exceeds the {} the decode kernel holds",
               c_.kv_lora_rank, gpu::kMaxDecodeRank);
    DSV3_CHECK(c_.kv_lora_rank + c_.qk_rope_head_dim <= gpu::kMaxDecodeWidth,
               "inference on cuda: kv_lora_rank + qk_rope_head_dim = {} exceeds the {} the decode "
               "kernel holds",
               c_.kv_lora_rank + c_.qk_rope_head_dim, gpu::kMaxDecodeWidth);
    DSV3_CHECK(c_.n_routed_experts <= gpu::kMaxRouterExperts,
               "inference on cuda: n_routed_experts = {} exceeds the router kernel's {}",
               c_.n_routed_experts, gpu::kMaxRouterExperts);
    DSV3_CHECK(c_.qk_rope_head_dim % 2 == 0, "inference on cuda: qk_rope_head_dim must be even");
    WeightUploader sizing(false, nullptr);
    upload(sizing, rope);
    size_t free_b = 0, total_b = 0;
    check(cudaMemGetInfo(&free_b, &total_b), "inference on cuda: device memory");
    DSV3_CHECK(sizing.bytes() < free_b,
               "inference on cuda: the weights need {:.2f} GiB of device memory, the GPU has "
               "{:.2f} GiB free (try --dtype bf16, or a smaller model)",
               double(sizing.bytes()) / (1 << 30), double(free_b) / (1 << 30));
    weights_ = DeviceBuffer(sizing.bytes(), "the model's weights");
    WeightUploader copying(true, weights_.get());
    upload(copying, rope);
    check(cudaStreamCreateWithFlags(&capture_stream_, cudaStreamNonBlocking),
          "inference on cuda: stream");
    const char* env = std::getenv("DSV3_CUDA_GRAPHS");
    graphs_enabled_ = !(env && std::string(env) == "0");
    const char* sync = std::getenv("DSV3_CUDA_SYNC");
    sync_each_launch_ = sync && std::string(sync) == "1";
    const char* pdl = std::getenv("DSV3_CUDA_PDL");
    programmatic_launch_ = !(pdl && std::string(pdl) == "0");
    const char* persistent = std::getenv("DSV3_CUDA_PERSISTENT");
    persistent_ = persistent && std::string(persistent) == "1";
  }

  ~CudaForward() override {
    drop_graphs();
    if (capture_stream_) cudaStreamDestroy(capture_stream_);
  }

  void forward(int depth, std::span<const Chunk> chunks, const float* h_prev, LogitsFor which,
               std::vector<float>& hidden, std::vector<float>& logits, int& logits_rows) override;

 private:
  void upload(WeightUploader& u, const RopeTables& rope);
  DLayer upload_layer(WeightUploader& u, const LayerWeights& l);
  void ensure_capacity(int64_t rows, int64_t chunks);
  // The logits buffer holds the rows a pass returns (all rows, or one per chunk): a long
  // prefill that wants only its last row's logits does not allocate n x V.
  void ensure_logits(int64_t rows);
  void drop_graphs();
  void run(int depth, int64_t n, int64_t n_chunks, LogitsFor which, bool cache_bf16);
  // A decode step as one launch (DSV3_CUDA_PERSISTENT=1): its program, recorded once per graph
  // key outside any capture, in device memory with the counts its launch needs.
  struct Program {
    gpu::DecodeProgram program;
    DeviceBuffer stages, counters;
  };
  // The key's program, recorded on first use; null when the step cannot run as one.
  const Program* program_for(int key, int depth, LogitsFor which, bool cache_bf16);
  // One pass: the program's launch, or run's launches.
  void run_pass(const Program* program, int depth, int64_t n, int64_t n_chunks, LogitsFor which,
                bool cache_bf16);
  void block(const DLayer& l, int cache_layer, int64_t n, bool cache_bf16);
  // The attention half of a layer, of RMSNorm(x; input_norm), added to the residual stream x.
  void attention(const DAttn& a, const float* input_norm, int cache_layer, int64_t n,
                 bool cache_bf16);
  // out (= or +=) the FFN f of x [n, D], or of RMSNorm(x; norm) when norm is given.
  void ffn(const DFfn& f, const float* x, const float* norm, int64_t n, float* out,
           bool accumulate);
  // The MoE half of a layer, of RMSNorm(x; l.post_norm), added to the residual stream x.
  void moe(const DLayer& l, int64_t n);
  // The routed (and shared) experts of a decode pass: GEMVs through the expert tables.
  void routed_experts_gemv(const DLayer& l, int64_t n);
  // The routed experts of a prefill as one GEMM per expert over its rows (gathered in expert
  // order), after one wait for the routing; the decode path's per-row GEMV would read an
  // expert's weights once per row.
  void routed_experts_grouped(const DLayer& l, int64_t n);
  // cuBLAS (prefill) or the GEMV (up to kSmallRows rows, and inside a capture).
  bool use_blas(int64_t n, int64_t ldx, const DMat& w) const {
    return n > kSmallRows && ldx == w.cols && !capturing();
  }
  // A pass of GEMVs (use_blas false for every full-width product): norms fuse into them.
  bool gemv_pass(int64_t n) const { return n <= kSmallRows || capturing(); }
  // y [n, D] = RMSNorm(x [n, D]; w), as its own launch (the cuBLAS path).
  void rmsnorm(const float* x, const float* w, int64_t n, float* y);
  void linear(const float* x, int64_t n, int64_t ldx, const DMat& w, float* y, int64_t ldy,
              bool accumulate = false);
  // The GEMV y [n, w.rows] (leading dimension ldy) = x [n, w.cols] (ldx) W^T, for callers to
  // add a fused mode to.
  static gpu::Gemv gemv_of(const float* x, int64_t n, int64_t ldx, const DMat& w, float* y,
                           int64_t ldy);
  // DSV3_CUDA_SYNC=1: wait after every launch outside graph capture, so that a fault inside a
  // kernel is reported with that kernel's name instead of at the next copy.
  void launch(cudaError_t e, const char* what) {
    check(e, what);
    if (sync_each_launch_ && !capturing()) check(cudaDeviceSynchronize(), what);
  }

  std::shared_ptr<const InferWeights> w_;
  const ModelConfig& c_;
  DeviceBuffer weights_;
  const void* embed_ = nullptr;
  bool embed_bf16_ = false;
  const float* norm_ = nullptr;
  DMat lm_head_;
  std::vector<DLayer> layers_;
  std::vector<DMtp> mtp_;
  gpu::RopeTable rope_;
  float softmax_scale_ = 1.0f;

  // Working buffers and the per-pass inputs.
  int64_t cap_rows_ = 0, cap_chunks_ = 0;
  DeviceBuffer work_, inputs_dev_, logits_buf_;
  int64_t logits_rows_cap_ = 0;
  PinnedBuffer inputs_host_;
  size_t inputs_bytes_ = 0;
  struct Buffers {
    float *x, *xn, *sub, *hidden, *last, *logits, *qa, *q, *kv_a, *qcat, *olat, *o, *g, *u, *ey,
        *router, *gates, *emb, *cat, *h_prev, *attn_partial;
    int32_t* chosen;
    int32_t *perm_rows, *slot_of;  // prefill's expert order: source row per slot, slot per pick
    int64_t* expert_offsets;       // prefill: each expert's first slot [E + 1]
    unsigned* attn_arrived;  // per (row, head): split blocks done (zero between launches)
    unsigned* router_arrived;  // per row: router blocks done (zero between launches)
    uint16_t* xbf;
    // Inputs (device), uploaded per pass: cache addresses, ids, positions, capacities, the last
    // row of each chunk.
    void** cache_base;
    int32_t *ids, *pos, *capacity, *last_rows;
  } b_{};

  cudaStream_t s_ = nullptr;  // the legacy stream, or the capture stream while capturing
  cudaStream_t capture_stream_ = nullptr;
  bool capturing() const { return s_ != nullptr; }
  bool graphs_enabled_ = true;
  bool sync_each_launch_ = false;
  bool programmatic_launch_ = true;  // in captured decode steps (DSV3_CUDA_PDL=0: off)
  bool persistent_ = false;          // decode steps as one launch (DSV3_CUDA_PERSISTENT=1)
  bool told_not_persistent_ = false;  // said once why a step runs as separate launches
  // While a step's program is recorded: only gpu:: launches (which record) may be issued.
  bool recording_ = false;
  std::map<int, Program> programs_;
  std::map<int, cudaGraphExec_t> graphs_;
  std::set<int> run_directly_;  // keys whose one-token pass has run once without a graph
};

void CudaForward::upload(WeightUploader& u, const RopeTables& rope) {
  const InferWeights& w = *w_;
  DMat e = u.mat(w.embed);
  embed_ = e.p;
  embed_bf16_ = e.bf16;
  norm_ = u.vec(w.norm);
  lm_head_ = u.mat(w.lm_head);
  layers_.clear();
  for (const LayerWeights& l : w.layers) layers_.push_back(upload_layer(u, l));
  mtp_.clear();
  for (const MtpModuleWeights& m : w.mtp) {
    DMtp d;
    d.enorm = u.vec(m.enorm);
    d.hnorm = u.vec(m.hnorm);
    d.head_norm = u.vec(m.head_norm);
    d.eh_proj = u.mat(m.eh_proj);
    d.block = upload_layer(u, m.block);
    mtp_.push_back(d);
  }
  rope_.cos = u.vec(rope.cos);
  rope_.sin = u.vec(rope.sin);
  rope_.rope = c_.qk_rope_head_dim;
  softmax_scale_ = float(rope.softmax_scale);
}

DLayer CudaForward::upload_layer(WeightUploader& u, const LayerWeights& l) {
  DLayer d;
  d.input_norm = u.vec(l.input_norm);
  d.post_norm = u.vec(l.post_attention_norm);
  const AttentionWeights& a = l.attn;
  d.attn.q_a = u.mat(a.q_a);
  d.attn.q_b = u.mat(a.q_b);
  d.attn.q_proj = u.mat(a.q_proj);
  d.attn.q_a_norm = u.vec(a.q_a_norm);
  d.attn.kv_a = u.mat(a.kv_a);
  d.attn.kv_a_norm = u.vec(a.kv_a_norm);
  d.attn.kv_b = u.mat(a.kv_b);
  d.attn.o = u.mat(a.o);
  d.moe = l.moe;
  auto ffn = [&](const FfnWeights& f) { return DFfn{u.mat(f.gate), u.mat(f.up), u.mat(f.down)}; };
  if (!l.moe) {
    d.dense = ffn(l.dense);
    return d;
  }
  d.router = u.mat(l.router);
  d.router_bias = u.vec(l.router_bias);
  std::vector<const void*> gate, up, down;
  for (const FfnWeights& f : l.experts) {
    DFfn e = ffn(f);
    gate.push_back(e.gate.p);
    up.push_back(e.up.p);
    down.push_back(e.down.p);
    d.experts_bf16 = e.gate.bf16;
  }
  d.gate_table = u.table(gate);
  d.up_table = u.table(up);
  d.down_table = u.table(down);
  d.gate_ptrs = gate;
  d.up_ptrs = up;
  d.down_ptrs = down;
  d.has_shared = l.has_shared;
  if (l.has_shared) {
    d.shared = ffn(l.shared);
    const int64_t width = c_.moe_intermediate_size;
    d.shared_as_slot = d.shared.gate.rows == width && d.shared.down.cols == width &&
                       d.shared.gate.bf16 == d.experts_bf16 && d.shared.up.bf16 == d.experts_bf16 &&
                       d.shared.down.bf16 == d.experts_bf16;
  }
  return d;
}

void CudaForward::drop_graphs() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
  programs_.clear();  // their stages point into the same buffers
}

const CudaForward::Program* CudaForward::program_for(int key, int depth, LogitsFor which,
                                                     bool cache_bf16) {
  auto it = programs_.find(key);
  if (it == programs_.end()) {
    Program p;
    int device = 0, cooperative = 0;
    check(cudaGetDevice(&device), "inference on cuda: device");
    check(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device),
          "inference on cuda: device attributes");
    if (cooperative) {
      const gpu::DecodeRecording recording(&p.program);
      recording_ = true;
      try {
        run(depth, 1, 1, which, cache_bf16);
      } catch (...) {
        recording_ = false;
        throw;
      }
      recording_ = false;
    } else {
      p.program.refuse("cooperative launches (this device has none)");
    }
    if (p.program.runnable()) {
      const std::vector<gpu::DecodeStage>& st = p.program.stages();
      p.stages = DeviceBuffer(st.size() * sizeof(gpu::DecodeStage), "the decode program");
      check(cudaMemcpy(p.stages.get(), st.data(), st.size() * sizeof(gpu::DecodeStage),
                       cudaMemcpyHostToDevice),
            "inference on cuda: uploading the decode program");
      p.counters =
          DeviceBuffer(p.program.counters() * sizeof(unsigned), "the decode program's counts");
      check(cudaMemsetAsync(p.counters.get(), 0, p.program.counters() * sizeof(unsigned), nullptr),
            "inference on cuda: the decode program's counts");
    } else if (!told_not_persistent_) {
      told_not_persistent_ = true;
      std::fprintf(stderr,
                   "DSV3_CUDA_PERSISTENT: this model's decode step runs as separate launches "
                   "(the decode program cannot hold %s)\n",
                   p.program.why().empty() ? "an empty step" : p.program.why().c_str());
    }
    it = programs_.emplace(key, std::move(p)).first;
  }
  return it->second.program.runnable() ? &it->second : nullptr;
}

void CudaForward::run_pass(const Program* program, int depth, int64_t n, int64_t n_chunks,
                           LogitsFor which, bool cache_bf16) {
  if (program == nullptr) return run(depth, n, n_chunks, which, cache_bf16);
  launch(gpu::launch_decode_program(program->program,
                                    reinterpret_cast<const gpu::DecodeStage*>(program->stages.get()),
                                    reinterpret_cast<unsigned*>(program->counters.get()), s_),
         "inference on cuda: decode program");
}

void CudaForward::ensure_logits(int64_t rows) {
  if (rows <= logits_rows_cap_) return;
  drop_graphs();
  // The capacity is recorded only once the buffer exists: a failed allocation (out of memory)
  // leaves none, and the next pass asks again instead of writing through a freed pointer.
  logits_rows_cap_ = 0;
  b_.logits = nullptr;
  logits_buf_ = DeviceBuffer();
  const int64_t cap = std::max<int64_t>(rows, kSmallRows);
  logits_buf_ = DeviceBuffer(size_t(cap * c_.vocab_size) * 4,
                             fmt::format("the logits of a pass of {} rows", cap));
  b_.logits = reinterpret_cast<float*>(logits_buf_.get());
  logits_rows_cap_ = cap;
}

void CudaForward::ensure_capacity(int64_t rows, int64_t chunks) {
  if (rows <= cap_rows_ && chunks <= cap_chunks_) return;
  drop_graphs();  // they point into the buffers about to be replaced
  // Grow to at least kSmallRows rows so that decode steps never reallocate after a prefill.
  const int64_t n = std::max<int64_t>({rows, cap_rows_, kSmallRows});
  const int64_t nc = std::max<int64_t>({chunks, cap_chunks_, kSmallRows});
  const int64_t d = c_.hidden_size, h = c_.num_attention_heads, dq = c_.qk_head_dim(),
                r = c_.kv_lora_rank, wdt = r + c_.qk_rope_head_dim, dv = c_.v_head_dim,
                k = c_.num_experts_per_tok, e = c_.n_routed_experts;
  const int64_t q_rank = c_.q_lora_rank ? *c_.q_lora_rank : 0;
  int64_t width = c_.intermediate_size;  // the widest FFN intermediate over every layer kind
  // (the routed experts' K slots and a shared one at decode)
  width = std::max<int64_t>(width, int64_t(c_.moe_intermediate_size) * (k + 1));
  for (const DLayer& l : layers_)
    if (l.has_shared) width = std::max(width, l.shared.gate.rows);
  for (const DMtp& m : mtp_)
    if (m.block.has_shared) width = std::max(width, m.block.shared.gate.rows);
  const int64_t widest_in = std::max<int64_t>({2 * d, q_rank, h * dv, width});
  // BF16 copies of GEMM inputs: any layer's [n, widest_in], or the routed experts' [n * K, D or
  // moe_intermediate_size] in a prefill.
  const int64_t bf16_elems =
      std::max(n * widest_in, n * k * std::max<int64_t>(d, c_.moe_intermediate_size));
  // One allocation: each buffer's offset is planned first, its pointer set once it exists.
  size_t off = 0;
  std::vector<std::function<void(char*)>> bind;  // sets each pointer from the allocation
  auto take = [&](auto*& field, int64_t count) {
    using T = std::remove_reference_t<decltype(*field)>;
    bind.push_back([&field, at = off](char* base) { field = reinterpret_cast<T*>(base + at); });
    off += align256(size_t(count) * sizeof(T));
  };
  take(b_.x, n * d);
  take(b_.xn, n * d);
  take(b_.sub, n * d);
  take(b_.hidden, n * d);
  take(b_.last, nc * d);
  take(b_.qa, n * std::max<int64_t>(q_rank, 1));
  take(b_.q, n * h * dq);
  take(b_.kv_a, n * wdt);
  take(b_.qcat, n * h * wdt);
  take(b_.olat, n * h * r);
  take(b_.attn_partial, kSmallRows * h * gpu::kAttnSplits * (r + 2));  // split attention states
  take(b_.attn_arrived, kSmallRows * h);
  take(b_.router_arrived, kSmallRows);
  take(b_.o, n * h * dv);
  take(b_.g, n * width);
  take(b_.u, n * width);
  take(b_.ey, n * k * d);
  take(b_.router, n * std::max<int64_t>(e, 1));
  take(b_.gates, n * std::max<int64_t>(k, 1));
  take(b_.emb, n * d);
  take(b_.cat, n * 2 * d);
  take(b_.h_prev, n * d);
  take(b_.chosen, n * std::max<int64_t>(k, 1));
  take(b_.xbf, bf16_elems);
  take(b_.perm_rows, n * std::max<int64_t>(k, 1));
  take(b_.slot_of, n * std::max<int64_t>(k, 1));
  take(b_.expert_offsets, e + 1);
  // Free the old buffers before the new ones are allocated, and hold no capacity until all of
  // them exist: a failed allocation (out of memory) leaves the forward empty, so the next pass
  // allocates again instead of using freed buffers.
  cap_rows_ = cap_chunks_ = 0;
  inputs_bytes_ = 0;
  work_ = DeviceBuffer();
  inputs_dev_ = DeviceBuffer();
  inputs_host_ = PinnedBuffer();
  work_ = DeviceBuffer(off, fmt::format("the working buffers of a pass of {} rows", n));
  for (const auto& set_pointer : bind) set_pointer(work_.get());
  check(cudaMemsetAsync(b_.attn_arrived, 0, size_t(kSmallRows * h) * sizeof(unsigned), nullptr),
        "inference on cuda: clearing the attention counts");
  check(cudaMemsetAsync(b_.router_arrived, 0, size_t(kSmallRows) * sizeof(unsigned), nullptr),
        "inference on cuda: clearing the router counts");
  // Inputs: [cache_base n (8 bytes each) | ids n | pos n | capacity n | last_rows nc].
  const size_t input_bytes = size_t(n) * 8 + size_t(3 * n + nc) * 4;
  inputs_dev_ = DeviceBuffer(input_bytes, "the per-row inputs of a pass");
  inputs_host_ = PinnedBuffer(input_bytes, "the per-row inputs of a pass");
  inputs_bytes_ = input_bytes;
  char* in = inputs_dev_.get();
  b_.cache_base = reinterpret_cast<void**>(in);
  b_.ids = reinterpret_cast<int32_t*>(in + n * 8);
  b_.pos = b_.ids + n;
  b_.capacity = b_.pos + n;
  b_.last_rows = b_.capacity + n;
  cap_rows_ = n;
  cap_chunks_ = nc;
}

void CudaForward::linear(const float* x, int64_t n, int64_t ldx, const DMat& w, float* y,
                         int64_t ldy, bool accumulate) {
  if (use_blas(n, ldx, w)) {
    DSV3_CHECK(!recording_, "inference on cuda: a cuBLAS product inside a recorded decode step");
    // Prefill: cuBLAS, y = x W^T. Against BF16 weights the activations are rounded to BF16 first.
    cuda::BlasGemm g;
    g.trans_b = true;
    g.m = n;
    g.n = w.rows;
    g.k = w.cols;
    g.beta = accumulate ? 1.0f : 0.0f;
    g.lda = w.cols;
    g.b = w.p;
    g.ldb = w.cols;
    g.c = y;
    g.ldc = ldy;
    if (w.bf16) {
      launch(cuda::f32_to_bf16(x, b_.xbf, n * w.cols, s_), "inference on cuda: bf16 activations");
      g.a = b_.xbf;
      g.ab_type = CUDA_R_16BF;
    } else {
      g.a = x;
    }
    cuda::blas_gemm(g, "inference on cuda: prefill product");
    return;
  }
  gpu::Gemv p = gemv_of(x, n, ldx, w, y, ldy);
  p.accumulate = accumulate;
  launch(gpu::gemv(p, s_), "inference on cuda: gemv");
}

gpu::Gemv CudaForward::gemv_of(const float* x, int64_t n, int64_t ldx, const DMat& w, float* y,
                               int64_t ldy) {
  gpu::Gemv p;
  p.x = x;
  p.ldx = ldx;
  p.w = w.p;
  p.w_bf16 = w.bf16;
  p.in = w.cols;
  p.y = y;
  p.ldy = ldy;
  p.rows = n;
  p.out = w.rows;
  return p;
}

void CudaForward::rmsnorm(const float* x, const float* w, int64_t n, float* y) {
  const int64_t d = c_.hidden_size;
  launch(gpu::rmsnorm_rows(x, d, w, n, d, float(c_.rms_norm_eps), y, d, s_),
         "inference on cuda: norm");
}

void CudaForward::ffn(const DFfn& f, const float* x, const float* norm, int64_t n, float* out,
                      bool accumulate) {
  const int64_t d = c_.hidden_size, width = f.gate.rows;
  if (use_blas(n, d, f.gate)) {
    if (norm) {
      rmsnorm(x, norm, n, b_.xn);
      x = b_.xn;
    }
    linear(x, n, d, f.gate, b_.g, width);
    linear(x, n, d, f.up, b_.u, width);
    launch(gpu::swiglu_rows(b_.g, b_.u, n * width, s_), "inference on cuda: swiglu");
  } else {  // the norm, gate, up and SwiGLU in one launch
    DSV3_CHECK(f.up.bf16 == f.gate.bf16, "inference on cuda: gate and up of different dtypes");
    gpu::Gemv p = gemv_of(x, n, d, f.gate, b_.g, width);
    p.up = f.up.p;
    p.swiglu = true;
    p.norm = {norm, float(c_.rms_norm_eps)};
    launch(gpu::gemv(p, s_), "inference on cuda: gate/up gemv");
  }
  linear(b_.g, n, width, f.down, out, d, accumulate);
}

void CudaForward::moe(const DLayer& l, int64_t n) {
  const int64_t d = c_.hidden_size, e = c_.n_routed_experts;
  gpu::Route r;
  r.logits = b_.router;
  r.bias = l.router_bias;
  r.rows = n;
  r.select = expert_selection(c_);
  r.sigmoid = c_.scoring_func == ScoringFunc::Sigmoid;
  r.norm_topk = c_.norm_topk_prob;
  r.scaling = float(c_.routed_scaling_factor);
  r.chosen = b_.chosen;
  r.gates = b_.gates;
  if (gemv_pass(n)) {  // the norm (stored for the experts), the logits and the choice: one launch
    DSV3_CHECK(n <= kSmallRows, "inference on cuda: a router pass of {} rows", n);
    gpu::RouterStep rs;
    rs.x = b_.x;
    rs.ldx = d;
    rs.norm_w = l.post_norm;
    rs.eps = float(c_.rms_norm_eps);
    rs.xn = b_.xn;
    rs.w = l.router.p;
    rs.w_bf16 = l.router.bf16;
    rs.in = d;
    rs.logits = b_.router;
    rs.arrived = b_.router_arrived;
    rs.route = r;
    launch(gpu::router_step(rs, s_), "inference on cuda: norm, router and expert choice");
    routed_experts_gemv(l, n);
    return;
  }
  rmsnorm(b_.x, l.post_norm, n, b_.xn);
  linear(b_.xn, n, d, l.router, b_.router, e);
  launch(gpu::route(r, s_), "inference on cuda: router");
  // The shared experts' output, to which the routed experts' weighted rows are added.
  if (l.has_shared) ffn(l.shared, b_.xn, nullptr, n, b_.sub, false);
  routed_experts_grouped(l, n);
}

void CudaForward::routed_experts_gemv(const DLayer& l, int64_t n) {
  const int64_t d = c_.hidden_size, k = c_.num_experts_per_tok, width = c_.moe_intermediate_size;
  // Shared experts of another shape: their own launches, their output added by experts_down.
  if (l.has_shared && !l.shared_as_slot) ffn(l.shared, b_.xn, nullptr, n, b_.sub, false);
  // Row t * slots + j is token t's j-th expert (slot K: the shared expert, when it is a slot):
  // gate, up and SwiGLU in one launch.
  const int64_t slots = k + (l.shared_as_slot ? 1 : 0);
  gpu::Gemv p;
  p.table_idx = b_.chosen;
  p.w_bf16 = l.experts_bf16;
  p.rows = n * slots;
  p.x = b_.xn;
  p.ldx = d;
  p.x_row_div = int(slots);
  p.table = l.gate_table;
  p.up_table = l.up_table;
  p.swiglu = true;
  p.in = d;
  p.y = b_.g;  // [n * slots, width]
  p.ldy = width;
  p.out = width;
  if (l.shared_as_slot) {
    p.picks = k;
    p.shared_w = l.shared.gate.p;
    p.shared_up = l.shared.up.p;
  }
  launch(gpu::gemv(p, s_), "inference on cuda: expert gate/up gemv");
  // The down projections, weighted and summed with the shared output into the residual stream.
  gpu::ExpertsDown down;
  down.g = b_.g;
  down.width = width;
  down.table = l.down_table;
  down.chosen = b_.chosen;
  down.gates = b_.gates;
  down.w_bf16 = l.experts_bf16;
  down.rows = n;
  down.picks = int(k);
  down.experts = int(c_.n_routed_experts);
  down.dim = d;
  if (l.shared_as_slot)
    down.shared_w = l.shared.down.p;
  else if (l.has_shared)
    down.shared_out = b_.sub;
  down.residual = b_.x;
  launch(gpu::experts_down(down, s_), "inference on cuda: expert down gemv, combine and residual");
}

void CudaForward::routed_experts_grouped(const DLayer& l, int64_t n) {
  const int64_t d = c_.hidden_size, e = c_.n_routed_experts, k = c_.num_experts_per_tok,
                width = c_.moe_intermediate_size, picks = n * k;
  DSV3_CHECK(!capturing(), "inference on cuda: a prefill cannot be captured (it waits for routing)");
  DSV3_CHECK(!recording_, "inference on cuda: a prefill's experts inside a recorded decode step");
  // The one wait: the chosen experts [n, K] come to the host, which counts them to size the
  // GEMMs; the training step's permutation kernel (ops::moe_permute) then orders the picks by
  // expert, stable in token order, into slots: perm_rows[slot] is the token, slot_of[t * K + j]
  // the slot of token t's j-th pick.
  std::vector<int32_t> chosen(static_cast<size_t>(picks));
  check(cudaMemcpy(chosen.data(), b_.chosen, size_t(picks) * 4, cudaMemcpyDeviceToHost),
        "inference on cuda: reading the routing");
  std::vector<int64_t> start(size_t(e) + 1, 0);
  for (int32_t x : chosen) ++start[size_t(x) + 1];
  for (int64_t i = 0; i < e; ++i) start[size_t(i + 1)] += start[size_t(i)];
  // From pageable memory, with the synchronous copy (on the legacy stream, which s_ is outside
  // a capture): CUDA promises it has read `start` when it returns, which an asynchronous copy
  // from pageable memory does not. Nothing is queued since the wait above, so it costs no wait.
  check(cudaMemcpy(b_.expert_offsets, start.data(), start.size() * sizeof(int64_t),
                   cudaMemcpyHostToDevice),
        "inference on cuda: uploading the expert offsets");
  launch(cuda::moe_permute({b_.chosen, b_.expert_offsets, b_.perm_rows, b_.slot_of, picks, k, e},
                           s_),
         "inference on cuda: expert order");
  // ey [picks, D]: the picks' inputs in slot order, later the experts' outputs.
  launch(gpu::gather_rows(b_.xn, b_.perm_rows, picks, d, b_.ey, s_), "inference on cuda: gather");
  const bool bf16 = l.experts_bf16;
  // BF16 weights take BF16 activations, rounded once for all experts.
  auto operand = [&](const float* a, int64_t in) -> const void* {
    if (!bf16) return a;
    launch(cuda::f32_to_bf16(a, b_.xbf, picks * in, s_), "inference on cuda: bf16 activations");
    return b_.xbf;
  };
  // One product per expert with rows: C_e = A[start_e .., :] W_e^T.
  auto grouped = [&](const void* a_dev, int64_t in, const std::vector<const void*>& weights,
                     int64_t out, float* c) {
    cuda::BlasGroupedGemm g;
    g.trans_b = true;
    g.lda = in;
    g.ldb = in;
    g.ldc = out;
    g.ab_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    for (int64_t x = 0; x < e; ++x) {
      const int64_t rows = start[size_t(x + 1)] - start[size_t(x)];
      if (rows == 0) continue;
      g.m.push_back(rows);
      g.n.push_back(out);
      g.k.push_back(in);
      g.a.push_back(static_cast<const char*>(a_dev) + start[size_t(x)] * in * (bf16 ? 2 : 4));
      g.b.push_back(weights[size_t(x)]);
      g.c.push_back(c + start[size_t(x)] * out);
    }
    cuda::blas_grouped_gemm(g, "inference on cuda: routed experts");
  };
  const void* x_sorted = operand(b_.ey, d);
  grouped(x_sorted, d, l.gate_ptrs, width, b_.g);
  grouped(x_sorted, d, l.up_ptrs, width, b_.u);
  launch(gpu::swiglu_rows(b_.g, b_.u, picks * width, s_), "inference on cuda: swiglu");
  grouped(operand(b_.g, width), width, l.down_ptrs, d, b_.ey);
  launch(gpu::combine_experts(b_.ey, b_.slot_of, b_.gates, n, int(k), d,
                              l.has_shared ? b_.sub : nullptr, b_.x, s_),
         "inference on cuda: expert combine and residual");
}

void CudaForward::attention(const DAttn& a, const float* input_norm, int cache_layer, int64_t n,
                            bool cache_bf16) {
  const int64_t d = c_.hidden_size, h = c_.num_attention_heads, dn = c_.qk_nope_head_dim,
                dr = c_.qk_rope_head_dim, dq = dn + dr, dv = c_.v_head_dim, r = c_.kv_lora_rank,
                w = r + dr;
  const float eps = float(c_.rms_norm_eps);
  // The query's first product (q_a, or q_proj without a query LoRA) and kv_a read the same
  // input: on the GEMV path, one launch, which also normalises it.
  const DMat& q_first = c_.q_lora_rank ? a.q_a : a.q_proj;
  float* q_out = c_.q_lora_rank ? b_.qa : b_.q;
  if (!gemv_pass(n) || q_first.bf16 != a.kv_a.bf16) {
    rmsnorm(b_.x, input_norm, n, b_.xn);
    linear(b_.xn, n, d, q_first, q_out, q_first.rows);
    linear(b_.xn, n, d, a.kv_a, b_.kv_a, w);
  } else {
    gpu::Gemv p = gemv_of(b_.x, n, d, q_first, q_out, q_first.rows);
    p.second = {a.kv_a.p, w, b_.kv_a, w};
    p.norm = {input_norm, eps};
    launch(gpu::gemv(p, s_), "inference on cuda: norm and query/kv_a gemv");
  }
  if (c_.q_lora_rank) {
    const int64_t qr = *c_.q_lora_rank;
    if (gemv_pass(n)) {  // the q norm in q_b's launch
      gpu::Gemv p = gemv_of(b_.qa, n, qr, a.q_b, b_.q, h * dq);
      p.norm = {a.q_a_norm, eps};
      launch(gpu::gemv(p, s_), "inference on cuda: q norm and q_b gemv");
    } else {
      launch(gpu::rmsnorm_rows(b_.qa, qr, a.q_a_norm, n, qr, eps, b_.qa, qr, s_),
             "inference on cuda: q norm");
      linear(b_.qa, n, qr, a.q_b, b_.q, h * dq);
    }
  }
  gpu::CacheRows cache;
  cache.base = b_.cache_base;
  cache.capacity = b_.capacity;
  cache.pos = b_.pos;
  cache.layer = cache_layer;
  cache.width = int(w);
  cache.bf16 = cache_bf16;
  // The latent cache write rides in the query absorption's launch.
  gpu::AbsorbQuery aq;
  aq.q = b_.q;
  aq.kv_b = a.kv_b.p;
  aq.kv_b_bf16 = a.kv_b.bf16;
  aq.pos = b_.pos;
  aq.rope = rope_;
  aq.rows = n;
  aq.heads = int(h);
  aq.nope = int(dn);
  aq.v = int(dv);
  aq.rank = int(r);
  aq.qcat = b_.qcat;
  aq.kv_a = b_.kv_a;
  aq.kv_a_norm = a.kv_a_norm;
  aq.eps = eps;
  aq.cache = cache;
  launch(gpu::absorb_query(aq, s_), "inference on cuda: latent cache write and query absorption");
  // Decode and other small passes split each head's positions over blocks (the same split for
  // up to kSmallRows rows, so a row's result does not depend on the rows beside it).
  static_assert(kSmallRows <= gpu::kAttnSplitRows);
  const int splits = n <= kSmallRows ? gpu::kAttnSplits : 1;
  launch(gpu::latent_attention(b_.qcat, cache, n, int(h), int(r), softmax_scale_, splits,
                               b_.attn_partial, b_.attn_arrived, b_.olat, s_),
         "inference on cuda: latent attention");
  // Values: o(h) = latent(h) . W_uv(h)^T, W_uv(h) = rows h (nope + v) + nope .. + v of kv_b.
  gpu::Gemv uv;
  uv.x = b_.olat;
  uv.ldx = h * r;
  uv.w = a.kv_b.p;
  uv.w_bf16 = a.kv_b.bf16;
  uv.in = r;
  uv.y = b_.o;
  uv.ldy = h * dv;
  uv.rows = n;
  uv.out = h * dv;
  uv.group = dv;
  uv.w_group_stride = dn + dv;
  uv.w_group_offset = dn;
  uv.x_group_stride = r;
  launch(gpu::gemv(uv, s_), "inference on cuda: value up-projection");
  linear(b_.o, n, h * dv, a.o, b_.x, d, /*accumulate=*/true);  // the residual add
}

void CudaForward::block(const DLayer& l, int cache_layer, int64_t n, bool cache_bf16) {
  // Each half normalises the residual stream x in its first launch (a GEMV pass) and adds its
  // output to x inside its last.
  attention(l.attn, l.input_norm, cache_layer, n, cache_bf16);
  if (l.moe) moe(l, n);
  else
    ffn(l.dense, b_.x, l.post_norm, n, b_.x, /*accumulate=*/true);
}

// The launches of one pass, after its inputs are on the device.
void CudaForward::run(int depth, int64_t n, int64_t n_chunks, LogitsFor which, bool cache_bf16) {
  const int64_t d = c_.hidden_size, v = c_.vocab_size;
  const float eps = float(c_.rms_norm_eps);
  const float* final_norm = norm_;
  if (depth == 0) {
    launch(gpu::embed_rows(embed_, embed_bf16_, b_.ids, n, d, b_.x, s_), "inference on cuda: embedding");
    for (size_t l = 0; l < layers_.size(); ++l) block(layers_[l], int(l), n, cache_bf16);
  } else {
    const DMtp& m = mtp_[size_t(depth - 1)];
    // x = eh_proj([enorm(Emb(t_{i+k})) | hnorm(h^{k-1}_i)])
    launch(gpu::embed_rows(embed_, embed_bf16_, b_.ids, n, d, b_.emb, s_), "inference on cuda: embedding");
    launch(gpu::rmsnorm_rows(b_.emb, d, m.enorm, n, d, eps, b_.cat, 2 * d, s_), "inference on cuda: norm");
    launch(gpu::rmsnorm_rows(b_.h_prev, d, m.hnorm, n, d, eps, b_.cat + d, 2 * d, s_),
           "inference on cuda: norm");
    linear(b_.cat, n, 2 * d, m.eh_proj, b_.x, d);
    block(m.block, 0, n, cache_bf16);
    final_norm = m.head_norm;
  }
  launch(gpu::rmsnorm_rows(b_.x, d, final_norm, n, d, eps, b_.hidden, d, s_), "inference on cuda: norm");
  if (which == LogitsFor::All) {
    linear(b_.hidden, n, d, lm_head_, b_.logits, v);
  } else if (which == LogitsFor::Last && n == n_chunks) {  // every row is its chunk's last
    linear(b_.hidden, n, d, lm_head_, b_.logits, v);
  } else if (which == LogitsFor::Last) {
    launch(gpu::gather_rows(b_.hidden, b_.last_rows, n_chunks, d, b_.last, s_), "inference on cuda: gather");
    linear(b_.last, n_chunks, d, lm_head_, b_.logits, v);
  }
}

void CudaForward::forward(int depth, std::span<const Chunk> chunks, const float* h_prev,
                          LogitsFor which, std::vector<float>& hidden, std::vector<float>& logits,
                          int& logits_rows) {
  const int64_t d = c_.hidden_size, v = c_.vocab_size;
  int64_t n = 0;
  for (const Chunk& ch : chunks) n += ch.n;
  const int64_t nc = int64_t(chunks.size());
  const DType cache_dtype = chunks[0].cache->dtype();
  for (const Chunk& ch : chunks) {
    DSV3_CHECK(ch.cache->device() == Device::CUDA,
               "inference on cuda: a sequence's latent cache is on {} (make it with the engine)",
               device_name(ch.cache->device()));
    DSV3_CHECK(ch.cache->dtype() == cache_dtype,
               "inference on cuda: the sequences of one pass must share a cache dtype");
    DSV3_CHECK(ch.cache->layers() == (depth == 0 ? c_.num_hidden_layers : 1),
               "inference on cuda: a cache of {} layers for a pass of {} (the main model's "
               "cache for the main model, an MTP depth's for that depth)",
               ch.cache->layers(), depth == 0 ? c_.num_hidden_layers : 1);
    // The latent attention reads four columns per load (gpu::latent_attention).
    DSV3_CHECK(reinterpret_cast<uintptr_t>(ch.cache->data()) % 16 == 0,
               "inference on cuda: a latent cache whose data is not 16-byte aligned");
  }
  const int64_t out_rows = which == LogitsFor::All ? n : which == LogitsFor::Last ? nc : 0;
  ensure_capacity(n, nc);
  ensure_logits(out_rows);
  // Per-row inputs, packed as ensure_capacity laid them out, in one upload.
  const int64_t cap = cap_rows_;
  char* host = inputs_host_.get();
  void** base = reinterpret_cast<void**>(host);
  int32_t* ids = reinterpret_cast<int32_t*>(host + cap * 8);
  int32_t* pos = ids + cap;
  int32_t* capacity = pos + cap;
  int32_t* last = capacity + cap;
  int64_t row = 0;
  for (int64_t i = 0; i < nc; ++i) {
    const Chunk& ch = chunks[size_t(i)];
    for (int j = 0; j < ch.n; ++j) {
      base[row + j] = ch.cache->data();
      ids[row + j] = ch.tokens[j];
      pos[row + j] = ch.cache->len() + j;
      capacity[row + j] = ch.cache->capacity();
    }
    row += ch.n;
    last[i] = int32_t(row - 1);
  }
  check(cudaMemcpyAsync(inputs_dev_.get(), host, inputs_bytes_, cudaMemcpyHostToDevice, nullptr),
        "inference on cuda: uploading the pass's inputs");
  if (depth > 0)
    check(cudaMemcpyAsync(b_.h_prev, h_prev, size_t(n * d) * 4, cudaMemcpyHostToDevice, nullptr),
          "inference on cuda: uploading the hidden states");
  const bool cache_bf16 = cache_dtype == DType::BF16;
  const int key = depth * 4 + (which == LogitsFor::None ? 0 : 2) + (cache_bf16 ? 1 : 0);
  const Program* program =
      persistent_ && n == 1 && nc == 1 ? program_for(key, depth, which, cache_bf16) : nullptr;
  if (graphs_enabled_ && n == 1 && nc == 1 && run_directly_.count(key)) {
    // A decode step: replay its graph (captured on the second use).
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      check(cudaStreamBeginCapture(capture_stream_, cudaStreamCaptureModeThreadLocal),
            "inference on cuda: graph capture");
      s_ = capture_stream_;
      try {
        const gpu::ProgrammaticLaunch programmatic(programmatic_launch_);
        run_pass(program, depth, n, nc, which, cache_bf16);
      } catch (...) {
        s_ = nullptr;
        cudaStreamEndCapture(capture_stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();  // the failed capture's error must not surface at a later launch
        throw;
      }
      s_ = nullptr;
      const cudaError_t ended = cudaStreamEndCapture(capture_stream_, &graph);
      const cudaError_t inst = ended == cudaSuccess ? cudaGraphInstantiate(&exec, graph, 0) : ended;
      if (graph) cudaGraphDestroy(graph);
      if (inst != cudaSuccess) cudaGetLastError();  // not to surface again at a later launch
      check(inst, "inference on cuda: capturing a decode step");
      it = graphs_.emplace(key, exec).first;
    }
    check(cudaGraphLaunch(it->second, nullptr), "inference on cuda: graph launch");
  } else {
    run_pass(program, depth, n, nc, which, cache_bf16);
    if (n == 1 && nc == 1) run_directly_.insert(key);
  }
  hidden.resize(size_t(n * d));
  check(cudaMemcpy(hidden.data(), b_.hidden, size_t(n * d) * 4, cudaMemcpyDeviceToHost),
        "inference on cuda: reading the hidden states");
  logits_rows = int(out_rows);
  if (out_rows > 0) {
    logits.resize(size_t(out_rows * v));
    check(cudaMemcpy(logits.data(), b_.logits, size_t(out_rows * v) * 4, cudaMemcpyDeviceToHost),
          "inference on cuda: reading the logits");
  }
}

}  // namespace

std::unique_ptr<DeviceForward> make_cuda_forward(std::shared_ptr<const InferWeights> weights,
                                                 const RopeTables& rope) {
  return std::make_unique<CudaForward>(std::move(weights), rope);
}

}  // namespace dsv3::infer
