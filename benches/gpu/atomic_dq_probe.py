#!/usr/bin/env python3
"""What a one-kernel backward's dQ atomics would cost (issue 3, benches/results/kernels-plan.md item 0).

FlashAttention-2's backward has one kernel per key block that adds each query tile's dQ into
an f32 buffer with atomics, instead of a second kernel that recomputes S and dP. Before writing
that kernel in CubeCL, this measures the atomics alone, with the fused backward's pattern on the
issue's config (8 heads x 64; pairs (2048,1),(4096,2),(8192,4)). A head attends each of its
pairs at one offset: head-grouped, heads split 3/3/2 among the pairs and group i uses offset
i % r_i; LongNet, every head uses every pair at offset head % r_i. One program per (head,
segment, block of `--key-block` keys) walks every query tile of `--query-tile` rows of its
segment and adds a `query_tile x 64` f32 tile into the dilated rows of dQ ([seq, heads, 64], row
`start + offset + t r`).

Variants, each timed alone (median of `--repeats` after a warm-up):
  atomic : tl.atomic_add (relaxed) of every element, the fused kernel's adds;
  store  : tl.store of the same tiles (the bytes without the read-modify-write), a floor.
Prints one JSON line per (seq, variant, key_block) with the adds issued and their rate.
"""
import argparse, json, os, sys

import torch
import triton
import triton.language as tl

# The PyTorch baseline's split of heads among pairs (the head-grouped mode's groups).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pytorch"))
from dilated_baseline import head_groups  # noqa: E402


@triton.jit
def dq_tiles(dq, seq, r, m, heads_first, group_offset, stride_row, ATOMIC: tl.constexpr,
             OFFSET_FROM_HEAD: tl.constexpr, QUERY_TILE: tl.constexpr, D: tl.constexpr):
    key_block = tl.program_id(0)
    segment = tl.program_id(1)
    head = heads_first + tl.program_id(2)
    if OFFSET_FROM_HEAD:
        offset = head % r
    else:
        offset = group_offset
    start = segment * m * r  # segment length s = m r
    cols = tl.arange(0, D)
    for qt in range(0, tl.cdiv(m, QUERY_TILE)):
        t = qt * QUERY_TILE + tl.arange(0, QUERY_TILE)
        pos = start + offset + t * r
        live = (t < m) & (pos < seq)
        ptr = dq + pos[:, None] * stride_row + head * D + cols[None, :]
        val = (t[:, None] + cols[None, :] + key_block).to(tl.float32) * 1e-6
        if ATOMIC:
            tl.atomic_add(ptr, val, mask=live[:, None], sem="relaxed")
        else:
            tl.store(ptr, val, mask=live[:, None])


def run(seq, heads, d, pairs, mode, atomic, key_block, query_tile):
    dq = torch.zeros(seq, heads, d, device="cuda", dtype=torch.float32)
    adds = 0
    launches = []
    if mode == "head_grouped":
        heads_of = head_groups(heads, len(pairs))
    else:
        heads_of = [(0, heads)] * len(pairs)
    for i, ((first, count), (s, r)) in enumerate(zip(heads_of, pairs)):
        s = min(s, seq)
        m = s // r
        segments = seq // s
        key_blocks = triton.cdiv(m, key_block)
        launches.append((key_blocks, segments, count, r, m, first, i % r))
        adds += key_blocks * segments * count * m * d
    def once():
        for key_blocks, segments, count, r, m, first, offset in launches:
            dq_tiles[(key_blocks, segments, count)](
                dq, seq, r, m, first, offset, heads * d, ATOMIC=atomic,
                OFFSET_FROM_HEAD=mode == "longnet", QUERY_TILE=query_tile, D=d)
    return once, adds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="32768,131072,1048576")
    ap.add_argument("--key-blocks", default="64,128")
    ap.add_argument("--query-tile", type=int, default=32)
    ap.add_argument("--modes", default="head_grouped,longnet")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    pairs = [(2048, 1), (4096, 2), (8192, 4)]
    print(json.dumps({"device": torch.cuda.get_device_name(), "triton": triton.__version__}))
    for mode in args.modes.split(","):
      for seq in [int(x) for x in args.seqs.split(",")]:
        for key_block in [int(x) for x in args.key_blocks.split(",")]:
            for atomic in (True, False):
                once, adds = run(seq, 8, 64, pairs, mode, atomic, key_block, args.query_tile)
                once()
                torch.cuda.synchronize()
                times = []
                for _ in range(args.repeats):
                    a = torch.cuda.Event(enable_timing=True)
                    b = torch.cuda.Event(enable_timing=True)
                    a.record()
                    once()
                    b.record()
                    torch.cuda.synchronize()
                    times.append(a.elapsed_time(b))
                ms = sorted(times)[len(times) // 2]
                print(json.dumps({
                    "mode": mode, "seq": seq, "variant": "atomic" if atomic else "store", "key_block": key_block,
                    "query_tile": args.query_tile, "adds": adds, "median_ms": round(ms, 4),
                    "g_adds_per_s": round(adds / ms / 1e6, 1),
                    "gb_per_s": round(adds * 4 / ms / 1e6, 1),
                }), flush=True)


if __name__ == "__main__":
    main()
