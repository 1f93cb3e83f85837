#!/usr/bin/env bash
# `--device cuda` through the command line, on the CPU emulation of CUDA (dsv3_emulated):
# `parity --device cuda --optimizer` passes the fixtures in float32 (the training step and the
# decode checks on the device) and in BF16 mixed precision (the tensor-core attention kernels
# on the emulated mma/ldmatrix/cp.async, at the BF16 tolerances), greedy generation gives the CPU's tokens, a batch and MTP
# speculation give the plain tokens (also with each decode step as one launch), and perplexity
# agrees with the CPU's.
# Usage: command_line.sh PATH/TO/dsv3 PATH/TO/dsv3_emulated
set -euo pipefail
CPU=$1
EMU=$2
FIX=tests/data/reference/tiny-v3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
F32=(--dtype f32 --cache-dtype f32)
fail() { echo "FAIL: $*"; exit 1; }

for fixture in tiny-v3 tiny-v2lite; do
  for precision in f32 bf16; do
    "$EMU" parity --device cuda --precision "$precision" --optimizer "tests/data/reference/$fixture" \
      >"$WORK/parity.txt" \
      || { tail -20 "$WORK/parity.txt"; fail "parity --device cuda --precision $precision on $fixture"; }
    grep -q " 0 failed" "$WORK/parity.txt" \
      || fail "parity --device cuda --precision $precision on $fixture reported failures"
  done
  # The routed experts the other ways (the default is batched products over chunks): cuBLAS's
  # grouped call, dsv3's grouped BF16 kernel (for every product, or for the weight gradients
  # only), and cuBLAS calls on side streams.
  for mode in cublas kernel padded-kernel streams; do
    DSV3_GROUPED_GEMM=$mode "$EMU" parity --device cuda --precision bf16 --optimizer \
      "tests/data/reference/$fixture" >"$WORK/parity.txt" \
      || { tail -20 "$WORK/parity.txt"; fail "parity with DSV3_GROUPED_GEMM=$mode on $fixture"; }
    grep -q " 0 failed" "$WORK/parity.txt" \
      || fail "parity with DSV3_GROUPED_GEMM=$mode on $fixture reported failures"
  done
  # MLA's attention through head-major copies instead of on the token-major projections.
  DSV3_MLA_TOKEN_MAJOR=0 "$EMU" parity --device cuda --precision bf16 --optimizer \
    "tests/data/reference/$fixture" >"$WORK/parity.txt" \
    || { tail -20 "$WORK/parity.txt"; fail "parity with DSV3_MLA_TOKEN_MAJOR=0 on $fixture"; }
  grep -q " 0 failed" "$WORK/parity.txt" \
    || fail "parity with DSV3_MLA_TOKEN_MAJOR=0 on $fixture reported failures"
done

# Greedy, 20 prompt tokens (the cuBLAS prefill) then decode steps (the GEMV, the graphs).
prompt="64,261,120,507,483,388,214,96,499,29,443,2,456,272,234,104,5,6,7,300"
cpu=$("$CPU" generate -m "$FIX" "${F32[@]}" --prompt-ids "$prompt" -n 16 --print-ids)
gpu=$("$EMU" generate -m "$FIX" "${F32[@]}" --device cuda --prompt-ids "$prompt" -n 16 --print-ids)
[[ $cpu =~ ^([0-9]+,){15}[0-9]+$ ]] || fail "the CPU run printed '$cpu', not 16 token ids"
[ "$cpu" = "$gpu" ] || fail "generate --device cuda gave $gpu, the CPU $cpu"
# Each decode step as one launch (the decode program): the same tokens, MTP speculation too.
one=$(DSV3_CUDA_PERSISTENT=1 "$EMU" generate -m "$FIX" "${F32[@]}" --device cuda --prompt-ids "$prompt" \
  -n 16 --print-ids)
[ "$one" = "$cpu" ] || fail "generate with DSV3_CUDA_PERSISTENT=1 gave $one, the CPU $cpu"
one_spec=$(DSV3_CUDA_PERSISTENT=1 "$EMU" generate -m "$FIX" "${F32[@]}" --device cuda \
  --prompt-ids "$prompt" -n 16 --print-ids --speculative mtp)
[ "$one_spec" = "$cpu" ] || fail "speculation with DSV3_CUDA_PERSISTENT=1 gave $one_spec, the CPU $cpu"

# A batch and MTP speculation on the device give what plain decoding gives there (BF16).
prompts=("64,261,120,507" "5,6,7" "300")
printf '%s\n' "${prompts[@]}" >"$WORK/batch.txt"
"$EMU" generate -m "$FIX" --device cuda --batch "$WORK/batch.txt" --batch-ids -n 10 >"$WORK/batch.out"
: >"$WORK/single.out"
for i in "${!prompts[@]}"; do
  plain=$("$EMU" generate -m "$FIX" --device cuda --prompt-ids "${prompts[$i]}" -n 10)
  spec=$("$EMU" generate -m "$FIX" --device cuda --prompt-ids "${prompts[$i]}" -n 10 --speculative mtp)
  [ -n "$plain" ] || fail "no tokens for prompt $i"
  [ "$plain" = "$spec" ] || fail "speculative decoding gave $spec, plain $plain (prompt $i)"
  echo "[$i] $plain" >>"$WORK/single.out"
done
diff "$WORK/batch.out" "$WORK/single.out" || fail "a batch on cuda differs from single runs"

# Perplexity over 40 ids in windows of 16.
seq 3 7 283 | tr '\n' ' ' >"$WORK/ids.txt"
ppl() { "$1" perplexity -m "$FIX" "${F32[@]}" --ids --ctx 16 "$WORK/ids.txt" "${@:2}" | grep -o 'perplexity=[0-9.]*'; }
a=$(ppl "$CPU")
b=$(ppl "$EMU" --device cuda)
awk -v a="${a#*=}" -v b="${b#*=}" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-4 * a) }' \
  || fail "perplexity on cuda $b, on the CPU $a"
echo "command_line: parity, generate, batch, speculation and perplexity on the emulated device pass ($a)"
