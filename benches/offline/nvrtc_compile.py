#!/usr/bin/env python3
"""Compiles one CUDA kernel source, as CubeCL's CUDA runtime would, with no GPU: NVRTC with
cubecl-cuda 0.10's options (`--gpu-architecture=sm_90a`, the CUDA and CCCL include paths,
`-lineinfo`) into PTX. `NVRTC_EXTRA` adds options (e.g. `--ftz=true`) for experiments.

Usage: nvrtc_compile.py TOOLS_DIR SOURCE.cu OUT.ptx   (TOOLS_DIR from cuda_offline.sh setup)"""
import ctypes, os, sys

tools, source, out = sys.argv[1:4]
nvrtc = ctypes.CDLL(f"{tools}/nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc.so.12")
program = ctypes.c_void_p()
if nvrtc.nvrtcCreateProgram(ctypes.byref(program), open(source).read().encode(), b"kernel.cu", 0, None, None):
    sys.exit("nvrtcCreateProgram failed")
options = [
    b"--gpu-architecture=sm_90a",
    f"--include-path={tools}/headers/nvidia/cuda_runtime/include".encode(),
    f"--include-path={tools}/headers/nvidia/cuda_cccl/include".encode(),
    f"--include-path={tools}/nvcc/nvidia/cuda_nvcc/include".encode(),
    b"-lineinfo",
] + [o.encode() for o in os.environ.get("NVRTC_EXTRA", "").split()]
status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
size = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetProgramLog(program, log)
errors = [line for line in log.value.decode().splitlines() if "error" in line]
if status:
    sys.exit("nvrtc failed:\n" + "\n".join(errors[:20]))
nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
ptx = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetPTX(program, ptx)
open(out, "wb").write(ptx.value)
