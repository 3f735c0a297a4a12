#!/usr/bin/env python3
"""Writes the CUDA source of one kernel from a CubeCL compilation log (`CUBECL_DEBUG_LOG=FILE`
on a CUDA run; plain or gzipped) to OUT.cu: the first source block whose `__global__` line
names an entry point containing NAME.

Usage: extract_kernel.py LOG NAME OUT.cu"""
import gzip, sys

log, name, out = sys.argv[1:4]
text = (gzip.open if log.endswith(".gz") else open)(log, "rt").read()
at = text.find("__global__")
while at >= 0:
    line = text[at:text.find("\n", at)]
    if name in line:
        begin = text.rfind("```cpp", 0, at)
        end = text.index("```", at)
        open(out, "w").write(text[begin + len("```cpp\n"):end])
        sys.exit(0)
    at = text.find("__global__", at + 1)
sys.exit(f"no kernel whose entry point contains {name}")
