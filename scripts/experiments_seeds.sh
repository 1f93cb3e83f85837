#!/usr/bin/env bash
# More seeds for experiment (a) of docs/experiments.md: the loss-free bias against the auxiliary
# loss, each with several seeds (initialisation and data order), two runs at a time on one thread
# each. Reuses the tokenizer and data of scripts/experiments.sh (run that first).
# Usage: scripts/experiments_seeds.sh [OUT_DIR] [STEPS] [SEEDS...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/experiments}
STEPS=${2:-300}
shift 2 || true
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(1 2 3)
DSV3=./build/dsv3
[ -e "$OUT/data/manifest.json" ] || { echo "error: run scripts/experiments.sh $OUT first" >&2; exit 1; }
common=(--data "$OUT/data" --tokenizer-dir "$OUT/tokenizer" --steps "$STEPS" --batch 8 --accum 1
        --accum-start 1 --seq 256 --lr 1e-3 --warmup 50 --eval-every 25 --eval-batches 8
        --save-every 0 --keep 1 --threads 1)
run() {
  local name=$1 seed=$2; shift 2
  if [ -e "$OUT/$name/metrics.jsonl" ] && [ -e "$OUT/$name/checkpoints/latest" ]; then return; fi
  rm -rf "${OUT:?}/$name"
  $DSV3 train "${common[@]}" --seed "$seed" --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1
  echo "$name: $(tail -n 1 "$OUT/$name.log")"
}
for seed in "${SEEDS[@]}"; do
  run "loss-free-seed$seed" "$seed" --balance loss-free --alpha 1e-4 --gamma 1e-2 &
  run "aux-loss-seed$seed" "$seed" --balance aux-loss --alpha 1e-2 &
  wait
done
