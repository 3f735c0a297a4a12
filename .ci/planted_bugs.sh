#!/usr/bin/env bash
# Plants one bug at a time in a clean tree and checks that the suite meant to catch it fails
# (and that it passes again once the bug is removed). Not part of `.ci/run`: each bug rebuilds
# a test binary (the lavapipe ones take minutes). Usage: .ci/planted_bugs.sh [bug...]
#   scale   the portable forward kernel scales scores by 1.001 x scale   (lavapipe suites)
#   dk      the portable dK/dV kernel adds 1.001 x each dK term          (lavapipe suites)
#   ring    the ring's exchange sends values where keys go, and back    (ring suite, CPU)
#   inverse an order's inverse (Hilbert attention's way back) is the order (Hilbert suite, CPU)
set -uo pipefail
cd "$(dirname "$0")/.."
K=crates/dilated-attention-kernels/src/fused/portable
declare -A FILE PATTERN REPLACE TEST
FILE[scale]=$K/forward.rs
PATTERN[scale]='q\[i\] = f32::cast_from(query\[q_base + i \* query.stride(3)\]) \* scale;'
REPLACE[scale]='q[i] = f32::cast_from(query[q_base + i * query.stride(3)]) * scale * 1.001;'
TEST[scale]="cargo test -p dilated-attention-kernels --features test-wgpu --test backend_suite dispatch_output_and_lse"
FILE[dk]=$K/backward.rs
PATTERN[dk]='dk\[i\] += d_s \* query_smem\[j \* head_dim + i\];'
REPLACE[dk]='dk[i] += 1.001 * d_s * query_smem[j * head_dim + i];'
TEST[dk]="cargo test -p dilated-attention-kernels --features test-wgpu --test backend_suite dispatch_gradients"
FILE[ring]=crates/dilated-attention-ring/src/shard_exchange.rs
PATTERN[ring]='for t in \[key, value\] {'
REPLACE[ring]='for t in [value, key] {'
TEST[ring]="cargo test -p dilated-attention-ring --test ring_matches_single_device ring_forward_equals_one_device"
FILE[inverse]=crates/dilated-attention-core/src/sequence_order.rs
PATTERN[inverse]='            inverse\[token as usize\] = position;'
REPLACE[inverse]='            inverse[position] = token as usize;'
TEST[inverse]="cargo test -p dilated-attention-hilbert --test hilbert_matches_permuted_reference"
status=0
for bug in "${@:-scale dk ring inverse}"; do
  for b in $bug; do
    f=${FILE[$b]}
    grep -q "${PATTERN[$b]}" "$f" || { echo "$b: pattern not found in $f"; status=1; continue; }
    sed -i "s|${PATTERN[$b]}|${REPLACE[$b]}|" "$f"
    if ${TEST[$b]} > "/tmp/planted_$b.log" 2>&1; then
      echo "$b: NOT caught (${TEST[$b]} passed with the bug)"; status=1
    else
      echo "$b: caught: $(grep -m1 -E 'panicked at|minimal failing' -A1 "/tmp/planted_$b.log" | tail -1 | cut -c1-160)"
    fi
    git checkout -- "$f"
  done
done
exit $status
