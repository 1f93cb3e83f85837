#!/usr/bin/env bash
# What the baselines need beyond scripts/setup.sh: Debian's PyTorch (CPU) with the OpenMP build of
# OpenBLAS, so its threads do not fight a second thread pool.
set -euo pipefail
missing=()
for p in python3-torch python3-numpy libopenblas0-openmp; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
