#!/usr/bin/env bash
# `dsv3 chat` and `dsv3 perplexity` on a small random model that carries DeepSeek-V3's real
# tokenizer and chat template (its vocabulary, 129,280 rows, is larger than the tokenizer's, so
# the sampler must never draw an id without a token): a two-turn session ends cleanly at end of
# input, with nothing on stderr; Ctrl-C (SIGINT)
# during a reply stops that reply and not the session; the perplexity of a near-uniform model is
# close to its vocabulary size.
# Usage: chat_and_perplexity.sh PATH/TO/dsv3
set -euo pipefail
DSV3=$1
TOK=third_party/deepseek_v3/models
[ -f "$TOK/tokenizer.json" ] || { echo "FAIL: $TOK is missing: run scripts/setup.sh"; exit 1; }
WORK=$(mktemp -d)
CHAT_PID=""
cleanup() {
  [ -n "$CHAT_PID" ] && kill "$CHAT_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# tiny-v3's shape with DeepSeek-V3's vocabulary and a longer context.
python3 - "$WORK/config.json" <<'PY'
import json, sys
c = json.load(open("tests/data/reference/tiny-v3/config.json"))
c["vocab_size"] = 129280
c["max_position_embeddings"] = 8192
c["num_nextn_predict_layers"] = 0
c.pop("train", None)
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
"$DSV3" init-model "$WORK/config.json" "$WORK/model" --dtype bf16 >/dev/null
cp "$TOK/tokenizer.json" "$TOK/tokenizer_config.json" "$WORK/model/"

# Two turns from a pipe: two prompts answered, a third prompt, then end of input ends the session.
printf 'Hello there\nAnd a second question\n' | "$DSV3" chat -m "$WORK/model" -n 6 --threads 1 \
  >"$WORK/two_turns.out" 2>"$WORK/two_turns.err"
if [ -s "$WORK/two_turns.err" ]; then
  echo "FAIL: chat wrote to stderr:"; cat "$WORK/two_turns.err"; exit 1
fi
prompts=$(grep -o '> ' "$WORK/two_turns.out" | wc -l)
if [ "$prompts" -ne 3 ]; then
  echo "FAIL: expected 3 prompts in a two-turn session, saw $prompts:"; cat "$WORK/two_turns.out"
  exit 1
fi

# Ctrl-C during a long reply: the reply stops ("[stopped]"), the next turn is still answered.
mkfifo "$WORK/in"
"$DSV3" chat -m "$WORK/model" -n 6000 --threads 1 <"$WORK/in" >"$WORK/interrupted.out" \
  2>"$WORK/interrupted.err" &
CHAT_PID=$!
exec 3>"$WORK/in"
echo "Tell me a very long story" >&3
# Wait until the reply has started streaming (more than the first prompt on the output).
for _ in $(seq 1 200); do
  [ "$(wc -c <"$WORK/interrupted.out")" -gt 40 ] && break
  sleep 0.05
done
kill -INT "$CHAT_PID"
sleep 0.3
echo "Still there?" >&3
exec 3>&-  # end of input after the second turn
wait "$CHAT_PID"
rc=$?
CHAT_PID=""
if [ $rc -ne 0 ] || [ -s "$WORK/interrupted.err" ] || ! grep -q '\[stopped\]' "$WORK/interrupted.out"; then
  echo "FAIL: Ctrl-C did not stop the reply cleanly (rc=$rc):"; head -c 2000 "$WORK/interrupted.out"
  cat "$WORK/interrupted.err"
  exit 1
fi
after=$(sed 's/.*\[stopped\]//' "$WORK/interrupted.out" | tr -d '\n' | grep -o '> ' | wc -l)
if [ "$after" -lt 2 ]; then
  echo "FAIL: the session did not go on after Ctrl-C:"; tail -c 2000 "$WORK/interrupted.out"
  exit 1
fi

# Perplexity of a near-uniform random model: exp(nll) close to the vocabulary size.
head -c 3000 tests/data/tokenizer/cases.jsonl >"$WORK/text.txt"
line=$("$DSV3" perplexity -m "$WORK/model" "$WORK/text.txt" --ctx 256 --threads 1)
ppl=$(echo "$line" | sed -n 's/.*perplexity=\([0-9.]*\).*/\1/p')
if ! awk -v p="$ppl" 'BEGIN { exit !(p > 129280 / 2 && p < 129280 * 2) }'; then
  echo "FAIL: perplexity of a near-uniform model should be near 129280: $line"
  exit 1
fi
echo "chat_and_perplexity: two turns, Ctrl-C stops a reply only, $line"
