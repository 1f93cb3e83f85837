#!/usr/bin/env bash
# dsv3's training step against PyTorch eager doing the same step (bench/torch_model.py: same
# model, same losses, float32), side by side: the two alternate, ROUNDS times each, and the best
# round of each is compared (other load on the machine only ever slows a round down).
# Usage: bench/train_step_vs_pytorch.sh [CONFIG] [BATCH] [SEQ] [THREADS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-bench/configs/bench-small.json}
BATCH=${2:-4}
SEQ=${3:-256}
THREADS=${4:-2}
ROUNDS=${5:-2}
DSV3=${DSV3:-./build/dsv3}
bash bench/setup.sh
echo "config=$CONFIG batch=$BATCH seq=$SEQ threads=$THREADS load=$(cut -d' ' -f1-3 /proc/loadavg)"
best_dsv3=0
best_torch=0
for round in $(seq 1 "$ROUNDS"); do
  d=$("$DSV3" bench train-step --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" \
        --threads "$THREADS" --steps 10 --warmup 2 | sed -n 's/.*tokens\/s=\([0-9.]*\).*/\1/p')
  t=$(/usr/bin/python3 bench/torch_train_step.py --config "$CONFIG" --batch "$BATCH" \
        --seq "$SEQ" --threads "$THREADS" --steps 10 --warmup 2 |
        sed -n 's/.*tokens\/s=\([0-9.]*\).*/\1/p')
  echo "round $round: dsv3 $d tokens/s, PyTorch $t tokens/s"
  best_dsv3=$(python3 -c "print(max($best_dsv3, $d))")
  best_torch=$(python3 -c "print(max($best_torch, $t))")
done
ratio=$(python3 -c "print(f'{$best_dsv3 / $best_torch:.2f}')")
echo "best: dsv3 $best_dsv3 tokens/s, PyTorch $best_torch tokens/s, ratio ${ratio}x (load after: $(cut -d' ' -f1-3 /proc/loadavg))"
