#!/usr/bin/env python3
"""Per-kernel times of one step, from an Nsight Compute CSV (scripts/gpu_checks.sh LOG profile).

    ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
        --print-units base --log-file X.csv dsv3 bench ...
    scripts/kernel_profile.py X.csv --start embed_kernel --end embed_kernel

The window is the last run of kernels that begins with one whose name contains START and ends
before the next whose name contains END (or with it, with --end-inclusive): the last whole step
of a run. Kernels are grouped by their function name (namespaces and template arguments
dropped unless --templates); the table lists calls, total microseconds and microseconds per call, largest first.
Nsight Compute runs each kernel alone with caches flushed, so the total is an upper bound on the
step's own time.
"""
import argparse
import csv
import re
import sys
from collections import OrderedDict


def short_name(kernel, with_template):
    """'void ns::(anonymous namespace)::f<1, true>(args)' -> 'f<1, true>' (or 'f')."""
    name = re.sub(r"\(anonymous namespace\)::", "", kernel)
    marks = [name.find("(")] + ([] if with_template else [name.find("<")])
    cut = min([i for i in marks if i >= 0], default=len(name))
    head = name[:cut]
    template = ""
    if "<" in head:
        head, template = head[: head.index("<")], head[head.index("<"):]
    words = head.split("::")[-1].split()
    return (words[-1] if words else kernel) + template


def read_rows(path):
    """(kernel name, nanoseconds) in launch order."""
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's own lines come first
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        sys.exit(f"error: {path}: no CSV header (was ncu run with --csv --page raw?)")
    try:
        name_col = header.index("Kernel Name")
        time_col = header.index("gpu__time_duration.sum")
    except ValueError:
        sys.exit(f"error: {path}: needs the columns 'Kernel Name' and 'gpu__time_duration.sum'")
    rows = []
    for row in reader:
        if len(row) <= max(name_col, time_col):
            continue
        value = row[time_col].replace(",", "")
        try:
            ns = float(value)
        except ValueError:  # the units row ("nsecond") and the like
            continue
        rows.append((row[name_col], ns))
    if not rows:
        sys.exit(f"error: {path}: no kernel times (with --print-units base, times are in ns)")
    return rows


def window(rows, start, end, end_inclusive):
    """The last [start .. end) run of rows; None if there is none."""
    starts = [i for i, (n, _) in enumerate(rows) if start in n]
    for s in reversed(starts):
        for e in range(s + 1, len(rows)):
            if end in rows[e][0]:
                return rows[s:e + 1] if end_inclusive else rows[s:e]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--start", required=True, help="a step's first kernel (substring of its name)")
    ap.add_argument("--end", required=True, help="the kernel after a step (substring)")
    ap.add_argument("--end-inclusive", action="store_true", help="the end kernel is the step's last")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--templates", action="store_true", help="group by template arguments too")
    a = ap.parse_args()
    step = window(read_rows(a.csv), a.start, a.end, a.end_inclusive)
    if not step:
        sys.exit(f"error: {a.csv}: no kernel named like '{a.start}' followed by one like '{a.end}'")
    groups = OrderedDict()
    for name, ns in step:
        key = short_name(name, a.templates)
        calls, total = groups.get(key, (0, 0.0))
        groups[key] = (calls + 1, total + ns)
    total_us = sum(ns for _, ns in step) / 1e3
    print(f"{len(step)} kernels, {total_us:.1f} us of kernel time in the step")
    print("| kernel | calls | us | us per call | share |")
    print("| --- | --- | --- | --- | --- |")
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][1])
    for name, (calls, ns) in ranked[: a.top]:
        us = ns / 1e3
        print(f"| {name} | {calls} | {us:.1f} | {us / calls:.1f} | {100 * us / total_us:.1f}% |")


if __name__ == "__main__":
    main()
