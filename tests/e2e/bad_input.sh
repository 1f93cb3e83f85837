#!/usr/bin/env bash
# Bad input on the command line: one clear "error:" line naming the file (and the tensor or key),
# a non-zero exit, no crash, no partial output.
# Usage: bad_input.sh PATH/TO/dsv3
set -uo pipefail
DSV3=$1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failures=0
passes=0

# expect_error NAME NEEDLE COMMAND...: the command must exit 1 with exactly one stderr line that
# starts with "error:" and contains NEEDLE.
expect_error() {
  local name=$1 needle=$2
  shift 2
  "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  local lines
  lines=$(wc -l <"$WORK/err")
  if [ $rc -ne 1 ] || [ "$lines" -ne 1 ] || ! grep -q "^error: .*$needle" "$WORK/err"; then
    echo "FAIL $name: rc=$rc, stderr:"; cat "$WORK/err"
    failures=$((failures + 1))
  else
    passes=$((passes + 1))
  fi
}

# expect_usage_error NAME NEEDLE COMMAND...: a refused option (the command-line parser's own
# message, then its hint to run --help): a non-zero exit, NEEDLE on the first stderr line,
# nothing on stdout (nothing ran).
expect_usage_error() {
  local name=$1 needle=$2
  shift 2
  "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  if [ $rc -eq 0 ] || [ -s "$WORK/out" ] || ! head -1 "$WORK/err" | grep -q -- "$needle"; then
    echo "FAIL $name: rc=$rc, stdout $(wc -c <"$WORK/out") bytes, stderr:"; cat "$WORK/err"
    failures=$((failures + 1))
  else
    passes=$((passes + 1))
  fi
}

FIX=tests/data/reference/tiny-v2lite
expect_error missing-fixture "nowhere" "$DSV3" parity "$WORK/nowhere"

mkdir -p "$WORK/truncated"
cp "$FIX"/*.json "$FIX"/batch.safetensors "$FIX"/expected.safetensors "$WORK/truncated/"
head -c 200000 "$FIX/model.safetensors" >"$WORK/truncated/model.safetensors"
expect_error truncated-safetensors "model.safetensors" "$DSV3" parity "$WORK/truncated"

mkdir -p "$WORK/badconfig"
cp "$FIX"/*.safetensors "$WORK/badconfig/"
sed 's/"hidden_size": 48/"hidden_size": "wide"/' "$FIX/config.json" >"$WORK/badconfig/config.json"
expect_error bad-config-value '"hidden_size"' "$DSV3" parity "$WORK/badconfig"

mkdir -p "$WORK/shape"
cp "$FIX"/*.safetensors "$WORK/shape/"
sed 's/"intermediate_size": 96/"intermediate_size": 64/' "$FIX/config.json" >"$WORK/shape/config.json"
expect_error wrong-shape "mlp" "$DSV3" parity "$WORK/shape"
expect_error f64-on-gpu "runs on the CPU" "$DSV3" parity --precision f64 --device cuda \
  "$FIX"
# Inference on a GPU: a machine without one (CI) gets one line that says so.
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  expect_error generate-no-gpu "CUDA device requested" "$DSV3" generate -m "$FIX" \
    --prompt-ids 1,2,3 -n 2 --device cuda
fi
expect_error bench-decode-profile-cuda "not available with --device cuda" "$DSV3" bench decode \
  -m "$FIX" --device cuda --profile --prompt-tokens 16

printf '{"hidden_size": 64,' >"$WORK/broken.json"
expect_error malformed-config "broken.json" "$DSV3" bench train-step --config "$WORK/broken.json"

# Counts out of range name the option, the least value and what was given.
expect_usage_error bench-batch-zero "^--batch: must be at least 1, not 0$" "$DSV3" bench \
  train-step --config "$FIX/config.json" --batch 0
expect_usage_error bench-warmup-negative "^--warmup: must be at least 0, not -1$" "$DSV3" bench \
  train-step --config "$FIX/config.json" --warmup -1
expect_usage_error bench-steps-text "^--steps: expected a whole number, not '2x'$" "$DSV3" bench \
  train-step --config "$FIX/config.json" --steps 2x
expect_usage_error bench-decode-one-token "^--new-tokens: must be at least 2, not 1$" "$DSV3" \
  bench decode -m "$FIX" --new-tokens 1
expect_usage_error train-seq-one "^--seq: must be at least 2, not 1$" "$DSV3" train \
  --data "$WORK/nowhere" --out "$WORK/run" --seq 1
expect_usage_error generate-threads-negative "^--threads: must be at least 0, not -2$" "$DSV3" \
  generate -m "$FIX" --threads -2 -n 2
expect_error bench-attention-seq-list "--seq: '-1' in '64,-1' is not a whole number of at least 1" \
  "$DSV3" bench attention --device cpu --seq 64,-1
# bench tokenize checks its thread counts before it loads or times anything.
expect_error bench-tokenize-threads-too-many "--threads: '70000' in '1,70000' is more than 65536" \
  "$DSV3" bench tokenize --tokenizer "$WORK/nowhere.json" --threads 1,70000 "$FIX/config.json"
[ -s "$WORK/out" ] && { echo "FAIL bench-tokenize-threads-too-many: printed to stdout"; failures=$((failures + 1)); }
expect_usage_error bench-tokenize-passes-zero "^--passes: must be at least 1, not 0$" "$DSV3" \
  bench tokenize --tokenizer "$WORK/nowhere.json" --passes 0 "$FIX/config.json"
[ -e "$WORK/run" ] && { echo "FAIL train-seq-one: left $WORK/run"; failures=$((failures + 1)); }

expect_error train-missing-data "nowhere" "$DSV3" train --data "$WORK/nowhere" --out "$WORK/run" \
  --steps 1

printf '5,6,7\n300,x\n' >"$WORK/batch.txt"
expect_error batch-bad-id "batch.txt:2: .*'x'" "$DSV3" generate -m tests/data/reference/tiny-v3 \
  --batch "$WORK/batch.txt" --batch-ids -n 2
expect_error batch-missing-file "nowhere.txt" "$DSV3" generate -m tests/data/reference/tiny-v3 \
  --batch "$WORK/nowhere.txt" --batch-ids -n 2

# export --gguf: a missing folder, a truncated checkpoint, an unwritable output and a config
# llama.cpp would run differently are refused, and no file appears at the output path.
expect_error export-missing "nowhere" "$DSV3" export --gguf "$WORK/out.gguf" "$WORK/nowhere"
expect_error export-truncated "model.safetensors" "$DSV3" export --gguf "$WORK/out.gguf" \
  "$WORK/truncated"
expect_error export-unwritable "no-such-folder" "$DSV3" export --gguf \
  "$WORK/no-such-folder/out.gguf" "$FIX"
mkdir -p "$WORK/interleaved"
cp "$FIX"/*.safetensors "$WORK/interleaved/"
sed 's/"moe_layer_freq": 1/"moe_layer_freq": 2/' "$FIX/config.json" >"$WORK/interleaved/config.json"
expect_error export-unsupported "moe_layer_freq" "$DSV3" export --gguf "$WORK/out.gguf" \
  "$WORK/interleaved"
if ls "$WORK"/out.gguf* >/dev/null 2>&1; then
  echo "FAIL export: a failed export left $(ls "$WORK"/out.gguf*)"
  failures=$((failures + 1))
fi

echo "bad_input: $passes passed, $failures failed"
[ $failures -eq 0 ]
