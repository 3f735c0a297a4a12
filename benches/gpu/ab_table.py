#!/usr/bin/env python3
"""Median of the rounds per (binary, mode, dtype, seq, pass) from the `ab` stage's JSON lines,
side by side: one row per config, one column per binary (or setting), and each one's time
against the first's."""
import collections, json, statistics, sys

runs = collections.defaultdict(list)
binaries = []
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if r["binary"] not in binaries:
        binaries.append(r["binary"])
    runs[(r["mode"], r.get("dtype", "bf16"), r["seq"], r["pass"], r["binary"])].append(r["median_ms"])
configs = sorted({k[:4] for k in runs}, key=lambda k: (k[3], k[1], k[0], k[2]))
print("| mode | dtype | seq | pass | " + " | ".join(f"{b} ms" for b in binaries) + " | " + " | ".join(f"{b} / {binaries[0]}" for b in binaries[1:]) + " |")
print("|" + " --- |" * (4 + 2 * len(binaries) - 1))
for c in configs:
    ms = [statistics.median(runs[c + (b,)]) if runs.get(c + (b,)) else float("nan") for b in binaries]
    print(f"| {c[0]} | {c[1]} | {c[2]} | {c[3]} | " + " | ".join(f"{m:.3f}" for m in ms) + " | " + " | ".join(f"{m / ms[0]:.3f}" for m in ms[1:]) + " |")
