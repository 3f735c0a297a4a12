#!/usr/bin/env python3
"""torch.matmul in f16 (cuBLAS), the baseline of examples/cmma_matmul_probe.rs: one JSON line."""
import json, sys, torch

n = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
a = torch.randn(n, n, device="cuda", dtype=torch.float16)
b = torch.randn(n, n, device="cuda", dtype=torch.float16)
torch.matmul(a, b); torch.cuda.synchronize()
times = []
for _ in range(reps):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); torch.matmul(a, b); e.record(); torch.cuda.synchronize()
    times.append(s.elapsed_time(e))
times.sort(); ms = times[len(times) // 2]
print(json.dumps({"impl": "torch.matmul (cuBLAS)", "m=n=k": n, "dtype": "f16->f16 (f32 accumulate)",
                  "median_ms": round(ms, 3), "tflops": round(2 * n**3 / ms / 1e9, 1), "repeats": reps}))
