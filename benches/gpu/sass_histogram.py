#!/usr/bin/env python3
"""Instruction mix of one kernel from Nsight Compute's source page (`ncu --import R --page source
--csv --print-source sass`): executed warp instructions per opcode, per tensor-core MMA, and the
blocks of instructions that run the same number of times (the loop bodies)."""
import collections, csv, sys

rows = list(csv.reader(open(sys.argv[1])))
header = next(i for i, r in enumerate(rows) if "Instructions Executed" in r)
names, data = rows[header], rows[header + 1:]
executed, source = names.index("Instructions Executed"), names.index("Source")
ops, blocks, total = collections.Counter(), collections.defaultdict(list), 0
for r in data:
    if len(r) <= executed or not r[executed]:
        continue
    words = r[source].split()
    words = words[1:] if words and words[0].startswith("@") else words
    count = int(float(r[executed]))
    ops[words[0] if words else "?"] += count
    blocks[count].append(words[0] if words else "?")
    total += count
mma = sum(v for k, v in ops.items() if k.startswith("HMMA")) or 1
print(f"warp instructions {total}, HMMA {mma}, per HMMA {total / mma:.2f}")
for op, count in ops.most_common(16):
    print(f"{op:30s} {count:12d} {count / mma:6.2f} per HMMA")
for count, body in sorted(blocks.items(), key=lambda kv: -kv[0] * len(kv[1]))[:3]:
    print(f"{len(body)} instructions x {count}: {collections.Counter(body).most_common(10)}")
