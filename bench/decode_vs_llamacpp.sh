#!/usr/bin/env bash
# dsv3 against llama.cpp, side by side, on the 323M-parameter benchmark config (random BF16
# weights): prefill and batch-1 decode tokens/s for a 128-token random prompt and 64 new tokens,
# 2 threads. The checkpoint is made with `dsv3 init-model` on first use and exported with
# `dsv3 export --gguf` (BF16); then `dsv3 bench decode` and llama.cpp's harness
# (bench/llamacpp/llamacpp_run bench: same prompt ids, same definitions) run in alternation for
# ROUNDS rounds, and the ratios dsv3 / llama.cpp of the means are printed.
#   bench/decode_vs_llamacpp.sh [BUILD_DIR]        (THREADS=2 ROUNDS=2 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
MODEL=runs/bench-300m-bf16
GGUF=runs/bench-300m-bf16.gguf
ARGS=(--threads "$THREADS" --prompt-tokens 128 --new-tokens 64 --repeat 3 --seed 1)

if [ ! -x "$BUILD/llamacpp_run" ]; then
  echo "error: $BUILD/llamacpp_run is missing: run scripts/setup.sh (it fetches llama.cpp), then" \
    "reconfigure and rebuild $BUILD" >&2
  exit 1
fi
if [ ! -f "$MODEL/model.safetensors" ]; then
  "$BUILD/dsv3" init-model bench/configs/bench-300m.json "$MODEL" --dtype bf16
fi
if [ ! -f "$GGUF" ] || [ "$MODEL/model.safetensors" -nt "$GGUF" ]; then
  "$BUILD/dsv3" export --gguf "$GGUF" "$MODEL"
fi

# "prefill tokens/s=P decode tokens/s=D" -> "P D"
numbers() { sed -n 's/.*prefill tokens\/s=\([0-9.]*\) decode tokens\/s=\([0-9.]*\).*/\1 \2/p'; }

echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round: dsv3"
  out=$("$BUILD/dsv3" bench decode -m "$MODEL" "${ARGS[@]}")
  echo "$out"
  echo "dsv3 $(echo "$out" | numbers)" >>"$results"
  echo "== round $round: llama.cpp"
  out=$("$BUILD/llamacpp_run" bench -m "$GGUF" "${ARGS[@]}")
  echo "$out"
  echo "llamacpp $(echo "$out" | numbers)" >>"$results"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

awk '
  { n[$1]++; p[$1] += $2; d[$1] += $3 }
  END {
    if (n["dsv3"] == 0 || n["llamacpp"] == 0) { print "error: a run printed no numbers"; exit 1 }
    pd = p["dsv3"] / n["dsv3"]; dd = d["dsv3"] / n["dsv3"]
    pl = p["llamacpp"] / n["llamacpp"]; dl = d["llamacpp"] / n["llamacpp"]
    printf "mean over %d rounds: dsv3 prefill %.1f decode %.1f tokens/s; llama.cpp prefill %.1f decode %.1f tokens/s\n", n["dsv3"], pd, dd, pl, dl
    printf "ratio dsv3/llama.cpp: prefill %.2fx (target >= 1.5x), decode %.2fx (target >= 1.2x)\n", pd / pl, dd / dl
  }' "$results"
