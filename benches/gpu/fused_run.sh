#!/usr/bin/env bash
# One device call for the fused kernels: the CUDA test suites (the kernels against the oracle),
# the fused harness and the PyTorch baselines on the same GPU.
# Expects .device-bin/{backend_suite,fused_matches_oracle,fused_bench}(.gz) built here:
#   cargo test --release -p dilated-attention-kernels --features test-cuda \
#     --test backend_suite --test fused_matches_oracle --no-run
#   cargo build --release -p dilated-attention-kernels --features test-cuda --example fused_bench
# Usage: benches/gpu/fused_run.sh [tests|bench|baseline|all]
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
STAGE=${1:-all}
mkdir -p "$OUT"
for f in .device-bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .device-bin/* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
if [[ $STAGE == tests || $STAGE == all ]]; then
  echo "== CUDA backend suite (fused kernels through Fusion<CubeBackend<Cuda>> and raw CubeBackend)"
  ./.device-bin/backend_suite --test-threads 1 2>&1 | tail -n 30 | tee "$OUT/backend_suite_cuda.log"
  echo "== CUDA kernel proptests (f32 fwd/grad, f16, bf16)"
  (cd crates/dilated-attention-kernels && ../../.device-bin/fused_matches_oracle --test-threads 4 --nocapture 2>&1 \
    | grep -E "rel L2|^test |test result|minimal failing|panicked" | tail -n 120) | tee "$OUT/fused_proptest_cuda.log"
fi
if [[ $STAGE == bench || $STAGE == all ]]; then
  echo "== fused harness"
  B=./.device-bin/fused_bench
  $B --seqs 8192,32768,131072 --dtypes bf16,f32 --modes head_grouped,longnet --passes fwd,fwd_bwd 2>&1 | tee "$OUT/fused_bench.jsonl"
  $B --seqs 4096 --batch 2 --dtypes bf16,f32 --modes head_grouped,longnet --passes fwd,fwd_bwd 2>&1 | tee -a "$OUT/fused_bench.jsonl"
  $B --seqs 1048576 --dtypes bf16 --modes head_grouped,longnet --passes fwd --repeats 3 --warmup 1 2>&1 | tee -a "$OUT/fused_bench.jsonl"
fi
if [[ $STAGE == baseline || $STAGE == all ]]; then
  echo "== PyTorch baselines"
  P="python3 benches/pytorch/dilated_baseline.py"
  $P --seqs 8192,32768,131072 --dtypes bfloat16,float32 --repeats 5 2>&1 | tee "$OUT/pytorch_baseline.jsonl"
  $P --seqs 4096 --batch 2 --dtypes bfloat16,float32 --impls head_grouped,longnet --repeats 5 2>&1 | tee -a "$OUT/pytorch_baseline.jsonl"
  $P --seqs 1048576 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd --repeats 3 2>&1 | tee -a "$OUT/pytorch_baseline.jsonl"
fi
