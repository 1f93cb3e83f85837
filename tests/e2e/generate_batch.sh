#!/usr/bin/env bash
# `dsv3 generate --batch`: prompts decoded together print, in order, exactly what each prompt
# gives alone (greedy, and seeded sampling with seed + line index), on a parity fixture.
# Usage: generate_batch.sh PATH/TO/dsv3
set -euo pipefail
DSV3=$1
FIX=tests/data/reference/tiny-v3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# 20 prompt tokens in all, more than one 8-row pass: each prompt must be prefilled on its own
# (one joint prefill pass took the BF16 GEMM and changed the second line's greedy output).
prompts=("64,261,120,507" "483,388,214,96,499,29" "443,2,456,272,234,104" "5,6,7" "300")
printf '%s\n' "${prompts[@]}" >"$WORK/batch.txt"
for sampling in "--temperature 0" "--temperature 0.9 --seed 41"; do
  # shellcheck disable=SC2086
  "$DSV3" generate -m "$FIX" --batch "$WORK/batch.txt" --batch-ids -n 12 $sampling >"$WORK/batch.out"
  : >"$WORK/single.out"
  for i in "${!prompts[@]}"; do
    seed_opt=""
    [[ $sampling == *--seed* ]] && seed_opt="--seed $((41 + i))"
    # shellcheck disable=SC2086
    ids=$("$DSV3" generate -m "$FIX" --prompt-ids "${prompts[$i]}" -n 12 ${sampling%--seed*} $seed_opt)
    echo "[$i] $ids" >>"$WORK/single.out"
  done
  if ! diff "$WORK/batch.out" "$WORK/single.out"; then
    echo "FAIL: batch output differs from single runs ($sampling)"
    exit 1
  fi
done
echo "generate_batch: batch equals single runs"
