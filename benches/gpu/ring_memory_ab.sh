#!/usr/bin/env bash
# One device call: the sharded path's memory before and after running owned segments pair by
# pair (session 9), same machine: uneven shards (every pair sharded), 8,388,606 tokens, bf16,
# forward+backward, one timed call each. Expects .device-bin/ring(.gz) (new) and
# .device-bin/ring_old(.gz) (built from commit 061307a).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for f in .device-bin/*.gz; do gunzip -f "$f"; done; chmod +x .device-bin/*
export NCCL_NVLS_ENABLE=0 CUBECL_AUTOTUNE_LEVEL=minimal RUST_LOG=warn
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
for bin in ring_old ring; do
  echo "== $bin"
  timeout 200 ./.device-bin/$bin --launch 2 --seq 8388606 --dtype bf16 --backward --warmup 0 --repeats 1 > "$OUT/$bin.txt" 2>&1; echo "rc=$?"
  pkill -x $bin 2>/dev/null; sleep 1
  grep -E '^\{' "$OUT/$bin.txt" | python3 -c "
import json,sys
for l in sys.stdin:
    d=json.loads(l); print(d['rank'], d['pass'], d['median_ms'], 'ms', d['peak_mb'], 'MB')"
  grep -vE '^\{' "$OUT/$bin.txt" | grep -m3 -iE "allocate|panicked|error" | cut -c1-200
done
