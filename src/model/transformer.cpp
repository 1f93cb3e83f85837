#include "model/transformer.h"

#include <cstring>
#include <optional>

#include "core/profile.h"
#include "kernels/ops.h"

namespace dsv3 {

namespace {
// One MTP depth's activations: its input tokens and targets, the two norms, the projection,
// the block and the head.
struct MtpBuffers {
  Tensor ids;                     // [N] int32: token i+k of the window, -1 past its end
  Tensor targets;                 // [N] int32: label of position i+k, -1 where i >= T-k
  Tensor ids_host, targets_host;  // the same, built on the host
  Tensor emb;                     // [N, D] Emb(t_{i+k}) (zero past the end)
  Tensor e_norm, e_rstd;          // [N, D], [N]
  Tensor h_norm, h_rstd;          // [N, D], [N]
  Tensor cat;                     // [N, 2D] [e_norm | h_norm] (matmul operand dtype: eh_proj's)
  Tensor x_in, x_out;             // [N, D] block input (eh_proj output) and output
  Tensor h, h_rstd_out;           // [N, D], [N] shared_head.norm(x_out): h^k
  Tensor h_mm;                    // [N, D] h's copy for the lm head (alloc_matmul_copy)
  Tensor logits;                  // [N, V]
  Tensor d_logits;                // [N, V] the loss gradient, with the loss (matmul operand dtype)
  Tensor row_loss, row_loss_host;  // [N] float64: each position's loss (read at the step's end)
  BlockActivations block;

  MtpBuffers(Arena& a, const ModelConfig& c, int64_t batch, int64_t seq)
      : block(a, c, c.is_moe_layer(c.num_hidden_layers), batch, seq) {
    const int64_t n = batch * seq, d = c.hidden_size;
    auto [ih, id] = a.alloc_mirrored({n}, DType::I32);
    auto [th, td] = a.alloc_mirrored({n}, DType::I32);
    ids_host = ih, ids = id, targets_host = th, targets = td;
    emb = a.alloc({n, d});
    e_norm = a.alloc({n, d});
    e_rstd = a.alloc({n});
    h_norm = a.alloc({n, d});
    h_rstd = a.alloc({n});
    cat = a.alloc_matmul_operand({n, 2 * d});  // read by eh_proj's products only
    x_in = a.alloc({n, d});
    x_out = a.alloc({n, d});
    h = a.alloc({n, d});
    h_rstd_out = a.alloc({n});
    h_mm = a.alloc_matmul_copy({n, d});
    logits = a.alloc({n, c.vocab_size});
    d_logits = a.alloc_matmul_operand({n, c.vocab_size});  // read by the lm head's backward only
    auto [lh, ld] = a.alloc_mirrored({n}, DType::F64);
    row_loss_host = lh, row_loss = ld;
  }
};

// The losses a step reads back with its one wait: the main loss and each MTP depth's
// (copy_to_host takes at most this many tensors at once).
constexpr size_t kMaxReadback = 16;

// The sum of a window's row losses, in row order (as ops::cross_entropy sums them).
double sum_rows(const Tensor& row_loss_host) {
  double total = 0.0;
  for (int64_t i = 0; i < row_loss_host.numel(); ++i) total += row_loss_host.f64()[i];
  return total;
}
}  // namespace

struct Transformer::Buffers {
  Tensor positions;                                 // [N] int32
  Tensor tokens, labels;                            // [N] int32
  Tensor positions_host, tokens_host, labels_host;  // host copies of the three
  std::vector<Tensor> residual;  // L + 1 of [N, D]: the input of each block, then the output
  std::vector<std::unique_ptr<BlockActivations>> blocks;
  Tensor h_final, rstd_final;  // [N, D], [N]
  Tensor h_final_mm;           // [N, D] h_final's copy for the lm head (alloc_matmul_copy)
  Tensor logits;               // [N, V]
  std::vector<std::unique_ptr<MtpBuffers>> mtp;
  Tensor d_logits;  // [N, V] the main loss gradient, with the loss (matmul operand dtype)
  Tensor row_loss, row_loss_host;  // [N] float64: the main loss of each position
  // Backward scratch.
  BlockScratch scratch;
  Tensor d_residual;        // [N, D]
  std::vector<Tensor> d_h;  // D + 1 of [N, D]: d h^k (h^0: main output after its norm)
  Tensor d_cat;             // [N, 2D]
  Tensor d_e;               // [N, D]

  Buffers(Arena& a, const ModelConfig& c, int64_t batch, int64_t seq)
      : scratch(a, c, batch, seq) {
    const int64_t n = batch * seq, d = c.hidden_size;
    auto [ph, pd] = a.alloc_mirrored({n}, DType::I32);
    auto [th, td] = a.alloc_mirrored({n}, DType::I32);
    auto [lh, ld] = a.alloc_mirrored({n}, DType::I32);
    positions_host = ph, positions = pd, tokens_host = th, tokens = td, labels_host = lh,
    labels = ld;
    for (int l = 0; l <= c.num_hidden_layers; ++l) residual.push_back(a.alloc({n, d}));
    for (int l = 0; l < c.num_hidden_layers; ++l)
      blocks.push_back(std::make_unique<BlockActivations>(a, c, c.is_moe_layer(l), batch, seq));
    h_final = a.alloc({n, d});
    rstd_final = a.alloc({n});
    h_final_mm = a.alloc_matmul_copy({n, d});
    logits = a.alloc({n, c.vocab_size});
    for (int k = 0; k < c.num_nextn_predict_layers; ++k)
      mtp.push_back(std::make_unique<MtpBuffers>(a, c, batch, seq));
    d_logits = a.alloc_matmul_operand({n, c.vocab_size});  // read by the lm head's backward only
    auto [rh, rd] = a.alloc_mirrored({n}, DType::F64);
    row_loss_host = rh, row_loss = rd;
    d_residual = a.alloc({n, d});
    for (int k = 0; k <= c.num_nextn_predict_layers; ++k) d_h.push_back(a.alloc({n, d}));
    d_cat = a.alloc({n, 2 * d});
    d_e = a.alloc({n, d});
  }
};

Transformer::Transformer(ModelWeights& weights, int64_t batch, int64_t seq)
    : w_(weights), c_(weights.config()), batch_(batch), seq_(seq) {
  DSV3_CHECK(batch > 0 && seq > 0, "a training window needs batch > 0 and seq > 0, got {} x {}",
             batch, seq);
  DSV3_CHECK(c_.num_nextn_predict_layers < int(kMaxReadback),
             "num_nextn_predict_layers = {}: training supports at most {} MTP depths",
             c_.num_nextn_predict_layers, kMaxReadback - 1);
  const Device device = weights.device();
  const DType real = weights.real_dtype();  // F32, or F64 for the float64 step
  rope_ = build_rope_tables(c_, int(std::max<int64_t>(seq, c_.max_position_embeddings)), real);
  rope_.cos = rope_.cos.to(device);
  rope_.sin = rope_.sin.to(device);
  // Two plans in one pass on a device: the device buffers, and the host buffers that routing
  // and the index arrays need (on the CPU both are one arena).
  Arena measure = Arena::measuring(device), measure_host = Arena::measuring();
  if (device != Device::CPU) measure.attach_host(measure_host);
  for (Arena* a : {&measure, &measure_host}) a->set_real_dtype(real);
  const bool bf16 = weights.compute_dtype() == DType::BF16;
  if (bf16) measure.set_matmul_operand_dtype(DType::BF16);
  { Buffers plan(measure, c_, batch, seq); }
  Arena arena(measure.used(), device), host_arena(measure_host.used());
  if (device != Device::CPU) arena.attach_host(host_arena);
  for (Arena* a : {&arena, &host_arena}) a->set_real_dtype(real);
  if (bf16) arena.set_matmul_operand_dtype(DType::BF16);
  arena_bytes_ = measure.used() + measure_host.used();
  b_ = std::make_unique<Buffers>(arena, c_, batch, seq);
  for (int64_t i = 0; i < batch * seq; ++i) b_->positions_host.i32()[i] = int32_t(i % seq);
  b_->positions.copy_from(b_->positions_host);
  mtp_count_.resize(size_t(c_.num_nextn_predict_layers));
}

Transformer::~Transformer() = default;

const Tensor& Transformer::logits() const { return b_->logits; }
const Tensor& Transformer::mtp_logits(int depth) const {
  return b_->mtp.at(size_t(depth - 1))->logits;
}
const Tensor& Transformer::hidden() const { return b_->h_final; }

const RouterActivations* Transformer::routing(int layer) const {
  if (layer < c_.num_hidden_layers) {
    const auto& blk = b_->blocks.at(size_t(layer));
    return blk->moe ? &blk->moe->router : nullptr;
  }
  const auto& m = b_->mtp.at(size_t(layer - c_.num_hidden_layers));
  return m->block.moe ? &m->block.moe->router : nullptr;
}

StepResult Transformer::step(const int32_t* tokens, const int32_t* labels, const LossWeights& loss,
                             bool backward) {
  const int64_t n = batch_ * seq_, d = c_.hidden_size;
  const int depths = c_.num_nextn_predict_layers;
  const float eps = float(c_.rms_norm_eps);
  Buffers& b = *b_;
  StepContext ctx{
      &c_, &rope_, batch_, seq_, b.positions.i32()};
  std::memcpy(b.tokens_host.i32(), tokens, size_t(n) * 4);
  std::memcpy(b.labels_host.i32(), labels, size_t(n) * 4);
  b.tokens.copy_from(b.tokens_host);
  b.labels.copy_from(b.labels_host);
  // Each MTP depth's inputs and targets (the window shifted by k), built on the host and sent
  // with the tokens, before any kernel is queued.
  std::vector<int64_t>& mtp_count = mtp_count_;
  mtp_count.assign(size_t(depths), 0);  // sized at construction: no allocation
  for (int k = 1; k <= depths; ++k) {
    MtpBuffers& m = *b.mtp[size_t(k - 1)];
    for (int64_t bi = 0; bi < batch_; ++bi)
      for (int64_t i = 0; i < seq_; ++i) {
        bool inside = i + k < seq_;
        m.ids_host.i32()[bi * seq_ + i] = inside ? b.tokens_host.i32()[bi * seq_ + i + k] : -1;
        m.targets_host.i32()[bi * seq_ + i] = inside ? b.labels_host.i32()[bi * seq_ + i + k] : -1;
      }
    for (int64_t i = 0; i < n; ++i) mtp_count[size_t(k - 1)] += m.targets_host.i32()[i] >= 0;
    m.ids.copy_from(m.ids_host);
    m.targets.copy_from(m.targets_host);
  }
  if (c_.has_bias()) {
    for (int l = 0; l < c_.num_hidden_layers; ++l)
      if (auto& blk = b.blocks[size_t(l)]; blk->moe)
        upload_router_bias(w_.layers[size_t(l)].experts, blk->moe->router);
    for (int k = 0; k < depths; ++k)
      if (auto& m = b.mtp[size_t(k)]; m->block.moe)
        upload_router_bias(w_.mtp[size_t(k)].block.experts, m->block.moe->router);
  }
  StepResult result;

  // ---- Forward: main model ----
  ops::embedding_forward(w_.embed.value, b.tokens.i32(), n, b.residual[0]);
  for (int l = 0; l < c_.num_hidden_layers; ++l) {
    block_forward(ctx, w_.layers[size_t(l)], b.residual[size_t(l)], *b.blocks[size_t(l)],
                  b.residual[size_t(l) + 1]);
    if (const RouterActivations* r = routing(l)) result.balance_sum += r->balance;
  }
  // The final norm: float32 for MTP and hidden(), and the lm head's BF16 copy in the same pass.
  ops::rmsnorm_forward_with_bf16_copy(b.residual.back(), w_.norm.value, eps, b.h_final,
                                      b.rstd_final, b.h_final_mm);
  std::optional<profile::Phase> head_phase;
  head_phase.emplace("lm head + loss fwd", b.logits.device());
  ops::linear_forward(matmul_view(b.h_final, b.h_final_mm), w_.lm_head.for_matmul(), b.logits);
  int64_t main_count = 0;
  for (int64_t i = 0; i < n; ++i) main_count += b.labels_host.i32()[i] >= 0;
  DSV3_CHECK(main_count > 0, "the window has no position with a label");
  // The loss gradient is computed in the same pass as the loss (one sweep over the logits).
  // The losses stay on the device until the step's end (finish_losses): no wait here.
  ops::cross_entropy_rows(b.logits, b.labels.i32(), 1.0 / double(main_count),
                          backward ? &b.d_logits : nullptr, b.row_loss);

  head_phase.reset();

  // ---- Forward: MTP depths (their ids and targets went up with the tokens) ----
  for (int k = 1; k <= depths; ++k) {
    MtpBuffers& m = *b.mtp[size_t(k - 1)];
    const MtpWeights& mw = w_.mtp[size_t(k - 1)];
    const Tensor& h_prev = k == 1 ? b.h_final : b.mtp[size_t(k - 2)]->h;
    ops::embedding_forward(w_.embed.value, m.ids.i32(), n, m.emb);
    ops::rmsnorm_forward(m.emb, mw.enorm.value, eps, m.e_norm, m.e_rstd);
    ops::rmsnorm_forward(h_prev, mw.hnorm.value, eps, m.h_norm, m.h_rstd);
    ops::put_columns(m.e_norm, d, m.cat, 2 * d, 0, n);
    ops::put_columns(m.h_norm, d, m.cat, 2 * d, d, n);
    ops::linear_forward(m.cat, mw.eh_proj.for_matmul(), m.x_in);
    block_forward(ctx, mw.block, m.x_in, m.block, m.x_out);
    if (m.block.moe) result.balance_sum += m.block.moe->router.balance;
    ops::rmsnorm_forward_with_bf16_copy(m.x_out, mw.shared_head_norm.value, eps, m.h,
                                        m.h_rstd_out, m.h_mm);
    ops::linear_forward(matmul_view(m.h, m.h_mm), w_.lm_head.for_matmul(), m.logits);
    if (mtp_count[size_t(k - 1)] > 0) {
      const double count = double(mtp_count[size_t(k - 1)]);
      const double scale = loss.mtp_lambda / depths / count;
      ops::cross_entropy_rows(m.logits, m.targets.i32(), scale, backward ? &m.d_logits : nullptr,
                              m.row_loss);
    }
  }
  // The losses: every row loss comes back with one wait, once all of the step's work is queued.
  const auto finish_losses = [&] {
    HostCopyOf rows[kMaxReadback];  // the main loss and each depth's with targets
    size_t n_rows = 0;
    rows[n_rows++] = {&b.row_loss_host, &b.row_loss};
    for (int k = 1; k <= depths; ++k)
      if (mtp_count[size_t(k - 1)] > 0)
        rows[n_rows++] = {&b.mtp[size_t(k - 1)]->row_loss_host, &b.mtp[size_t(k - 1)]->row_loss};
    copy_to_host(std::span<const HostCopyOf>(rows, n_rows));
    result.main = sum_rows(b.row_loss_host) / double(main_count);
    for (int k = 1; k <= depths; ++k) {
      const int64_t count = mtp_count[size_t(k - 1)];
      result.mtp.push_back(count > 0 ? sum_rows(b.mtp[size_t(k - 1)]->row_loss_host) / double(count)
                                     : 0.0);
    }
    result.total = result.main + loss.balance_alpha * result.balance_sum;
    for (double ce : result.mtp) result.total += loss.mtp_lambda / depths * ce;
  };
  if (!backward) {
    finish_losses();
    return result;
  }

  // ---- Backward: MTP depths, deepest first (depth k feeds h^k back into depth k-1) ----
  for (Tensor& t : b.d_h) t.zero_();
  for (int k = depths; k >= 1; --k) {
    MtpBuffers& m = *b.mtp[size_t(k - 1)];
    MtpWeights& mw = w_.mtp[size_t(k - 1)];
    const Tensor& h_prev = k == 1 ? b.h_final : b.mtp[size_t(k - 2)]->h;
    if (mtp_count[size_t(k - 1)] > 0)
      ops::linear_backward(matmul_view(m.h, m.h_mm), w_.lm_head.for_matmul(), m.d_logits,
                           &b.d_h[size_t(k)], &w_.lm_head.grad, true, w_.lm_head.accumulate_grad());
    residual_norm_backward(m.x_out, mw.shared_head_norm, m.h_rstd_out, b.d_h[size_t(k)],
                           b.d_residual, false, b.scratch);
    block_backward(ctx, mw.block, m.x_in, m.block, loss.balance_alpha, b.scratch, b.d_residual);
    ops::linear_backward(m.cat, mw.eh_proj.for_matmul(),
                         matmul_view(b.d_residual, b.scratch.d_residual_mm), &b.d_cat,
                         &mw.eh_proj.grad, false, mw.eh_proj.accumulate_grad());
    ops::copy_columns(b.d_cat, 2 * d, 0, d, b.d_e, n);  // d e_norm
    ops::rmsnorm_backward(m.emb, mw.enorm.value, m.e_rstd, b.d_e, b.d_residual, mw.enorm.grad,
                          false, mw.enorm.accumulate_grad());
    ops::embedding_backward(m.ids.i32(), n, b.d_residual, w_.embed.grad_to_add_into());
    ops::copy_columns(b.d_cat, 2 * d, d, d, b.d_e, n);  // d h_norm
    ops::rmsnorm_backward(h_prev, mw.hnorm.value, m.h_rstd, b.d_e, b.d_h[size_t(k - 1)],
                          mw.hnorm.grad, true, mw.hnorm.accumulate_grad());
  }

  // ---- Backward: main head, final norm, blocks, embedding ----
  head_phase.emplace("lm head bwd", b.logits.device());
  ops::linear_backward(matmul_view(b.h_final, b.h_final_mm), w_.lm_head.for_matmul(), b.d_logits,
                       &b.d_h[0], &w_.lm_head.grad, true, w_.lm_head.accumulate_grad());
  residual_norm_backward(b.residual.back(), w_.norm, b.rstd_final, b.d_h[0], b.d_residual, false,
                         b.scratch);
  head_phase.reset();
  for (int l = c_.num_hidden_layers - 1; l >= 0; --l)
    block_backward(ctx, w_.layers[size_t(l)], b.residual[size_t(l)], *b.blocks[size_t(l)],
                   loss.balance_alpha, b.scratch, b.d_residual);
  ops::embedding_backward(b.tokens.i32(), n, b.d_residual, w_.embed.grad_to_add_into());
  w_.zero_unwritten_grads();  // after discard_grads: what this step did not reach
  finish_losses();
  return result;
}

}  // namespace dsv3
