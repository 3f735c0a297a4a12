#!/usr/bin/env bash
# One device call: the kernels' suites (backend_suite, fused_matches_oracle) and the ring's
# fused-block suite on burn's Cuda backend (feature test-cuda), on one GPU.
# Expects .device-bin/{backend_suite,fused_oracle,ringtests}(.gz), built here with
#   CUDARC_CUDA_VERSION=13000 cargo test --release -p dilated-attention-kernels --features test-cuda --no-run
#   CUDARC_CUDA_VERSION=13000 cargo test --release -p dilated-attention-ring --features test-cuda --test fused_blocks_on_wgpu --no-run
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for f in .device-bin/*.gz; do gunzip -f "$f"; done; chmod +x .device-bin/*
export CUBECL_AUTOTUNE_LEVEL=minimal
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# one test at a time: tests on threads sharing one GPU gave wrong results (see docs/architecture.md)
for t in backend_suite fused_oracle ringtests; do
  echo "== $t"
  timeout ${SUITE_S:-170} ./.device-bin/$t --test-threads=1 > "$OUT/$t.txt" 2>&1; echo "rc=$?"
  grep -E "test result|FAILED|panicked at" "$OUT/$t.txt" | head -12 | cut -c1-300
done
