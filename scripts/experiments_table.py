#!/usr/bin/env python3
"""Summarizes the runs of scripts/experiments.sh as a Markdown table (docs/experiments.md)."""
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/experiments")
print("| run | final validation loss | val. next-token acc. | val. MTP next-next acc. "
      "| MaxVio, mean of last 100 steps | MaxVio, mean of first 100 |")
print("| --- | --- | --- | --- | --- | --- |")
for name in ["loss-free", "loss-free-g0.001", "aux-loss", "no-balance", "no-mtp"]:
    path = out / name / "metrics.jsonl"
    if not path.exists():
        continue
    rows = [json.loads(line) for line in path.open() if line.strip()]
    rows = [r for r in rows if not r.get("skipped")]
    evals = [r for r in rows if "val_loss" in r]
    if not evals:
        continue
    last = evals[-1]
    mtp = f"{last['val_mtp_acc']:.3f}" if "val_mtp_acc" in last else "-"
    print(f"| {name} | {last['val_loss']:.4f} | {last['val_acc']:.3f} | {mtp} "
          f"| {statistics.mean(r['max_vio'] for r in rows[-100:]):.3f} "
          f"| {statistics.mean(r['max_vio'] for r in rows[:100]):.3f} |")
