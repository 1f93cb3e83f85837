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

# Seeds of experiment (a) (scripts/experiments_seeds.sh): the seed-1234 runs above plus
# "{name}-seed{S}" runs, final validation loss and late MaxVio per seed, their mean and spread.
seeded = {}
for name in ["loss-free", "aux-loss"]:
    runs = {"1234": out / name}
    for path in sorted(out.glob(f"{name}-seed*")):
        if path.is_dir():
            runs[path.name.split("-seed")[1]] = path
    rows_by_seed = {}
    for seed, path in runs.items():
        metrics = path / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [json.loads(line) for line in metrics.open() if line.strip()]
        rows = [r for r in rows if not r.get("skipped")]
        evals = [r for r in rows if "val_loss" in r]
        if evals:
            rows_by_seed[seed] = (evals[-1]["val_loss"],
                                  statistics.mean(r["max_vio"] for r in rows[-100:]))
    if len(rows_by_seed) > 1:
        seeded[name] = rows_by_seed
if seeded:
    seeds = sorted(set.intersection(*(set(v) for v in seeded.values())), key=int)
    print()
    print("| seed | " + " | ".join(f"{n} val. loss | {n} MaxVio" for n in seeded) + " | difference |")
    print("|---" * (2 * len(seeded) + 2) + "|")
    diffs = []
    for s in seeds:
        cells = []
        for n in seeded:
            loss, vio = seeded[n][s]
            cells += [f"{loss:.4f}", f"{vio:.3f}"]
        if len(seeded) == 2:
            a, b = (seeded[n][s][0] for n in seeded)
            diffs.append(a - b)
        print(f"| {s} | " + " | ".join(cells) + f" | {diffs[-1]:+.4f} |")
    cells = []
    for n in seeded:
        losses = [seeded[n][s][0] for s in seeds]
        vios = [seeded[n][s][1] for s in seeds]
        cells += [f"{statistics.mean(losses):.4f} ± {statistics.stdev(losses):.4f}",
                  f"{statistics.mean(vios):.3f}"]
    print(f"| mean ± sd | " + " | ".join(cells) +
          f" | {statistics.mean(diffs):+.4f} ± {statistics.stdev(diffs):.4f} |")
