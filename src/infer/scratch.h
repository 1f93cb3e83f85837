#pragma once
// Working buffers of the inference forward pass. They grow to the largest batch seen and are
// reused; a steady decode loop allocates nothing.
#include <cstdint>
#include <optional>
#include <vector>

#include "core/profile.h"
#include "infer/engine.h"
#include "infer/matmul.h"

namespace dsv3::infer {

// The profile phase NAME of a prefill pass or of a decode pass (by its rows), for
// `dsv3 bench decode --profile`.
#define DSV3_PHASE_NAME(rows, name) ((rows) > kSmallRows ? "prefill " name : "decode " name)

template <typename T>
T* grow(std::vector<T>& v, int64_t n) {
  if (v.size() < size_t(n)) v.resize(size_t(n));
  return v.data();
}

struct Engine::Scratch {
  std::vector<int32_t> positions;  // [N]
  std::vector<float> x;            // [N, D] residual stream
  std::vector<float> xn;           // [N, D] normed block input
  std::vector<float> sub;          // [N, D] attention / FFN output
  // Attention.
  std::vector<float> q_a;          // [N, Q]
  std::vector<float> q;            // [N, H*(nope+rope)]
  std::vector<float> kv_a;         // [N, R+rope]   (latent normed in c_norm, k_pe rotated in place)
  std::vector<float> c_norm;       // [N, R]
  std::vector<float> qcat;         // [N, H, R+rope] absorbed query | rope query
  std::vector<float> kv_read;      // [ctx, R+rope] cache rows widened to F32
  std::vector<float> scores;       // [H, n, ctx]
  std::vector<float> olat;         // [N, H, R] probability-weighted latent
  std::vector<float> o;            // [N, H*v]
  // FFN / MoE.
  std::vector<float> gate, up;     // [M, I]
  std::vector<float> sh_gate, sh_up; // [N, I_shared] shared experts (decode path)
  std::vector<float> ex_in, ex_out;// [M, D] rows routed to one expert
  std::vector<float> router;       // [N, E]
  std::vector<int32_t> chosen;     // [N, K]
  std::vector<float> gates;        // [N, K]
  std::vector<int32_t> expert_rows;// rows of each expert, grouped
  std::vector<int64_t> expert_off; // [E+1]
  std::vector<int32_t> slot;       // [N*K] index into gates of each grouped row
  std::vector<int32_t> grouped_of; // [N*K] grouped row of each choice (inverse of slot)
  // MTP.
  std::vector<float> emb;          // [N, D]
  std::vector<float> cat;          // [N, 2D]
};

}  // namespace dsv3::infer
