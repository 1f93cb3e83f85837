#pragma once
// Parity of the inference path against a reference fixture (format: tests/data/reference/
// README.md): every sequence of the fixture's batch is fed token by token through the latent
// cache (absorbed MLA), and every position's logits, and the MTP logits where the fixture has
// them, are checked against the expected tensors. Also checks a one-pass prefill of each
// sequence and a batched decode.
//
// Tolerances:
//   F32 weights + F32 cache: 1e-5 relative (max|diff| / max|ref|), the fixtures' float32 bound.
//   BF16 weights + BF16 cache: kBf16DecodeTol relative. The cached latents, the weights (for a
//     float32 fixture; FP8 blocks dequantized to BF16) and, in prefill-sized products, the
//     activations are rounded to 8 significant bits (relative error <= 2^-8 each). Measured on
//     the four fixtures: 1.3e-3 .. 4.2e-3; the bound is 2e-2 (about 5x the worst case). Wrong
//     math gives errors of order 1.
#include <string>

#include "model/parity.h"

namespace dsv3::infer {

constexpr double kDecodeF32Tol = 1e-5;
constexpr double kBf16DecodeTol = 2e-2;

// Appends the decode checks of the fixture in `dir` to `report`, run by the engine on `device`
// (the quantities of a CUDA run are prefixed "cuda "; the tolerances are the same).
void add_decode_parity(const std::string& dir, ParityReport& report,
                       Device device = Device::CPU);

}  // namespace dsv3::infer
