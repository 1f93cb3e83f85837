#!/usr/bin/env bash
# Fetches llama.cpp, the CPU inference baseline, into third_party/llamacpp/ (gitignored):
#   prebuilt/   npm @node-llama-cpp/linux-x64: llama.cpp's prebuilt shared libraries under
#               bins/linux-x64/ (libllama, libggml, libggml-base, and one libggml-cpu-* per CPU
#               generation, of which libggml loads the best one at run time)
#   include/    llama.h and ggml's public headers, taken from the llama.cpp source of the same
#               release that node-llama-cpp carries as llama/gitRelease.bundle
# bench/llamacpp/ is built against them (CMake option DSV3_LLAMACPP) and the llama.cpp parity
# test runs it. Only x86-64 Linux has these libraries; elsewhere the step says so and stops.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=3.22.1
DEST=third_party/llamacpp
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "setup: llama.cpp's prebuilt libraries exist for x86-64 Linux only; skipping them"
  exit 0
fi
if [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION" ]; then exit 0; fi

echo "setup: fetching llama.cpp (node-llama-cpp $VERSION) into $DEST"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@node-llama-cpp/linux-x64@$VERSION" "node-llama-cpp@$VERSION" >/dev/null)

rm -rf "$DEST"
mkdir -p "$DEST/prebuilt" "$DEST/include"
tar -xzf "$tmp"/node-llama-cpp-linux-x64-"$VERSION".tgz -C "$DEST/prebuilt" --strip-components=1

# The headers: clone the bundled source and keep only the public headers.
tar -xzf "$tmp/node-llama-cpp-$VERSION.tgz" -C "$tmp" package/llama/gitRelease.bundle \
  package/llama/llama.cpp.info.json
git -c advice.detachedHead=false clone --quiet "$tmp/package/llama/gitRelease.bundle" "$tmp/src"
cp "$tmp"/src/include/*.h "$tmp"/src/ggml/include/*.h "$DEST/include/"
cp "$tmp/package/llama/llama.cpp.info.json" "$DEST/"
echo "$VERSION" >"$DEST/VERSION"
