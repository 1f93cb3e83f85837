#pragma once
// Parity against reference fixtures: a folder with config.json, model.safetensors,
// batch.safetensors and expected.safetensors (format: tests/data/reference/README.md). Every
// expected tensor present is checked; new fixtures need no code change.
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dsv3 {

struct ParityCheck {
  std::string quantity;
  double error = 0;  // the metric named by `metric`
  double tolerance = 0;
  std::string metric;  // "max-rel" (max|diff| / max|ref|), "l2-rel", "exact", "abs"
  bool pass = false;
};

struct ParityReport {
  std::string fixture;
  std::vector<ParityCheck> checks;
  bool all_pass() const;
  // The table: quantity, error, tolerance, pass/fail; one line a check, then a summary line.
  std::string table(bool failures_only = false) const;
};

// dump_path (optional): also write what dsv3 computed, under the expected file's names, to a
// safetensors file for inspection.
// with_optimizer: also check grad_norm, one AdamW step (adamw.*) and the bias update
// (bias_after.*).
// device: where the training step runs (weights, activations, gradients); precision: F32, or
// BF16 mixed precision (GPU) judged at wider tolerances (parity.cpp, docs/cuda.md).
// The forward metric of every parity check: max|got - ref| / max|ref| over n values (max|diff|
// when ref is all zero); a NaN anywhere gives infinity, so it never passes.
double max_rel(const float* got, const float* ref, size_t n);

ParityReport run_parity(const std::string& fixture_dir, const std::string& dump_path = "",
                        bool with_optimizer = false, Device device = Device::CPU,
                        DType precision = DType::F32);

}  // namespace dsv3
