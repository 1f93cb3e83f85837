#!/usr/bin/env bash
# Sets up, builds and runs every test: the unit, op, parity and end-to-end tests through ctest,
# then short runs of the fuzz targets. This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}

# Fuzz targets: a separate clang build with libFuzzer and sanitizers, a short run of each (the
# fuzzed code is host code: the CUDA backend and the llama.cpp harness are left out of this
# build).
FUZZ_DIR=${FUZZ_DIR:-build-fuzz}
CC=clang CXX=clang++ cmake -S . -B "$FUZZ_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDSV3_FUZZ=ON -DDSV3_TESTS=OFF -DDSV3_NATIVE=OFF -DDSV3_CUDA=OFF -DDSV3_LLAMACPP=OFF >/dev/null
cmake --build "$FUZZ_DIR" -j "$(nproc)" --target dsv3_fuzzers
# Each fuzzer runs 30 s on a core of its own, as many side by side as there are cores.
fuzz_one() {
  local fuzzer=$1 name corpus
  name=$(basename "$fuzzer")
  corpus="tests/data/fuzz/${name#dsv3_fuzz_}"
  mkdir -p "$FUZZ_DIR/corpus/$name"
  echo "fuzz: $name (30 s)"
  "$fuzzer" -max_total_time=30 -print_final_stats=0 "$FUZZ_DIR/corpus/$name" \
    $( [ -d "$corpus" ] && echo "$corpus" ) 2>"$FUZZ_DIR/$name.log" \
    || { tail -50 "$FUZZ_DIR/$name.log"; echo "fuzz: $name found a failure"; return 1; }
}
export -f fuzz_one
export FUZZ_DIR
find "$FUZZ_DIR" -maxdepth 1 -name 'dsv3_fuzz_*' -type f -executable | sort \
  | xargs -P "$(nproc)" -I{} bash -c 'fuzz_one "$1"' _ {}

ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)"
