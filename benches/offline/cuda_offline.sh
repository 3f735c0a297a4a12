#!/usr/bin/env bash
# CUDA kernel machine code with no GPU: NVRTC, ptxas and nvdisasm from NVIDIA's pip wheels, run on
# CubeCL-generated sources (captured on the GPU machine with CUBECL_DEBUG_LOG=FILE, e.g. by
# `benches/gpu/tensor_core_run.sh sass`), so that register counts, spills and the SASS
# instruction mix of a source (or of a hand-edited copy, to test an idea) cost no device time.
#
#   benches/offline/cuda_offline.sh setup                      # once: wheels into .cuda-offline/
#   benches/offline/cuda_offline.sh kernel LOG NAME OUT.cu     # one kernel's source from a log
#   benches/offline/cuda_offline.sh report SOURCE.cu           # registers, spills, SASS mix
#
# `NVRTC_EXTRA="--ftz=true"` (or `--maxrregcount=128`, ...) adds NVRTC options to `report`, for
# what CubeCL 0.10 itself cannot pass. ptxas and NVRTC here are CUDA 12.8 (the GPU machine's
# NVRTC is 13.0): register counts can differ by a few.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOOLS=${CUDA_OFFLINE_DIR:-$HERE/../../.cuda-offline}
case ${1:-} in
setup)
  mkdir -p "$TOOLS" && cd "$TOOLS"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 -d wheels \
    nvidia-cuda-nvrtc-cu12==12.8.93 nvidia-cuda-nvcc-cu12==12.8.93 nvidia-cuda-runtime-cu12==12.8.90 \
    nvidia-cuda-cccl-cu12==12.8.90 nvidia-cuda-nvdisasm==13.5.37
  unzip -o -q wheels/nvidia_cuda_nvrtc_cu12-*.whl -d nvrtc
  unzip -o -q wheels/nvidia_cuda_nvcc_cu12-*.whl -d nvcc
  for w in wheels/nvidia_cuda_runtime_cu12-*.whl wheels/nvidia_cuda_cccl_cu12-*.whl; do unzip -o -q "$w" -d headers; done
  unzip -o -q wheels/nvidia_cuda_nvdisasm-*.whl -d nvdisasm
  echo "tools in $TOOLS"
  ;;
kernel)
  python3 "$HERE/extract_kernel.py" "$2" "$3" "$4"
  ;;
report)
  SRC=$2; BASE=${SRC%.cu}
  python3 "$HERE/nvrtc_compile.py" "$TOOLS" "$SRC" "$BASE.ptx"
  "$TOOLS/nvcc/nvidia/cuda_nvcc/bin/ptxas" -arch=sm_90a -v "$BASE.ptx" -o "$BASE.cubin" 2>&1 | grep -E "registers|spill"
  "$TOOLS"/nvdisasm/nvidia/*/bin/nvdisasm -c "$BASE.cubin" 2>/dev/null > "$BASE.sass"
  python3 - "$BASE.sass" <<'PY'
import collections, re, sys
ops = collections.Counter()
for line in open(sys.argv[1]):
    m = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
    if m:
        ops[m.group(1)] += 1
hmma = sum(v for k, v in ops.items() if k.startswith("HMMA")) or 1
print(f"static SASS instructions {sum(ops.values())}, HMMA {hmma} (counts in the code, not executed)")
print(", ".join(f"{k} {v}" for k, v in ops.most_common(14)))
PY
  ;;
*)
  sed -n 2,14p "$0"; exit 2
  ;;
esac
