#!/usr/bin/env bash
# One device call: the ring crate's fused-block tests on burn's Cuda backend (feature test-cuda),
# then the uneven-shard test under compute-sanitizer (memcheck) to name a faulting kernel.
# Expects .device-bin/ringtests(.gz), built here with
#   CUDARC_CUDA_VERSION=13000 cargo test --release -p dilated-attention-ring --features test-cuda --test fused_blocks_on_wgpu --no-run
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for f in .device-bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .device-bin/*
T=./.device-bin/ringtests
export CUBECL_AUTOTUNE_LEVEL=minimal RUST_BACKTRACE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
echo "== plain"
timeout ${PLAIN_S:-240} $T --test-threads=1 ${FILTER:-} > "$OUT/plain.txt" 2>&1; echo "rc=$?"
grep -E "^test |panicked|test result|ILLEGAL|error" "$OUT/plain.txt" | head -40
if [[ ${SANITIZE:-1} == 1 ]]; then
  echo "== memcheck"
  CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  CUDA_LAUNCH_BLOCKING=1 timeout ${SAN_S:-300} $CS --tool memcheck --print-limit 30 --show-backtrace device \
    $T --test-threads=1 ${SAN_FILTER:-uneven_shards_at_scale} > "$OUT/memcheck.txt" 2>&1; echo "rc=$?"
  grep -E "Invalid|of size|at .*0x|by thread|Address|ERROR SUMMARY|test result|panicked" "$OUT/memcheck.txt" | head -60
fi
