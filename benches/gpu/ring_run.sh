#!/usr/bin/env bash
# One device call for the sequence-parallel ring over NCCL (issues 4 and 6): correctness of 1 and
# 2 GPUs against one GPU on the whole sequence, then scaling (n on one GPU, 2n on two).
# Expects .device-bin/ring(.gz), built here with
#   CUDARC_CUDA_VERSION=13000 cargo build --release -p ring_launcher --features cuda
# Usage: benches/gpu/ring_run.sh [check|headgrouped|fusedbwd|uneven|uneven_large|overlap_ab|aligned|scale|largest|diag|all]   (NCCL_NVLS_ENABLE=0 as the device notes ask)
# Each run is bounded by `timeout`; the scale stage can take up to 20 min in all, more than one
# device call allows: split it (the loop bounds) when the budget is short.
set -uo pipefail
OUT=${OUT:-/tmp/out}
STAGE=${1:-all}
mkdir -p "$OUT"
for f in .device-bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .device-bin/* 2>/dev/null
export NCCL_NVLS_ENABLE=0 CUBECL_AUTOTUNE_LEVEL=minimal RUST_LOG=${RUST_LOG:-warn}
R=./.device-bin/ring
# `timeout` stops the launcher but not its rank processes: clear them before and after each run,
# or a stuck run keeps the GPUs' memory and the next runs fail (seen on 2026-11-26).
clear_ranks() { pkill -x ring 2>/dev/null; sleep 1; }
clear_ranks
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m | tee -a "$OUT/gpu.txt"
GPUS=$(nvidia-smi -L | wc -l)
if [[ $STAGE == check || $STAGE == all ]]; then
  echo "== check: NCCL world 1, then 2 GPUs; 32K tokens, a segment over both shards (sharded path)"
  $R --launch 1 --seq 32768 --segments 2048,seq --rates 1,16 --check --backward --repeats 1 --warmup 0 2>&1 | tee "$OUT/check.jsonl"
  if (( GPUS >= 2 )); then
    timeout 420 $R --launch 2 --seq 32768 --segments 2048,seq --rates 1,16 --suite --backward --repeats 1 --warmup 0 2>&1 | tee -a "$OUT/check.jsonl"
    echo "== check: LongNet pairs inside the shards (no communication, fused path), zigzag and causal"
    $R --launch 2 --seq 65536 --check --backward --dtype bf16 --repeats 1 --warmup 0 2>&1 | tee -a "$OUT/check.jsonl"
    $R --launch 2 --seq 65536 --segments 2048,4096,seq --rates 1,2,16 --zigzag --causal --check --backward --dtype bf16 --repeats 1 --warmup 0 2>&1 | tee -a "$OUT/check.jsonl"
  fi
fi
# each run: bounded, JSON lines kept, the first other lines (the first failure: CubeCL logs a
# failed device task as a warning) and the most repeated ones (a panicking rank prints thousands)
run() { timeout "$1" "${@:2}" > "$OUT/last.txt" 2>&1; echo "rc=$?"; clear_ranks
        grep -E '^\{' "$OUT/last.txt" | tee -a "$OUT/scale.jsonl"
        grep -vE '^\{' "$OUT/last.txt" | head -12 | cut -c1-400
        grep -vE '^\{' "$OUT/last.txt" | sort | uniq -c | sort -rn | head -5 | cut -c1-300; }
if [[ $STAGE == headgrouped ]]; then
  echo "== check: head-grouped, 32K, a pair over both GPUs, the other inside the shards; f32 and bf16 causal, forward and gradients"
  run 240 $R --launch 2 --seq 32768 --mode head-grouped --segments 2048,seq --rates 1,16 --check --backward --repeats 1 --warmup 0
  run 240 $R --launch 2 --seq 32768 --mode head-grouped --segments 2048,seq --rates 1,16 --causal --dtype bf16 --check --backward --repeats 1 --warmup 0
fi
if [[ $STAGE == fusedbwd ]]; then
  echo "== the sharded path's fused pieces, forward and backward, against one GPU: 32K, a pair over both GPUs"
  run 240 $R --launch 2 --seq 32768 --segments 2048,seq --rates 1,16 --dtype bf16 --causal --check --backward --warmup 1 --repeats 3
  run 240 $R --launch 2 --seq 32768 --segments 2048,seq --rates 1,16 --check --backward --warmup 1 --repeats 3
  run 240 $R --launch 2 --seq 32768 --mode head-grouped --segments 2048,seq --rates 1,16 --causal --dtype bf16 --check --backward --warmup 1 --repeats 3
  run 240 $R --launch 2 --seq 32768 --segments 2048,seq --rates 1,16 --zigzag --causal --dtype bf16 --check --backward --warmup 1 --repeats 3
fi
if [[ $STAGE == uneven ]]; then
  echo "== owned segments on the fused kernels: shards that do not line up with the segments (every pair sharded)"
  run 240 $R --launch 2 --seq 65534 --dtype bf16 --causal --check --backward --warmup 1 --repeats 3
  if ! grep -q forward_backward "$OUT/last.txt"; then
    echo "-- failed: again with CUDA_LAUNCH_BLOCKING=1, forward only, the first errors"
    CUDA_LAUNCH_BLOCKING=1 timeout 200 $R --launch 2 --seq 65534 --dtype bf16 --causal --check --repeats 1 --warmup 0 > "$OUT/blocking.txt" 2>&1
    grep -vE '^\{' "$OUT/blocking.txt" | grep -iE "error|panic|kernel|launch" | head -n 12 | cut -c1-400; grep -E '^\{' "$OUT/blocking.txt" | cut -c1-300; clear_ranks
  fi
  run 240 $R --launch 2 --seq 65534 --mode head-grouped --check --backward --warmup 1 --repeats 3
fi
if [[ $STAGE == uneven_large ]]; then
  echo "== uneven shards at scale: 4,194,303 rows per GPU (every pair sharded), then 6M"
  run 280 $R --launch 2 --seq 8388606 --dtype bf16 --backward --warmup 1 --repeats 2
  run 200 $R --launch 2 --seq 12000000 --dtype bf16 --warmup 1 --repeats 2
fi
if [[ $STAGE == overlap_ab ]]; then
  echo "== the forward's transfer/compute overlap, on and off, same machine: 32K, a pair over both GPUs"
  for v in "--dtype bf16 --causal" "--dtype f32"; do
    for o in "" "--no-overlap"; do
      run 150 $R --launch 2 --seq 32768 --segments 2048,seq --rates 1,16 $v $o --warmup 2 --repeats 7
    done
  done
fi
if [[ $STAGE == aligned ]]; then
  echo "== the largest sequences with shard-aligned segments (every shard a multiple of 8192 rows: no sharded path)"
  run 150 $R --single --device cuda --seq 8380416 --dtype bf16 --backward --repeats 1 --warmup 1
  run 200 $R --launch 2 --seq 16760832 --dtype bf16 --backward --repeats 1 --warmup 1
fi
if [[ $STAGE == largest ]]; then
  echo "== the largest forward on two GPUs (8,388,607 tokens each), with CubeCL's warnings"
  run 150 $R --launch 2 --seq 16777214 --dtype bf16 --repeats 1 --warmup 1
fi
if [[ $STAGE == scale || $STAGE == all ]]; then
  echo "== scale: pairs (2048,1),(4096,2),(8192,4), bf16; n on one GPU, 2n on two"
  for n in 1048576 4194304; do
    run 120 $R --single --device cuda --seq $n --dtype bf16 --backward --repeats 2 --warmup 1
    (( GPUS >= 2 )) && run 150 $R --launch 2 --seq $((2 * n)) --dtype bf16 --backward --repeats 2 --warmup 1
  done
  echo "== scale: the largest forward (32-bit addressing limit per GPU: n h d < 2^32)"
  run 120 $R --single --device cuda --seq 8388607 --dtype bf16 --repeats 1 --warmup 1
  (( GPUS >= 2 )) && run 150 $R --launch 2 --seq 16777214 --dtype bf16 --repeats 1 --warmup 1
  echo "== scale: plus a pair over the whole sequence (s / r = 2048 rows): the sharded path"
  run 200 $R --single --device cuda --seq 1048576 --segments 2048,4096,8192,seq --rates 1,2,4,512 --dtype bf16 --backward --repeats 2 --warmup 1
  (( GPUS >= 2 )) && run 200 $R --launch 2 --seq 2097152 --segments 2048,4096,8192,seq --rates 1,2,4,1024 --dtype bf16 --backward --repeats 2 --warmup 1
fi
if [[ $STAGE == suite8k ]]; then
  echo "== check at 8K tokens: f32/bf16 x LongNet/HeadGrouped x causal/not, a segment over both GPUs"
  timeout 500 $R --launch 2 --seq 8192 --segments 512,seq --rates 1,16 --suite --backward --repeats 1 --warmup 0 2>&1 | tee "$OUT/check8k.jsonl"
fi
if [[ $STAGE == diag ]]; then
  echo "== diag: the sharded path's owned segments and multi-head groups, 2 GPUs, f32 forward"
  for v in "--segments 3000 --rates 1" "--segments 3000 --rates 2" "--mode head-grouped --segments 512,seq --rates 1,16"; do
    echo "-- $v"
    timeout 150 $R --launch 2 --seq 8192 $v --check --repeats 1 --warmup 0 2>&1 | cut -c1-420 | grep -E "max_err|error|Error" | head -n 4
  done
  echo "-- head-grouped with CUBECL_DEBUG_LOG (kernel names only)"
  CUBECL_DEBUG_LOG=1 timeout 150 $R --launch 2 --seq 8192 --mode head-grouped --segments 512,seq --rates 1,16 --repeats 1 --warmup 0 > "$OUT/diag_log.txt" 2>&1
  grep -nE "__global__|error|Error" "$OUT/diag_log.txt" | tail -n 30
fi
