#!/usr/bin/env bash
# `dsv3 generate --batch`: prompts decoded together print, in order, exactly what each prompt
# gives alone (greedy, and seeded sampling with seed + line index), on a parity fixture.
# Usage: generate_batch.sh PATH/TO/dsv3
set -euo pipefail
DSV3=$1
FIX=tests/data/reference/tiny-v3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
prompts=("5,6,7" "300" "9,8,7,6")
printf '%s\n' "${prompts[@]}" >"$WORK/batch.txt"
for sampling in "--temperature 0" "--temperature 0.9 --seed 41"; do
  # shellcheck disable=SC2086
  "$DSV3" generate -m "$FIX" --batch "$WORK/batch.txt" --batch-ids -n 8 $sampling >"$WORK/batch.out"
  : >"$WORK/single.out"
  for i in "${!prompts[@]}"; do
    seed_opt=""
    [[ $sampling == *--seed* ]] && seed_opt="--seed $((41 + i))"
    # shellcheck disable=SC2086
    ids=$("$DSV3" generate -m "$FIX" --prompt-ids "${prompts[$i]}" -n 8 ${sampling%--seed*} $seed_opt)
    echo "[$i] $ids" >>"$WORK/single.out"
  done
  if ! diff "$WORK/batch.out" "$WORK/single.out"; then
    echo "FAIL: batch output differs from single runs ($sampling)"
    exit 1
  fi
done
echo "generate_batch: batch equals single runs"
