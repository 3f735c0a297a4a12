#!/usr/bin/env bash
# Builds the CUDA binaries the device stages run (benches/gpu/tensor_core_run.sh) and packs them
# into .device-bin (git-ignored; name it in the device call's `carry`), stripped and gzipped to
# stay under the 64 MiB a call carries. Runs here, not on the device machine (it has no Rust).
# Usage: benches/gpu/package_device_bin.sh [--keep-prev]
#   --keep-prev keeps the fused_bench already packed as fused_bench_prev.gz (for the ab stages).
# fused_bench is the default build (published crates' behaviour); fused_bench_nvrtc the same with
# the opt-in `nvrtc-options` feature (per-kernel NVRTC options through the patched cubecl-cuda);
# bad_input_probe what bad input does to a process (examples/bad_input_probe.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
K=dilated-attention-kernels
cargo build --release -p $K --features test-cuda,nvrtc-options --example fused_bench
mkdir -p .device-bin
cp target/release/examples/fused_bench .device-bin/fused_bench_nvrtc
cargo build --release -p $K --features test-cuda --example fused_bench --example bad_input_probe
LOG=$(mktemp)
cargo test --release -p $K --features test-cuda --test fused_matches_oracle --test backend_suite --no-run 2>&1 | tee "$LOG"
if [[ ${1:-} == --keep-prev && -e .device-bin/fused_bench.gz ]]; then
  mv .device-bin/fused_bench.gz .device-bin/fused_bench_prev.gz
fi
for b in fused_bench bad_input_probe; do cp target/release/examples/$b .device-bin/$b; done
for t in fused_matches_oracle backend_suite; do
  cp "$(grep -o "target/release/deps/$t-[0-9a-f]*" "$LOG" | tail -1)" .device-bin/$t
done
rm -f "$LOG"
for b in fused_bench fused_bench_nvrtc bad_input_probe fused_matches_oracle backend_suite; do
  strip .device-bin/$b && gzip -f .device-bin/$b
done
ls -la .device-bin
du -sh .device-bin
