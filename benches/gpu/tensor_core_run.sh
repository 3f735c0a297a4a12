#!/usr/bin/env bash
# Device call for the tensor-core forward (issue 3): its CUDA tests, then the harness with the
# tensor-core variant against the portable one (DILATED_ATTENTION_KERNEL=portable) and PyTorch.
# Expects .device-bin/{backend_suite,fused_matches_oracle,fused_bench,bad_input_probe,...}(.gz),
# built and packed by benches/gpu/package_device_bin.sh. Usage: benches/gpu/tensor_core_run.sh [bad_input|tests|suite_parallel|atomic_dq|quick|submit_ab|backward_ab|tf32|breakdown|tf32bench|f32options|suite|ordered|hilbert_ab|hilbert|vulkan_diag|ncu_order|vulkan|bench|table|backward|mma|ncu|ab|sass|final|baseline]...
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in .device-bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .device-bin/* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
B=./.device-bin/fused_bench
for STAGE in "$@"; do
case $STAGE in
tests)
  echo "== tensor-core proptests (f16, bf16; head dims 16-128): about 6 minutes with 5 threads (TF32: the tf32 stage)"
  (cd crates/dilated-attention-kernels && timeout 420 ../../.device-bin/fused_matches_oracle tensor_core --skip tf32 --test-threads 5 --nocapture > "$OUT/tc_proptest.log" 2>&1; echo "rc=$?" >> "$OUT/tc_proptest.log")
  grep -E "^test |test result|minimal failing|panicked|rc=" "$OUT/tc_proptest.log" | head -40
  grep -E "rel L2" "$OUT/tc_proptest.log" | sort -t' ' -k5 -g | tail -4
  ;;
suite)
  echo "== full CUDA suites"
  (cd crates/dilated-attention-kernels && timeout 400 ../../.device-bin/fused_matches_oracle --test-threads 4 > "$OUT/proptest_all.log" 2>&1; echo "rc=$?" >> "$OUT/proptest_all.log")
  grep -E "^test |test result|minimal failing|rc=" "$OUT/proptest_all.log" | head -30
  timeout 200 ./.device-bin/backend_suite --test-threads 1 > "$OUT/backend_suite.log" 2>&1; echo "rc=$?" >> "$OUT/backend_suite.log"
  grep -E "^test |test result|rc=" "$OUT/backend_suite.log" | head -20
  ;;
ordered)
  echo "== along a sequence order: register-resident, cmma and portable kernels"
  for V in ${ORDERED_VARIANTS:-default cmma portable}; do
    (cd crates/dilated-attention-kernels && DILATED_ATTENTION_KERNEL=$V timeout 200 ../../.device-bin/fused_matches_oracle along_an_order --test-threads 2 --nocapture > "$OUT/ordered_$V.log" 2>&1; echo "rc=$?" >> "$OUT/ordered_$V.log")
    echo "-- $V"; grep -E "^test |test result|minimal failing|rc=" "$OUT/ordered_$V.log" | head -8
    grep -E "rel L2" "$OUT/ordered_$V.log" | sort -t' ' -k5 -g | tail -2
  done
  ;;
vulkan_diag)
  echo "== Vulkan: loader, driver files, one small run"
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  ls -la /usr/local/nvidia/share/vulkan/icd.d/ /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>&1 | head -20
  find / -name "*icd*.json" -not -path "/proc/*" 2>/dev/null | head
  ldconfig -p | grep -i -E "libvulkan|libGLX_nvidia|nvidia-glcore|libEGL_nvidia" | head
  for V in unset nvidia; do
    echo "-- VK_DRIVER_FILES=$V"
    if [ $V = unset ]; then unset VK_DRIVER_FILES; else export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; fi
    VK_LOADER_DEBUG=error,warn RUST_BACKTRACE=1 timeout 90 ./.device-bin/fused_bench_vulkan --seqs 8192 --dtypes f32 --modes longnet --passes fwd --repeats 1 --warmup 1 > "$OUT/vulkan_diag_$V.log" 2>&1; echo "rc=$?" >> "$OUT/vulkan_diag_$V.log"
    tail -25 "$OUT/vulkan_diag_$V.log"
  done
  ;;
ncu_order)
  echo "== Nsight Compute: the register-resident forward in raster order vs along the Hilbert order (256 x 256 grid, bf16)"
  NCU=/usr/local/cuda/bin/ncu
  S="--section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats --metrics launch__registers_per_thread,smsp__inst_executed.sum,l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct"
  # hilbert_bench's forward launches with these two implementations: plain, plain, hilbert, hilbert (warm-up), then rounds
  export HILBERT_BENCH_IMPLS=plain,hilbert
  timeout 150 $NCU --kernel-name regex:"forward" --launch-skip 1 --launch-count 1 $S ./.device-bin/hilbert_bench 256 > "$OUT/ncu_plain.txt" 2>&1
  timeout 150 $NCU --kernel-name regex:"forward" --launch-skip 3 --launch-count 1 $S ./.device-bin/hilbert_bench 256 > "$OUT/ncu_order.txt" 2>&1
  unset HILBERT_BENCH_IMPLS
  for f in "$OUT"/ncu_plain.txt "$OUT"/ncu_order.txt; do echo "-- $f"; grep -E "^  [a-z_]+.*\(|Duration|DRAM Thr|Compute \(SM\) Thr|Achieved Occ|Theoretical Occ|Registers Per|Block Limit Reg|Block Limit Shared|Warp Cycles Per Issued|launch__registers|smsp__inst_executed.sum|local_op_ld|local_op_st|dram__bytes_read|lts__t_sector_hit" "$f" | head -30; done
  ;;
vulkan)
  echo "== the same kernels through WGPU: SPIR-V on the NVIDIA Vulkan driver (fused_bench_vulkan) and CUDA, same shapes"
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  J="$OUT/vulkan_bench.jsonl"; : > "$J"
  timeout 150 ./.device-bin/fused_bench_vulkan --seqs 8192,32768 --dtypes f32 --modes head_grouped,longnet --passes fwd --repeats 3 --warmup 1 >> "$J" 2>&1; echo "vulkan f32 rc=$?"
  timeout 60 $B --seqs 8192,32768 --dtypes f32 --modes head_grouped,longnet --passes fwd --repeats 3 --warmup 1 >> "$J" 2>&1
  DILATED_ATTENTION_KERNEL=portable timeout 60 $B --seqs 8192,32768 --dtypes f16 --modes head_grouped,longnet --passes fwd --repeats 3 --warmup 1 >> "$J" 2>&1
  timeout 60 $B --seqs 8192,32768 --dtypes f16 --modes head_grouped,longnet --passes fwd --repeats 3 --warmup 1 >> "$J" 2>&1
  for V in portable default; do
    DILATED_ATTENTION_KERNEL=$V RUST_BACKTRACE=1 timeout 90 ./.device-bin/fused_bench_vulkan --seqs 8192,32768 --dtypes f16 --modes head_grouped,longnet --passes fwd --repeats 3 --warmup 1 > "$OUT/vulkan_f16_$V.log" 2>&1; echo "vulkan f16 $V rc=$?"
    grep '^{' "$OUT/vulkan_f16_$V.log" >> "$J"; grep -v '^{' "$OUT/vulkan_f16_$V.log" | tail -5
  done
  echo "-- the kernels against the oracle on Vulkan (f32 and f16 forward)"
  (cd crates/dilated-attention-kernels && timeout 150 ../../.device-bin/fused_matches_oracle_vulkan fused_output fused_f16 --test-threads 2 > "$OUT/vulkan_proptest.log" 2>&1; echo "rc=$?" >> "$OUT/vulkan_proptest.log")
  grep -E "^test |test result|minimal|rc=" "$OUT/vulkan_proptest.log" | head
  grep -c '^{' "$J"
  ;;
hilbert_ab)
  echo "== Hilbert forward: the previous kernels (.device-bin/hilbert_bench_prev) and the new ones, alternating processes"
  for i in 1 2; do
    for b in hilbert_bench_prev hilbert_bench; do
      [ -x ./.device-bin/$b ] || continue
      HILBERT_BENCH_IMPLS=${HILBERT_BENCH_IMPLS:-plain,hilbert,identity} timeout 150 ./.device-bin/$b ${HILBERT_SIDES:-256 512} 2>&1 | grep '"fwd"' | sed "s/^/$b /" | tee -a "$OUT/hilbert_ab.txt"
    done
  done
  ;;
hilbert)
  echo "== Hilbert order vs plain vs gathered (bf16, 8x64, LongNet pairs)"
  timeout 300 ./.device-bin/hilbert_bench 256 512 1024 2>&1 | tee "$OUT/hilbert_bench.jsonl"
  ;;
bench)
  echo "== harness: tensor-core vs portable, bf16 forward"
  timeout 200 $B --seqs 8192,32768,131072 --dtypes bf16 --modes head_grouped,longnet --passes fwd 2>&1 | tee "$OUT/tc_bench.jsonl"
  DILATED_ATTENTION_KERNEL=portable timeout 120 $B --seqs 8192,32768 --dtypes bf16 --modes head_grouped,longnet --passes fwd 2>&1 | tee -a "$OUT/tc_bench.jsonl"
  ;;
table)
  echo "== harness: the table's configs (tensor-core forward for bf16/f16; f32 takes the portable kernels)"
  J="$OUT/tc_table.jsonl"; : > "$J"
  timeout 150 $B --seqs 8192,32768,131072 --dtypes bf16,f16 --modes head_grouped,longnet --passes fwd >> "$J" 2>&1
  timeout 150 $B --seqs 8192,32768,131072 --dtypes bf16 --modes head_grouped,longnet --passes fwd_bwd >> "$J" 2>&1
  timeout 60 $B --seqs 8192,32768 --dtypes bf16 --modes head_grouped,longnet --passes fwd --causal >> "$J" 2>&1
  timeout 60 $B --seqs 4096 --batch 2 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd >> "$J" 2>&1
  timeout 120 $B --seqs 1048576 --dtypes bf16 --modes head_grouped,longnet --passes fwd --repeats 3 --warmup 1 >> "$J" 2>&1
  DILATED_ATTENTION_KERNEL=portable timeout 60 $B --seqs 8192,32768 --dtypes bf16 --modes head_grouped,longnet --passes fwd >> "$J" 2>&1
  echo "panics: $(grep -c panicked "$J")"; grep -c '^{' "$J"
  ;;
backward)
  echo "== harness: forward+backward on tensor cores (bf16, f16), the portable backward, PyTorch"
  J="$OUT/tc_backward.jsonl"; : > "$J"
  timeout 200 $B --seqs 8192,32768,131072 --dtypes bf16,f16 --modes head_grouped,longnet --passes fwd_bwd >> "$J" 2>&1
  timeout 60 $B --seqs 8192,32768 --dtypes bf16 --modes head_grouped,longnet --passes fwd_bwd --causal >> "$J" 2>&1
  timeout 60 $B --seqs 4096 --batch 2 --dtypes bf16 --modes head_grouped,longnet --passes fwd_bwd >> "$J" 2>&1
  timeout 150 $B --seqs 1048576 --dtypes bf16 --modes head_grouped,longnet --passes fwd_bwd --repeats 3 --warmup 1 >> "$J" 2>&1
  DILATED_ATTENTION_KERNEL=portable timeout 90 $B --seqs 8192,32768 --dtypes bf16 --modes head_grouped,longnet --passes fwd_bwd >> "$J" 2>&1
  echo "panics: $(grep -c panicked "$J")"; grep -c '^{' "$J"
  P="python3 benches/pytorch/dilated_baseline.py"
  K="$OUT/tc_backward_pytorch.jsonl"; : > "$K"
  timeout 150 $P --seqs 8192,32768,131072 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd_bwd --repeats 5 >> "$K" 2>&1
  timeout 60 $P --seqs 8192,32768 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd_bwd --causal --repeats 5 >> "$K" 2>&1
  timeout 60 $P --seqs 4096 --batch 2 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd_bwd --repeats 5 >> "$K" 2>&1
  timeout 150 $P --seqs 1048576 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd_bwd --repeats 3 >> "$K" 2>&1
  grep -c '^{' "$K"
  ;;
mma)
  echo "== register-resident forward (mma.sync): proptests with it, then with the cmma forward"
  (cd crates/dilated-attention-kernels && timeout 240 ../../.device-bin/fused_matches_oracle tensor_core --test-threads 2 --nocapture > "$OUT/mma_proptest.log" 2>&1; echo "rc=$?" >> "$OUT/mma_proptest.log")
  grep -E "^test |test result|minimal failing|panicked|rc=" "$OUT/mma_proptest.log" | head -20
  (cd crates/dilated-attention-kernels && DILATED_ATTENTION_KERNEL=cmma timeout 120 ../../.device-bin/fused_matches_oracle tensor_core_ --test-threads 2 --nocapture --skip gradients > "$OUT/cmma_proptest.log" 2>&1; echo "rc=$?" >> "$OUT/cmma_proptest.log")
  grep -E "^test |test result|minimal failing|rc=" "$OUT/cmma_proptest.log" | head -10
  J="$OUT/mma_bench.jsonl"; : > "$J"
  timeout 120 $B --seqs 8192,32768,131072 --dtypes bf16,f16 --modes head_grouped,longnet --passes fwd >> "$J" 2>&1
  DILATED_ATTENTION_KERNEL=cmma timeout 90 $B --seqs 8192,32768,131072 --dtypes bf16 --modes head_grouped,longnet --passes fwd >> "$J" 2>&1
  timeout 90 $B --seqs 1048576 --dtypes bf16 --modes head_grouped,longnet --passes fwd --repeats 3 --warmup 1 >> "$J" 2>&1
  timeout 60 $B --seqs 8192,32768 --dtypes bf16 --modes head_grouped,longnet --passes fwd --causal >> "$J" 2>&1
  echo "panics: $(grep -c panicked "$J")"; grep -c '^{' "$J"
  P="python3 benches/pytorch/dilated_baseline.py"
  K="$OUT/mma_pytorch.jsonl"; : > "$K"
  timeout 150 $P --seqs 8192,32768,131072 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd --repeats 5 >> "$K" 2>&1
  timeout 100 $P --seqs 1048576 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd --repeats 3 >> "$K" 2>&1
  grep -c '^{' "$K"
  ;;
ncu)
  echo "== Nsight Compute: the forward kernels (register-resident, cmma) and the backward kernels, head-grouped 32K bf16"
  NCU=/usr/local/cuda/bin/ncu
  S="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats"
  timeout 150 $NCU --kernel-name regex:"forward" --launch-skip 2 --launch-count 1 $S $B --seqs 32768 --dtypes bf16 --modes head_grouped --passes fwd --repeats 1 --warmup 2 > "$OUT/ncu_mma.txt" 2>&1
  DILATED_ATTENTION_KERNEL=cmma timeout 150 $NCU --kernel-name regex:"forward" --launch-skip 2 --launch-count 1 $S $B --seqs 32768 --dtypes bf16 --modes head_grouped --passes fwd --repeats 1 --warmup 2 > "$OUT/ncu_cmma.txt" 2>&1
  timeout 150 $NCU --kernel-name regex:"backward|delta" --launch-skip 3 --launch-count 3 $S $B --seqs 32768 --dtypes bf16 --modes head_grouped --passes fwd_bwd --repeats 1 --warmup 1 > "$OUT/ncu_backward.txt" 2>&1
  M='--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
  timeout 100 $NCU --kernel-name regex:"forward" --launch-skip 2 --launch-count 1 $M $B --seqs 32768 --dtypes bf16 --modes head_grouped --passes fwd --repeats 1 --warmup 2 > "$OUT/ncu_stalls_forward.txt" 2>&1
  timeout 100 $NCU --kernel-name regex:"key_value" --launch-skip 1 --launch-count 1 $M $B --seqs 32768 --dtypes bf16 --modes head_grouped --passes fwd_bwd --repeats 1 --warmup 1 > "$OUT/ncu_stalls_key_value.txt" 2>&1
  for f in "$OUT"/ncu_stalls_*.txt; do echo "-- $f"; grep -E "stalled" "$f" | sort -k3 -g -r | head -8; done
  for f in "$OUT"/ncu_[mcb]*.txt; do echo "-- $f"; grep -E "^  [a-z_]+.*\(|Duration|Registers Per|Theoretical Occ|Achieved Occ|Compute \(SM\) Thr|Memory Thr|Block Limit Reg|Block Limit Shared|Dynamic Shared|Static Shared" "$f" | head -40; done
  ;;
ab)
  echo "== builds against each other (AB_VARIANTS, default: the previous fused_bench and this one), alternating processes, same inputs, AB_ROUNDS rounds"
  J="$OUT/ab.jsonl"; : > "$J"
  for i in $(seq 1 ${AB_ROUNDS:-2}); do
    # AB_VARIANTS: binary[:environment setting], e.g. fused_bench:DILATED_ATTENTION_NVRTC=none
    for V in ${AB_VARIANTS:-fused_bench_prev fused_bench}; do
      BIN=${V%%:*}; SET=""; [ "$BIN" != "$V" ] && SET=${V#*:}
      env $SET timeout 120 ./.device-bin/$BIN --seqs 8192,32768,131072 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 5 --warmup 2 | sed "s/^{/{\"binary\":\"$V\",\"round\":$i,/" >> "$J"
      env $SET timeout 120 ./.device-bin/$BIN --seqs 1048576 --dtypes bf16 --modes head_grouped,longnet --passes ${AB_LONG_PASSES:-fwd} --repeats 3 --warmup 1 | sed "s/^{/{\"binary\":\"$V\",\"round\":$i,/" >> "$J"
    done
  done
  grep -c '^{' "$J"
  ;;
tf32)
  echo "== the TF32 kernels (f32 inputs, allow_tf32): their proptests, then f32 and tf32 against PyTorch f32 in one call"
  (cd crates/dilated-attention-kernels && timeout 400 ../../.device-bin/fused_matches_oracle tensor_core_tf32 tensor_core_f32 --test-threads 4 --nocapture > "$OUT/tf32_proptest.log" 2>&1; echo "rc=$?" >> "$OUT/tf32_proptest.log")
  grep -E "^test |test result|minimal failing|panicked|rc=" "$OUT/tf32_proptest.log" | head -20
  grep -E "rel L2" "$OUT/tf32_proptest.log" | sort -t' ' -k5 -g | tail -3
  ;;
tf32bench)
  echo "== f32 (split TF32), tf32 (allow_tf32) and the portable f32 kernels against PyTorch f32 in one call"
  J="$OUT/tf32_ours.jsonl"; : > "$J"
  timeout 150 $B --seqs 8192,32768,131072 --dtypes f32,tf32 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 5 --warmup 2 >> "$J" 2>&1
  [ "${TF32BENCH_PORTABLE:-1}" = 1 ] && DILATED_ATTENTION_KERNEL=portable timeout 100 $B --seqs 32768,131072 --dtypes f32 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 3 --warmup 1 | sed 's/"dtype":"f32"/"dtype":"f32_portable"/' >> "$J" 2>&1
  timeout 90 $B --seqs 1048576 --dtypes f32,tf32 --modes head_grouped,longnet --passes fwd --repeats 3 --warmup 1 >> "$J" 2>&1
  echo "panics: $(grep -c panicked "$J")"; grep -c '^{' "$J"
  K="$OUT/tf32_pytorch.jsonl"; : > "$K"
  timeout 150 python3 benches/pytorch/dilated_baseline.py --seqs 8192,32768,131072 --dtypes float32 --impls head_grouped,longnet --passes fwd,fwd_bwd --repeats 5 >> "$K" 2>&1
  grep -c '^{' "$K"
  ;;
f32options)
  echo "== f32 (3xTF32) and tf32: the compiler options by default against --ftz only (no 4-blocks register cap), alternating processes"
  J="$OUT/f32_options.jsonl"; : > "$J"
  for i in 1 2; do
    for SET in DILATED_ATTENTION_NVRTC=ftz,blocks4 DILATED_ATTENTION_NVRTC=ftz; do
      env $SET timeout 100 $B --seqs 32768,131072 --dtypes f32,tf32 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 3 --warmup 1 | sed "s/^{/{\"binary\":\"$SET\",\"round\":$i,/" >> "$J"
    done
  done
  grep -c '^{' "$J"
  ;;
sass)
  echo "== the register-resident forward's machine code: instruction mix and per-instruction counts (head-grouped 32K bf16)"
  # SASS_TAG names this run's files (for runs under different environment settings).
  T=${SASS_TAG:-forward}
  NCU=/usr/local/cuda/bin/ncu
  CUBECL_DEBUG_LOG="$OUT/cubecl_source_$T.log" timeout 60 $B --seqs 32768 --dtypes bf16 --modes head_grouped --passes fwd --repeats 1 --warmup 0 > /dev/null 2>&1
  timeout 200 $NCU --kernel-name regex:"forward_mma" --launch-skip 1 --launch-count 1 --section InstructionStats --section SourceCounters --section WarpStateStats --section SpeedOfLight --import-source no -o "$OUT/$T" $B --seqs 32768 --dtypes bf16 --modes head_grouped --passes fwd --repeats 1 --warmup 1 > "$OUT/ncu_run_$T.txt" 2>&1
  $NCU --import "$OUT/$T.ncu-rep" --page details > "$OUT/ncu_details_$T.txt" 2>&1
  $NCU --import "$OUT/$T.ncu-rep" --page source --csv --print-source sass > "$OUT/${T}_sass.csv" 2>&1
  rm -f "$OUT/$T.ncu-rep"
  python3 benches/gpu/sass_histogram.py "$OUT/${T}_sass.csv" | head -24
  gzip -f "$OUT/${T}_sass.csv" "$OUT/cubecl_source_$T.log"
  grep -E "Duration|Warp Cycles Per Issued" "$OUT/ncu_details_$T.txt" | head
  ;;
quick)
  echo "== a few cases of each CUDA proptest named in QUICK_TESTS (PROPTEST_CASES, default 6), to fit one call"
  (cd crates/dilated-attention-kernels && PROPTEST_CASES=${PROPTEST_CASES:-6} timeout ${QUICK_TIMEOUT:-200} ../../.device-bin/fused_matches_oracle ${QUICK_TESTS:-tensor_core_bf16_gradients tensor_core_f16_gradients tensor_core_f32 tensor_core_tf32_gradients fused_gradients tensor_core_along_an_order} --test-threads 6 --nocapture > "$OUT/quick_proptest.log" 2>&1; echo "rc=$?" >> "$OUT/quick_proptest.log")
  grep -E "^test |test result|minimal failing|panicked|rc=" "$OUT/quick_proptest.log" | grep -v "running for over" | head -20
  ;;
backward_ab)
  echo "== forward+backward, the previous kernels (.device-bin/fused_bench_prev) and the new ones alternating, then PyTorch, one call"
  J="$OUT/backward_ab.jsonl"; : > "$J"
  for i in 1 2; do
    for V in fused_bench_prev fused_bench; do
      timeout 100 ./.device-bin/$V --seqs 32768,131072 --dtypes bf16 --modes head_grouped,longnet --passes fwd_bwd --repeats 5 --warmup 2 | sed "s/^{/{\"binary\":\"$V\",\"round\":$i,/" >> "$J"
    done
  done
  grep -c '^{' "$J"
  timeout 100 python3 benches/pytorch/dilated_baseline.py --seqs 32768,131072 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd_bwd --repeats 5 > "$OUT/backward_ab_pytorch.jsonl" 2>&1
  grep -c '^{' "$OUT/backward_ab_pytorch.jsonl"
  ;;
breakdown)
  echo "== where a call's time goes: each kernel's duration under Nsight Compute (the image has no Nsight Systems), bf16 (BREAKDOWN_SEQS, BREAKDOWN_PASS, BREAKDOWN_MODES)"
  for M in ${BREAKDOWN_MODES:-head_grouped longnet}; do
    for SEQ in ${BREAKDOWN_SEQS:-131072}; do
      timeout 150 /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum --kernel-name regex:"dilated|delta" --launch-count 8 $B --seqs $SEQ --dtypes bf16 --modes $M --passes ${BREAKDOWN_PASS:-fwd_bwd} --repeats 1 --warmup 0 >> "$OUT/kernels_$M.csv" 2>&1
    done
    echo "-- $M"; grep -v "^==PROF==" "$OUT/kernels_$M.csv" | grep -E "dilated|delta|gpu__time" | cut -c1-220 | head -40
  done
  ;;
atomic_dq)
  echo "== what a one-kernel backward's f32 dQ atomics would cost: Triton, the fused backward's add pattern, head-grouped and LongNet (benches/gpu/atomic_dq_probe.py)"
  timeout 300 python3 benches/gpu/atomic_dq_probe.py ${ATOMIC_ARGS:-} | tee "$OUT/atomic_dq.jsonl"
  ;;
bad_input)
  echo "== bad input through the public API on the default Cuda backend, each case followed by a valid call (examples/bad_input_probe.rs)"
  timeout 240 ./.device-bin/bad_input_probe > "$OUT/bad_input.jsonl" 2> "$OUT/bad_input.stderr"; echo "rc=$?" >> "$OUT/bad_input.jsonl"
  cat "$OUT/bad_input.jsonl"
  ;;
suite_parallel)
  echo "== every CUDA test in its own process, all at once (SUITE_TIMEOUT, PROPTEST_CASES; SUITE_FILTER, a grep -E pattern on test names): one process's tests share one CubeCL device thread, which also compiles, so a single process runs them one after another"
  L=/tmp/suite_logs; rm -rf $L; mkdir -p $L
  for BIN in fused_matches_oracle backend_suite; do
    for T in $(./.device-bin/$BIN --list 2>/dev/null | grep ': test$' | sed 's/: test$//' | grep -E "${SUITE_FILTER:-.}"); do
      (cd crates/dilated-attention-kernels && timeout ${SUITE_TIMEOUT:-500} ../../.device-bin/$BIN --exact $T --nocapture > $L/${BIN}_$T.log 2>&1; echo "rc=$?" >> $L/${BIN}_$T.log) &
    done
  done
  wait
  ls $L/*.log > /dev/null 2>&1 || { echo "no test ran (is .device-bin complete?)"; exit 1; }
  for f in $L/*.log; do echo "-- $(basename $f .log): $(grep -c 'rel L2\|relative L2' $f) checks, $(grep -E '^test .*(ok|FAILED)|minimal failing|rc=' $f | tr '\n' ' ')"; done | tee "$OUT/suite_parallel.txt"
  tail -n +1 $L/*.log | gzip > "$OUT/suite_parallel_logs.gz"
  ;;
submit_ab)
  echo "== when launches are submitted (SUBMIT_MODES, default background eager lazy; DILATED_ATTENTION_SUBMIT), SUBMIT_ROUNDS rounds (default 1) of alternating processes, then PyTorch: the table's configs, bf16; submit_probe on CUDA"
  J="$OUT/submit_ab.jsonl"; : > "$J"; : > "$OUT/call_overhead.jsonl"; : > "$OUT/submit_probe.jsonl"
  for i in $(seq 1 ${SUBMIT_ROUNDS:-1}); do
    for D in ${SUBMIT_MODES:-background eager lazy}; do
      TAG="s/^{/{\"submit\":\"$D\",\"round\":$i,/"
      DILATED_ATTENTION_SUBMIT=$D timeout 60 ./.device-bin/call_overhead --seqs 64,8192 --repeats 30 --burst 50 | sed "$TAG" >> "$OUT/call_overhead.jsonl"
      DILATED_ATTENTION_SUBMIT=$D timeout 100 $B --seqs 8192,32768,131072 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 7 --warmup 2 | sed "$TAG" >> "$J"
      DILATED_ATTENTION_SUBMIT=$D timeout 40 $B --seqs 4096 --batch 2 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 7 --warmup 2 | sed "$TAG" >> "$J"
      [ -x ./.device-bin/submit_probe ] && DILATED_ATTENTION_SUBMIT=$D timeout 30 ./.device-bin/submit_probe --seq 131072 --wait-ms 200 | sed "s/^{/{\"process_round\":$i,/" >> "$OUT/submit_probe.jsonl"
    done
  done
  DILATED_ATTENTION_SUBMIT=background timeout 120 $B --seqs 1048576 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 3 --warmup 1 | sed "s/^{/{\"submit\":\"background\",\"round\":1,/" >> "$J"
  echo "ours: $(grep -c '^{' "$J") lines; call_overhead: $(grep -c '^{' "$OUT/call_overhead.jsonl")"
  P="python3 benches/pytorch/dilated_baseline.py"
  K="$OUT/submit_pytorch.jsonl"; : > "$K"
  timeout 120 $P --seqs 8192,32768,131072 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd,fwd_bwd --repeats 7 >> "$K" 2>&1
  timeout 40 $P --seqs 4096 --batch 2 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd,fwd_bwd --repeats 7 >> "$K" 2>&1
  timeout 120 $P --seqs 1048576 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd,fwd_bwd --repeats 3 >> "$K" 2>&1
  grep -c '^{' "$K"
  ;;
table10)
  echo "== the issue's table at this code: ours then PyTorch in one call (forward and forward+backward, bf16)"
  J="$OUT/table_ours.jsonl"; : > "$J"
  timeout 100 $B --seqs 8192,32768,131072 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 7 --warmup 2 >> "$J" 2>&1
  timeout 120 $B --seqs 1048576 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 3 --warmup 1 >> "$J" 2>&1
  timeout 40 $B --seqs 4096 --batch 2 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 7 --warmup 2 >> "$J" 2>&1
  echo "panics: $(grep -c panicked "$J")"; grep -c '^{' "$J"
  P="python3 benches/pytorch/dilated_baseline.py"
  K="$OUT/table_pytorch.jsonl"; : > "$K"
  timeout 120 $P --seqs 8192,32768,131072 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd,fwd_bwd --repeats 7 >> "$K" 2>&1
  timeout 120 $P --seqs 1048576 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd,fwd_bwd --repeats 3 >> "$K" 2>&1
  timeout 40 $P --seqs 4096 --batch 2 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd,fwd_bwd --repeats 7 >> "$K" 2>&1
  grep -c '^{' "$K"
  ;;
final)
  echo "== the session's table: forward (register-resident and cmma) and forward+backward, ours and PyTorch in one call"
  J="$OUT/final_ours.jsonl"; : > "$J"
  timeout 100 $B --seqs 8192,32768,131072 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd >> "$J" 2>&1
  DILATED_ATTENTION_KERNEL=cmma timeout 60 $B --seqs 8192,32768,131072 --dtypes bf16 --modes head_grouped,longnet --passes fwd >> "$J" 2>&1
  timeout 120 $B --seqs 1048576 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd --repeats 3 --warmup 1 >> "$J" 2>&1
  timeout 40 $B --seqs 4096 --batch 2 --dtypes bf16 --modes head_grouped,longnet --passes fwd,fwd_bwd >> "$J" 2>&1
  echo "panics: $(grep -c panicked "$J")"; grep -c '^{' "$J"
  P="python3 benches/pytorch/dilated_baseline.py"
  K="$OUT/final_pytorch.jsonl"; : > "$K"
  timeout 120 $P --seqs 8192,32768,131072 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd,fwd_bwd --repeats 5 >> "$K" 2>&1
  timeout 120 $P --seqs 1048576 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd,fwd_bwd --repeats 3 >> "$K" 2>&1
  timeout 40 $P --seqs 4096 --batch 2 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd,fwd_bwd --repeats 5 >> "$K" 2>&1
  grep -c '^{' "$K"
  ;;
baseline)
  echo "== PyTorch baselines for the table"
  P="python3 benches/pytorch/dilated_baseline.py"
  J="$OUT/tc_pytorch.jsonl"; : > "$J"
  timeout 200 $P --seqs 8192,32768,131072 --dtypes bfloat16,float16 --passes fwd --repeats 5 >> "$J" 2>&1
  timeout 150 $P --seqs 8192,32768,131072 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd_bwd --repeats 5 >> "$J" 2>&1
  timeout 60 $P --seqs 8192,32768 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd --causal --repeats 5 >> "$J" 2>&1
  timeout 60 $P --seqs 4096 --batch 2 --dtypes bfloat16 --impls head_grouped,longnet --repeats 5 >> "$J" 2>&1
  timeout 120 $P --seqs 1048576 --dtypes bfloat16 --impls head_grouped,longnet --passes fwd --repeats 3 >> "$J" 2>&1
  grep -c '^{' "$J"
  ;;
esac
done
