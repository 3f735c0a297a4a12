"""Plot ours against PyTorch (bf16, H100) from the submission-modes raw files.

Usage: python3 benches/gpu/plot_vs_pytorch.py OUT.png [RAW_DIR]
RAW_DIR defaults to benches/results/raw. Ours: median over the rounds of the eager-submission
runs; PyTorch: median over its runs in the same two device calls. Writes a log-scale bar chart of milliseconds per call.
"""
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = sys.argv[1]
raw = Path(sys.argv[2] if len(sys.argv) > 2 else "benches/results/raw")


def lines(name):
    for line in (raw / name).read_text().splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            if "median_ms" in row:
                yield row


def size(row):
    return "2x4096" if row["batch"] == 2 else {8192: "8K", 32768: "32K", 131072: "131K", 1048576: "1M"}[row["seq"]]


ours, torch = {}, {}
for call in ("call1", "call2"):
    for r in lines(f"submit-ab-ours-h100-{call}.jsonl"):
        if r["submit"] == "eager" and r["dtype"] == "bf16":
            ours.setdefault((r["mode"], r["pass"], size(r)), []).append(r["median_ms"])
    for r in lines(f"submit-ab-pytorch-h100-{call}.jsonl"):
        torch.setdefault((r["impl"], r["pass"], size(r)), []).append(r["median_ms"])

sizes = ["8K", "32K", "131K", "1M", "2x4096"]
panels = [("longnet", "fwd"), ("longnet", "fwd_bwd"), ("head_grouped", "fwd"), ("head_grouped", "fwd_bwd")]
fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
for ax, (mode, pas) in zip(axes, panels):
    xs = range(len(sizes))
    o = [statistics.median(ours[(mode, pas, s)]) for s in sizes]
    t = [statistics.median(torch[(mode, pas, s)]) for s in sizes]
    ax.bar([x - 0.2 for x in xs], t, 0.4, label="PyTorch", color="#999999")
    ax.bar([x + 0.2 for x in xs], o, 0.4, label="ours", color="#d9541e")
    for x, a, b in zip(xs, o, t):
        ax.text(x, max(a, b) * 1.15, f"{b / a:.2f}x", ha="center", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(list(xs), sizes, fontsize=8)
    ax.set_title(f"{mode.replace('_', '-')} {pas.replace('_', '+')}", fontsize=9)
    ax.set_ylim(top=max(max(o), max(t)) * 3)
    ax.tick_params(axis="y", labelsize=7)
axes[0].set_ylabel("ms per call (log)", fontsize=8)
axes[0].legend(fontsize=7, loc="upper left")
fig.suptitle("bf16, 8 heads x 64, pairs (2048,1),(4096,2),(8192,4), one H100; label: PyTorch / ours", fontsize=9)
fig.tight_layout()
fig.savefig(out, dpi=90)
for mode, pas in panels:
    print(mode, pas, " ".join(f"{s}:{statistics.median(torch[(mode, pas, s)]) / statistics.median(ours[(mode, pas, s)]):.2f}x" for s in sizes))
