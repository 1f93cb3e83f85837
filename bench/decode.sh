#!/usr/bin/env bash
# Inference speed of dsv3 on the 323M-parameter benchmark config (random BF16 weights):
# prefill and batch-1 decode tokens/s for a 128-token prompt and 64 new tokens, 2 threads.
#   bench/decode.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
MODEL=runs/bench-300m-bf16
if [ ! -f "$MODEL/model.safetensors" ]; then
  "$BUILD/dsv3" init-model bench/configs/bench-300m.json "$MODEL" --dtype bf16
fi
for threads in 2 1; do
  "$BUILD/dsv3" bench decode -m "$MODEL" --threads "$threads" --prompt-tokens 128 --new-tokens 64 --repeat 3
done
