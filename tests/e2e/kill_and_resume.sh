#!/usr/bin/env bash
# A training run killed with SIGKILL at random moments (often in the middle of a checkpoint save)
# loses nothing beyond its last complete checkpoint: every restart resumes, and the finished run's
# losses are bit-identical to a run that was never interrupted.
# Usage: kill_and_resume.sh PATH/TO/dsv3
set -euo pipefail
DSV3=$1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/corpus"
words=(the state of our union is strong and we will keep faith with people who work)
for d in $(seq 1 30); do
  text=""
  for w in $(seq 1 80); do text+="${words[$(( (d * 7 + w * w) % ${#words[@]} ))]} "; done
  echo "$text" > "$WORK/corpus/doc$d.txt"
done
"$DSV3" tokenizer train --vocab 320 --out "$WORK/tok/tokenizer.json" "$WORK"/corpus/*.txt >/dev/null
"$DSV3" prepare --quiet --tokenizer "$WORK/tok/tokenizer.json" --out "$WORK/data" --val-fraction 0.1 \
  "$WORK/corpus" >/dev/null
cat > "$WORK/config.json" <<JSON
{"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 16,
 "num_hidden_layers": 2, "first_k_dense_replace": 1, "num_attention_heads": 2, "q_lora_rank": 16,
 "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
 "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2,
 "topk_group": 1, "num_nextn_predict_layers": 1, "max_position_embeddings": 64}
JSON
STEPS=200
args=(--config "$WORK/config.json" --data "$WORK/data" --tokenizer-dir "$WORK/tok" --steps $STEPS
      --batch 2 --seq 32 --accum 2 --lr 3e-3 --warmup 3 --eval-every 10 --eval-batches 2
      --save-every 1 --keep 2 --threads 1)

"$DSV3" train "${args[@]}" --out "$WORK/straight" >/dev/null

# A run is finished when it says so, or when a restart finds it complete: a kill that lands after
# the last checkpoint is saved but before the process exits leaves a finished run whose next
# restart prints "the run is complete" (and the metrics are compared below either way).
finished="^(done: $STEPS steps|the run is complete: $STEPS of $STEPS steps)"
kills=0
# Kills land 0.05 to 0.3 s after each start. On a loaded machine a start can take longer than
# that and no restart would ever progress, so the window widens (up to 5 s) after 5 restarts in
# a row that saved nothing new, and narrows again once one does.
max_ms=300
stalled=0
last=""
for attempt in $(seq 1 400); do
  resume=()
  [ -e "$WORK/killed/checkpoints/latest" ] && resume=(--resume)
  "$DSV3" train "${args[@]}" --out "$WORK/killed" "${resume[@]}" >"$WORK/log" 2>&1 &
  pid=$!
  delay_ms=$(( 50 + RANDOM % (max_ms - 49) ))
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  if kill -9 $pid 2>/dev/null; then
    kills=$((kills + 1))
    wait $pid 2>/dev/null || true
    now=$(cat "$WORK/killed/checkpoints/latest" 2>/dev/null || true)
    if [ "$now" = "$last" ]; then stalled=$((stalled + 1)); else stalled=0; max_ms=300; fi
    last=$now
    if [ $stalled -ge 5 ] && [ $max_ms -lt 5000 ]; then max_ms=$((max_ms * 2)); stalled=0; fi
  else
    wait $pid || { cat "$WORK/log"; echo "FAIL: a restart failed"; exit 1; }
    if grep -Eq "$finished" "$WORK/log"; then break; fi
  fi
done
grep -Eq "$finished" "$WORK/log" || { cat "$WORK/log"; ls -la "$WORK/killed" "$WORK/killed/checkpoints"; echo "FAIL: the run never finished"; exit 1; }
[ $kills -ge 3 ] || { echo "FAIL: only $kills kills landed; the test proved nothing"; exit 1; }

/usr/bin/python3 - "$WORK/straight/metrics.jsonl" "$WORK/killed/metrics.jsonl" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert [r["step"] for r in b] == [r["step"] for r in a], "steps differ: %s" % [r["step"] for r in b]
for x, y in zip(a, b):
    for k in ("loss", "grad_norm", "val_loss"):
        assert x.get(k) == y.get(k), "step %d %s: %r vs %r" % (x["step"], k, x.get(k), y.get(k))
PY
echo "kill_and_resume: $kills kills, $STEPS steps, losses bit-identical: 1 passed, 0 failed"
