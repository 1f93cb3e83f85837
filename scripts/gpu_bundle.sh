#!/usr/bin/env bash
# Packs a CUDA build for a GPU machine that has the NVIDIA driver and CUDA runtime but none of
# dsv3's build dependencies: the binaries plus the shared libraries they link that a CUDA base
# image lacks (oneDNN, fmt, PCRE2, OpenCL loader), the largest compressed.
#
#   scripts/gpu_bundle.sh [BUILD_DIR] [OUT_DIR]      (defaults: build .devkit)
#
# On the GPU machine, from the repository root:  source OUT_DIR/env.sh
# (unpacks once, then puts the binaries on PATH and the libraries on LD_LIBRARY_PATH).
set -euo pipefail
build=${1:-build}
out=${2:-.devkit}
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
for b in dsv3 dsv3_tests dsv3_gpu_tests; do
  [[ -x "$build/$b" ]] && cp "$build/$b" "$out/bin/"
done
[[ -x "$out/bin/dsv3" ]] || { echo "gpu_bundle: $build/dsv3 not found (build first)" >&2; exit 1; }
# Every non-system library the binaries need, resolved on this machine.
for b in "$out"/bin/*; do ldd "$b"; done | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libstdc++.so*|libgcc_s.so*) ;;
    *) cp -L "$lib" "$out/lib/" ;;
  esac
done
# Compress what is large (oneDNN alone is ~40 MB).
find "$out/lib" -size +4M -exec xz -T0 -6 {} \;
cat > "$out/env.sh" <<'EOF'
# Sourced on the GPU machine: unpack compressed libraries once, then set the paths.
kit=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p /tmp/dsv3-kit-lib
cp -n "$kit"/lib/* /tmp/dsv3-kit-lib/ 2>/dev/null || true
for f in /tmp/dsv3-kit-lib/*.xz; do [[ -e "$f" ]] && xz -df "$f"; done
export LD_LIBRARY_PATH=/tmp/dsv3-kit-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$kit/bin:$PATH
EOF
du -sh "$out"
