#!/usr/bin/env bash
# One device call: the CUDA backend suite (reference path through Fusion<CubeBackend<Cuda>>),
# the quickstart on CUDA, and the PyTorch baselines, on the same GPU.
# Expects .device-bin/{backend_suite,quickstart} built here:
#   cargo test --release -p dilated-attention-kernels --features test-cuda --test backend_suite --no-run
#   cargo build --release -p quickstart --features cuda
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in .device-bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .device-bin/* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
echo "== CUDA backend suite"
./.device-bin/backend_suite --test-threads 1 2>&1 | tail -n 25 | tee "$OUT/backend_suite_cuda.log"
echo "== quickstart on CUDA (reference path)"
for seq in 16384 131072; do
  ./.device-bin/quickstart --seq $seq --embed-dim 512 --heads 8 --repeats 5 2>&1 | tee -a "$OUT/quickstart_cuda.log"
done
echo "== PyTorch baselines"
python3 benches/pytorch/dilated_baseline.py --seqs 8192,32768,131072 --dtypes bfloat16,float32 \
  2>&1 | tee "$OUT/pytorch_baseline.jsonl"
python3 benches/pytorch/dilated_baseline.py --seqs 1048576 --dtypes bfloat16 --impls head_grouped,longnet \
  --repeats 5 2>&1 | tee -a "$OUT/pytorch_baseline.jsonl"
