#!/usr/bin/env bash
# Causal attention on one GPU: dsv3's CUDA kernels (float32) against PyTorch's
# scaled_dot_product_attention(is_causal=True) in float32 and bfloat16, at B x 16 heads x T in
# {1024, 2048, 4096}, q/k head dim 192 and v 128 (DeepSeek-V3). Prints the median CUDA-event
# time, useful causal TFLOP/s, the dsv3 / PyTorch throughput ratio and, with --peak-fp32 /
# --peak-bf16 (dense TFLOP/s of the GPU), the fraction of peak. See attention_sdpa.py for how
# FLOPs are counted and how v's narrower head dim is handled.
#
# Needs a CUDA build of dsv3 (build/dsv3, or $DSV3_BUILD/dsv3) and a Python with PyTorch and
# CUDA ($PYTHON, default python3). Examples:
#   bench/attention_vs_sdpa.sh
#   bench/attention_vs_sdpa.sh --batch 1,4 --peak-fp32 67 --peak-bf16 989   # H100 SXM dense
#   bench/attention_vs_sdpa.sh --v-mode both --seq 2048
# Any option of attention_sdpa.py passes through (--help lists them).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${DSV3_BUILD:-$here/../build}
python=${PYTHON:-python3}
if [[ ! -x $build/dsv3 ]]; then
  echo "no dsv3 binary at $build/dsv3: build first" \
    "(cmake -S . -B build -G Ninja && ninja -C build)" >&2
  exit 1
fi
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu \
    --format=csv,noheader | sed 's/^/# gpu: /'
fi
exec "$python" "$here/attention_sdpa.py" --dsv3 "$build/dsv3" "$@"
