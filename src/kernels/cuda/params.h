#pragma once
// Kernel parameters of the CUDA backend as plain structs (DESIGN.md section 3, habit 6): raw
// device pointers, sizes and scalars, no framework types, so the .cu files include nothing of
// the engine and a kernel can be launched from a test or a benchmark with a struct literal.
//
// All pointers are device pointers. All matrices are row-major and contiguous unless a stride
// says otherwise. Sizes are int64_t; kernels index with 64-bit arithmetic wherever a product
// of sizes can pass 2^31 (activations of long sequences, logits of large vocabularies).
#include <cstdint>

#include "model/expert_selection.h"

namespace dsv3::cuda {

// Index checks inside kernels: a kernel that meets a token id, target or position out of range
// records the first such error here (atomically: later ones are dropped) and skips that
// element, so it never reads or writes out of bounds; the host reads the record where it waits
// anyway and raises the error there (kernels/cuda/index_errors.h). No wait per call.
enum IndexErrorCode : int32_t { kNoIndexError = 0, kBadPosition = 1, kBadTokenId = 2, kBadTarget = 3 };
struct IndexError {
  int32_t code;  // IndexErrorCode
  int32_t unused;
  int64_t row, value, limit;  // where, what, and the bound it broke ([0, limit), or -1 allowed)
};

// y[r, :] = x[r, :] * rstd[r] * w, rstd[r] = rsqrt(mean(x[r, :]^2) + eps)
struct RmsNormForward {
  const float* x;  // [rows, dim]
  const float* w;  // [dim]
  float* y;        // [rows, dim], or null when only y_bf16 is wanted
  float* rstd;     // [rows]
  int64_t rows, dim;
  float eps;
  uint16_t* y_bf16 = nullptr;  // [rows, dim] when set: y rounded to BF16 (instead, or as well)
};

// d_x (= or +=) rstd * (g w - xhat * mean(g w xhat)), xhat = x rstd; d_w += sum_r g xhat
struct RmsNormBackward {
  const float* x;     // [rows, dim]
  const float* w;     // [dim]
  const float* rstd;  // [rows]
  const float* d_y;   // [rows, dim]
  float* d_x;         // [rows, dim]
  float* d_w;         // [dim], accumulated into or overwritten
  int64_t rows, dim;
  bool accumulate_d_x, accumulate_d_w;
  // When set: d_x (after any accumulation) rounded to BF16, instead of d_x (d_x null and
  // accumulate_d_x false) or as well.
  uint16_t* d_x_bf16 = nullptr;
  float* d_w_partial = nullptr;  // [rmsnorm_dw_chunks(rows, dim), dim] scratch: d_w per row chunk
};

// Rotation of interleaved pairs (x[2i], x[2i+1]) of a slice of each head, in place.
struct Rope {
  float* x;                 // [rows, heads, head_stride]
  const int32_t* positions;  // [rows], each in [0, max_pos)
  const float* cos;         // [max_pos, rope_dim / 2]
  const float* sin;         // [max_pos, rope_dim / 2]
  int64_t rows, heads, head_stride, offset, rope_dim;
  bool inverse;  // the transposed rotation (the backward pass)
  int64_t max_pos;
  IndexError* error;  // a position out of range: recorded, its row left as it is
  // Set: x is left as it is and the rotated rows, every column of each head (rotated or not),
  // go to out [rows, heads, head_stride] rounded to BF16 (either direction; a row whose position
  // is out of range is copied unrotated).
  uint16_t* out_bf16 = nullptr;
  // Set (x null): the rows are BF16 and rotated in place, each pair in float32 from its BF16
  // values and rounded back (MLA's queries, which the query projection writes in BF16); the
  // columns outside the rotated slice are not touched.
  uint16_t* x_bf16 = nullptr;
};

// h = silu(gate) * up; gate_up rows hold gate in [0, width) and up in [width, 2 width).
struct SwiGlu {
  const float* gate_up;  // [rows, 2 width]
  const float* d_h;      // [rows, width] (backward only)
  float* h;              // [rows, width] (forward only)
  float* d_gate_up;      // [rows, 2 width] (backward only)
  int64_t rows, width;
  // When set, the output is written here in BF16 instead (h or d_gate_up unused).
  uint16_t* h_bf16 = nullptr;
  uint16_t* d_gate_up_bf16 = nullptr;
  // When set, the input is read from here in BF16 instead (gate_up or d_h unused).
  const uint16_t* gate_up_bf16 = nullptr;
  const uint16_t* d_h_bf16 = nullptr;
};

// Grouped BF16 GEMM (grouped_gemm.cu): for each group g, C_g [m_g, n_g] = A_g B_g (+ C_g when
// accumulate), BF16 operands, float32 accumulation, all groups in one launch. C is float32, or
// BF16 with c_bf16 (the float32 sums rounded; not with accumulate). The operand layouts are
// shared: A is [m][k] (k contiguous) or, with a_k_major false, stored as [k][m]; B is [n][k]
// (b_k_major) or [k][n]. Leading dimensions are in elements.
struct GemmGroup {
  const uint16_t* a;
  const uint16_t* b;
  void* c;  // float32, or BF16 (c_bf16)
  int64_t m, n, k;
  int64_t first_tile;  // the group's first output tile in the launch's numbering
};
struct GroupedGemmBf16 {
  const GemmGroup* groups;  // [group_count], device memory
  int64_t group_count, tiles;
  int64_t lda, ldb, ldc;
  bool a_k_major, b_k_major, accumulate;
  bool c_bf16 = false;
};

// Softmax cross-entropy per row; row_loss[r] = logsumexp(row) - row[target] (0 for target -1).
// With d_logits: scale * (softmax(row) - onehot(target)), zero rows for target -1; d_logits may
// be the same memory as logits.
struct CrossEntropy {
  const float* logits;     // [rows, vocab]
  const int32_t* targets;  // [rows], -1 or in [0, vocab)
  float* d_logits;         // [rows, vocab] or null
  double* row_loss;        // [rows]
  int64_t rows, vocab;
  float scale;
  IndexError* error;  // a target out of range: recorded, the row treated as left out
  uint16_t* d_logits_bf16 = nullptr;  // when set: d_logits in BF16 instead (not over logits)
};

// out[r, :] = table[ids[r], :] (zero row for id -1); backward: d_table[ids[r], :] += d_out[r, :].
struct Embedding {
  const float* table;    // [vocab, dim] (forward)
  const int32_t* ids;    // [rows]
  float* out;            // [rows, dim] (forward)
  const float* d_out;    // [rows, dim] (backward)
  float* d_table;        // [vocab, dim] (backward), accumulated into
  int64_t vocab, dim, rows;
  IndexError* error;  // an id out of range: recorded, a zero row forward, no gradient
};

// Moves between a token-major buffer and a head-major one; the fields are ops::HeadCopy's.
struct HeadMove {
  const float* src;
  float* dst;
  int64_t batch, seq, heads, width;
  int64_t tok_row_stride, tok_head_stride, tok_offset;
  int64_t head_dim, head_offset;
  bool accumulate;  // heads -> tokens only
  // When set: dst in BF16 instead (heads -> tokens: not accumulating, not a shared vector).
  uint16_t* dst_bf16 = nullptr;
};

// dst[r, dst_offset + c] = src[r, src_offset + c] for c < width (a column window copy).
struct ColumnCopy {
  const float* src;
  float* dst;
  int64_t rows, width, src_cols, src_offset, dst_cols, dst_offset;
  uint16_t* dst_bf16 = nullptr;  // when set: dst in BF16 instead
};

// Causal attention forward, flash style (never materialises the [seq, seq] scores):
// o[bh, i, :] = sum_{j <= i} softmax_j(scale * q_i . k_j) v_j and lse[bh, i] = the row's
// log-sum-exp of scale * q_i . k_j (natural log), saved for the backward pass.
struct AttentionForward {
  const float* q;  // [bh, seq, qk_dim]
  const float* k;  // [bh, seq, qk_dim]
  const float* v;  // [bh, seq, v_dim]
  float* o;        // [bh, seq, v_dim]
  float* lse;      // [bh, seq]
  int64_t bh, seq, qk_dim, v_dim;
  float scale;
};
// Head dimensions the attention kernel takes (registers hold v_dim / 32 values per lane).
constexpr int64_t kAttentionMaxHeadDim = 256;

// Causal attention backward from lse, flash style: P is recomputed tile by tile from q, k and
// lse and never stored. For j <= i: P_ij = exp(scale q_i . k_j - lse_i), dP_ij = dO_i . v_j,
// dS_ij = P_ij (dP_ij - D_i) with D_i = dO_i . O_i (first pass, into `d_rows`); then
// d_v = P^T dO, d_k = scale dS^T Q, d_q = scale dS K, all overwritten. Row 0 has a single key:
// its softmax is the constant 1, so P = 1 and dS = 0 exactly.
struct AttentionBackward {
  const float* q;    // [bh, seq, qk_dim]
  const float* k;    // [bh, seq, qk_dim]
  const float* v;    // [bh, seq, v_dim]
  const float* o;    // [bh, seq, v_dim], the forward's output
  const float* lse;  // [bh, seq], the forward's lse
  const float* d_o;  // [bh, seq, v_dim]
  float* d_rows;     // [bh, seq] scratch: D
  float* d_q;        // [bh, seq, qk_dim]
  float* d_k;        // [bh, seq, qk_dim]
  float* d_v;        // [bh, seq, v_dim]
  int64_t bh, seq, qk_dim, v_dim;
  float scale;
};

// The same two ops on BF16 q, k, v (and d_o) with tensor cores (attention_bf16*.cu). bf16
// values are passed as their bit patterns (uint16_t). Head dims are multiples of 8 (16-byte
// rows for cp.async); attention_bf16_supported says which dims have a kernel. o is BF16 or
// float32 (o_f32); lse, D and d_q are float32.
//
// Where the rows lie: every operand has its own HeadRows, so the kernels read and write the
// head-major [bh, seq, dim] buffers and MLA's token-major projections alike (the latter without
// a layout copy on either side). bh = batch x heads, split as b = bh / heads, h = bh % heads.
struct HeadRows {
  // Row t of head h of sequence b starts b * batch + h * head + t * row elements past the base.
  // Head-major [B, H, T, d] with heads = 1: {d, 0, T d}. MLA's token-major [B T, H w] buffer
  // read at column offset c of each head's w: base + c, {H w, w, T H w}; a vector shared by all
  // heads has head stride 0.
  int64_t row = 0, head = 0, batch = 0;
};
// The key's columns [k_split, qk_dim) may come from a second buffer k2 (MLA: the rope key, one
// per token, shared by the heads); k_split == qk_dim reads the whole key from k. k_split is a
// multiple of 8.
struct AttentionForwardBf16 {
  const uint16_t* q = nullptr;  // q_rows
  const uint16_t* k = nullptr;  // columns [0, k_split): k_rows
  const uint16_t* k2 = nullptr;  // columns [k_split, qk_dim): k2_rows (column 0 = key column k_split)
  const uint16_t* v = nullptr;  // v_rows
  void* o = nullptr;            // o_rows, bf16 or float32
  float* lse = nullptr;         // [bh, seq]
  HeadRows q_rows, k_rows, k2_rows, v_rows, o_rows;
  int64_t bh = 0, heads = 1, seq = 0, qk_dim = 0, v_dim = 0, k_split = 0;
  float scale = 1.0f;
  bool o_f32 = false;
};
struct AttentionBackwardBf16 {
  const uint16_t* q = nullptr;   // as in AttentionForwardBf16
  const uint16_t* k = nullptr;
  const uint16_t* k2 = nullptr;
  const uint16_t* v = nullptr;
  const void* o = nullptr;       // o_rows, bf16 or float32: the forward's output
  const float* lse = nullptr;    // [bh, seq]
  const uint16_t* d_o = nullptr;  // d_o_rows
  float* d_rows = nullptr;       // [bh, seq] scratch: D = rowsum(dO * O)
  float* d_q = nullptr;          // d_q_rows, float32
  void* d_k = nullptr;           // key columns [0, k_split): d_k_rows, float32 or bf16 (d_kv_bf16)
  float* d_k2 = nullptr;         // key columns [k_split, qk_dim): d_k2_rows, float32 (per head)
  void* d_v = nullptr;           // d_v_rows, float32 or bf16 (d_kv_bf16)
  HeadRows q_rows, k_rows, k2_rows, v_rows, o_rows, d_o_rows, d_q_rows, d_k_rows, d_k2_rows,
      d_v_rows;
  int64_t bh = 0, heads = 1, seq = 0, qk_dim = 0, v_dim = 0, k_split = 0;
  float scale = 1.0f;
  bool o_f32 = false;
  bool d_kv_bf16 = false;  // d_k's first k_split columns and d_v rounded to bf16
  // With d_q_bf16 set (and the rope fields with it), d_q is written there (d_q_rows) instead,
  // rounded to bf16, after each head's columns [rope_offset, rope_offset + rope_dim) are
  // rotated back at the row's position (row t of sequence b: positions[b seq + t]): what the
  // inverse rope into BF16 (Rope with inverse and out_bf16) makes of the float32 d_q, bit for bit.
  // rope_offset is even, so each pair lies in one thread's two columns. A position outside the
  // tables is recorded in `error` and its row left unrotated, as the rope kernels do.
  uint16_t* d_q_bf16 = nullptr;
  const int32_t* positions = nullptr;  // [batch * seq]
  const float* rope_cos = nullptr;     // [max_pos, rope_dim / 2]
  const float* rope_sin = nullptr;
  int64_t max_pos = 0, rope_offset = 0, rope_dim = 0;
  IndexError* error = nullptr;
};

// probs[bh, i, j] = exp(s[bh, i, j] - lse[bh, i]) for j <= i, else 0; `probs` holds the raw
// scaled scores s on entry (written by a batched GEMM). Row 0 (a single key) is exactly 1.
struct CausalSoftmaxFromLse {
  float* probs;      // [bh, seq, seq]
  const float* lse;  // [bh, seq]
  int64_t bh, seq;
};

// Causal softmax backward, in place over d_p: for j <= i,
// d_s[bh, i, j] = scale * p (d_p - sum_{j' <= i} p d_p), and 0 for j > i (d_s is the gradient
// of the unscaled q.k products).
struct SoftmaxBackward {
  const float* probs;  // [bh, seq, seq]
  float* d_p;          // [bh, seq, seq] in: d_probs, out: d_s
  int64_t bh, seq;
  float scale;
};

// out[i] = a[i] + b[i]; c[i] = beta * c[i] (beta 0: c = 0 without reading it).
struct Add {  // out may be a or b
  const float* a;
  const float* b;
  float* out;
  int64_t n;
};
struct ScaleMatrix {
  float* c;
  int64_t rows, cols, ld;
  float beta;
};

// ---- MoE permutation moves (ops::moe_*) ----
// N tokens, K experts each; token t's j-th assignment sits at permuted row row_of[t*K + j].
// Indices are not range-checked on the device: they come from the engine's own counting sort.

// out[r, :] = x[src_row[r], :]
struct MoeGather {
  const float* x;          // [x rows, dim]
  const int32_t* src_row;  // [rows]
  float* out;              // [rows, dim]
  int64_t rows, dim;
  uint16_t* out_bf16 = nullptr;  // when set: out in BF16 instead
  // When set (with out_bf16, x null): the rows come from a BF16 copy of x, moved as they are.
  const uint16_t* x_bf16 = nullptr;
};

// Forward: out[t, :] += sum_j weights[t, j] y_perm[row_of[t*K + j], :].
// Backward: d_y_perm[row_of[t*K + j], :] = weights[t, j] d_out[t, :],
// d_weights[t, j] = d_out[t, :] . y_perm[row_of[t*K + j], :].
struct MoeCombine {
  const float* y_perm;    // [N*K, dim]
  const int32_t* row_of;  // [N*K]
  const float* weights;   // [N, K]
  float* out;             // [N, dim], accumulated into (forward only)
  const float* residual = nullptr;  // [N, dim]: when set, out = residual + (out + sum) (forward)
  const float* d_out;     // [N, dim] (backward only)
  float* d_y_perm;        // [N*K, dim] (backward only)
  float* d_weights;       // [N, K] (backward only)
  int64_t n, k, dim;
  uint16_t* d_y_perm_bf16 = nullptr;      // when set: d_y_perm in BF16 instead (backward only)
  const uint16_t* y_perm_bf16 = nullptr;  // when set: y_perm read in BF16 instead
};

// Row ranges of G groups padded to one height, so that uniform batched GEMMs can take them
// (grouped_padded.cpp pads the groups' tails). Group g is rows [bounds[2g], bounds[2g + 1]) of
// a compact [R, cols] buffer; padded, it is rows [g * cap, (g + 1) * cap) of a [G * cap, cols]
// buffer: its own rows first, then zero rows (cap >= every group's rows).
struct GroupPadding {
  const int64_t* bounds;  // [2 * G], device
  int64_t groups, cap, cols;
};
// pad: padded [G * cap, cols] = the groups' compact rows of src, zero rows below each group's
// own (BF16 both). unpad: compact dst [R, cols] = each group's own rows of the padded src
// (float32 both, or BF16 both); the other rows of dst are left alone.
struct PadGroups {
  GroupPadding layout;
  const uint16_t* src;  // [R, cols]
  uint16_t* dst;        // [G * cap, cols]
};
struct UnpadGroups {
  GroupPadding layout;
  const void* src;  // [G * cap, cols]
  void* dst;        // [R, cols]
  int elem_bytes;   // 4 (float32) or 2 (BF16)
};

// d_x[t, :] += sum_j d_x_perm[row_of[t*K + j], :]
struct MoeScatterAdd {
  const float* d_x_perm;  // [N*K, dim]
  const int32_t* row_of;  // [N*K]
  float* d_x;             // [N, dim]
  int64_t n, k, dim;
  const uint16_t* d_x_perm_bf16 = nullptr;  // when set: d_x_perm read in BF16 instead
};

// ---- MoE routing (ops::route_forward, route_backward, moe_permute) ----

// N tokens in batch sequences of seq, E = select.experts, K = select.k.
struct RouteForward {
  const float* logits;  // [N, E]
  const float* bias;    // [E] or null
  float* scores;        // [N, E]
  int32_t* indices;     // [N, K], ascending
  float* weights;       // [N, K]
  float* score_sum;     // [N]
  float* seq_counts;    // [batch, E], zeroed before the launch, counted into with atomics
  double* seq_partial;  // [batch, chunks, E] scratch: sums over `chunk` tokens each
  double* seq_prob;     // [batch, E]
  ExpertSelection select;
  bool sigmoid, norm_topk;
  float scaling;
  int64_t n, seq, batch, chunk;
};

struct RouteBackward {
  const float* scores;      // [N, E]
  const int32_t* indices;   // [N, K]
  const float* score_sum;   // [N]
  const float* seq_counts;  // [batch, E]
  const float* d_weights;   // [N, K]
  float* d_logits;          // [N, E]
  ExpertSelection select;
  bool sigmoid, norm_topk;
  float scaling, alpha;
  int64_t n, seq, batch;
};

struct MoePermute {
  const int32_t* indices;   // [N * K]
  const int64_t* offsets;   // [E + 1]
  int32_t* permuted_token;  // [N * K]
  int32_t* permuted_row;    // [N * K]
  int64_t assignments, k, experts;
};

// ---- Conversions ----

// float32 -> BF16 over many buffers in one launch: block c converts chunk c.
struct ConvertChunk {
  const float* src;
  uint16_t* dst;
  int64_t n;
};
constexpr int64_t kConvertChunk = 1 << 16;  // elements per chunk (the last of a buffer: fewer)

// ---- Optimizer ----

// partial[t][b] = sum of x_t[i]^2 (float64) over the elements that block b of a fixed grid of
// kSumSquaresBlocks x kSumSquaresThreads visits in tensor t, every tensor in one launch; the host
// adds the partials in order. The grid does not depend on the GPU, so neither does the result.
constexpr int kSumSquaresBlocks = 256;
constexpr int kSumSquaresThreads = 256;
struct SumSquaresTensor {
  const float* x;
  int64_t n;
};
struct SumSquaresAll {
  const SumSquaresTensor* tensors;  // [count], device memory
  double* partial;                  // [count][kSumSquaresBlocks]
  int64_t count;
};

// x[i] *= factor
struct ScaleInplace {
  float* x;
  int64_t n;
  float factor;
};

// AdamW over many tensors in one launch: chunk c updates elements [begin, end) of tensor
// tensor[c] with that tensor's decay and the shared scalars (the element arithmetic is
// adamw_update's).
struct AdamWTensor {
  float* param;
  const float* grad;
  float* m;
  float* v;
  float decay;
};
struct AdamWChunk {
  int32_t tensor;
  int64_t begin, end;
};
constexpr int64_t kAdamWChunk = 1 << 16;  // elements per block
struct AdamWUpdateAll {
  const AdamWTensor* tensors;  // device memory
  const AdamWChunk* chunks;    // [count], device memory
  int64_t count;
  float b1, b2, clip_scale, step_size, inv_sqrt_bc2, eps;
};

}  // namespace dsv3::cuda
