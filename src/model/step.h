#pragma once
// What every module of one training/evaluation step shares: the window shape, the positions of
// its rows, the rope tables and the config.
#include <cstdint>

#include "core/arena.h"
#include "model/config.h"
#include "model/rope.h"

namespace dsv3 {

struct StepContext {
  const ModelConfig* config = nullptr;
  const RopeTables* rope = nullptr;
  int64_t batch = 0, seq = 0;          // the window: batch sequences of seq tokens
  const int32_t* positions = nullptr;  // [batch * seq] position of each row in its sequence
  int64_t rows() const { return batch * seq; }
};

}  // namespace dsv3
