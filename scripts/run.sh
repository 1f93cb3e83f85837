#!/usr/bin/env bash
# The main job: set up and build, train the built-in small DeepSeek-V3 on the default corpus
# (about ten minutes on 2 CPU cores), then sample from the trained checkpoint.
# Running it again continues (or just reports) the same run. RUN_DIR=... picks another folder.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR=${RUN_DIR:-runs/default}
resume=()
[ -e "$RUN_DIR/checkpoints/latest" ] && resume=(--resume)
./build/dsv3 train --out "$RUN_DIR" "${resume[@]}"
checkpoint="$RUN_DIR/checkpoints/$(head -n 1 "$RUN_DIR/checkpoints/latest")"
./build/dsv3 plot "$RUN_DIR"
if ./build/dsv3 generate --help >/dev/null 2>&1; then
  echo
  echo "== sample from $checkpoint"
  ./build/dsv3 generate -m "$checkpoint" -p "The state of the Union is" -n 80 --temperature 0.8 --seed 1
  echo
fi
