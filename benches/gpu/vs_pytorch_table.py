#!/usr/bin/env python3
"""Ours (fused_bench JSON lines) against PyTorch (benches/pytorch/dilated_baseline.py JSON lines)
from one device call, as a Markdown table: per (mode, batch x seq, pass) the median times,
tokens/s, useful TFLOP/s and PyTorch's time over ours."""
import json, sys

def lines(path):
    for line in open(path):
        if line.startswith("{"):
            row = json.loads(line)
            if "seq" in row:
                yield row

ours = {(r["mode"], r["batch"], r["seq"], r["pass"]): r for r in lines(sys.argv[1])}
theirs = {(r["impl"], r.get("batch", 1), r["seq"], r["pass"]): r for r in lines(sys.argv[2])}
print("| mode | b x n | pass | ours ms | ours M tok/s | ours TFLOP/s | PyTorch ms | PyTorch M tok/s | PyTorch TFLOP/s | PyTorch ms / ours ms |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for key in sorted(ours, key=lambda k: (k[3], k[0], k[1] == 2, k[2])):
    o, t = ours[key], theirs.get(key)
    if t is None:
        continue
    print(f"| {key[0]} | {key[1]}x{key[2]} | {key[3]} | {o['median_ms']:.3f} | {o['tokens_per_s'] / 1e6:.2f} | "
          f"{o['tflops']:.1f} | {t['median_ms']:.3f} | {t['tokens_per_s'] / 1e6:.2f} | {t['tflops_useful']:.1f} | "
          f"{t['median_ms'] / o['median_ms']:.2f} |")
