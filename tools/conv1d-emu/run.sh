#!/usr/bin/env bash
# Runs kernels/conv1d.cu on the CPU: the kernel's own source (conv1d_implicit_gemm
# and snake_beta_f32), compiled by g++ with ../flash-attention-emu/prelude.h
# standing in for CUDA (128 std::threads per block, std::barrier for
# __syncthreads, mma.sync m16n8k16 emulated from the PTX ISA fragment layouts,
# fp16 rounding by _Float16, and the inline-PTX helpers of kernels/common.cuh
# emulated) and conv_shims.h for the counted output, launched as src/backend/cuda/conv.rs launches it, against an f64 reference of
# the CPU twin's semantics (main.cpp): dilated convs over packed sequences with
# per-sequence zero padding, transposed convs (strides 2, 4, 8, checked against
# PyTorch's scatter form), fused SnakeBeta, bias, residual. Every output element
# must be written exactly once (counted); out-of-bounds or misaligned accesses
# abort (AddressSanitizer, UBSan alignment, an alignment check in __ldg). Two
# cases have element offsets past 2^31 (buffers of 8 GiB mapped but untouched,
# only the grid's last block rows run).
# Checks index math, padding, tiling and fragment layouts without a GPU; it
# cannot check the hardware's own semantics (the emulation encodes our reading
# of the manual) nor __sinf's error (computed as sinf here).
# Expected: rel L2 <= ~1e-6 for fp16-exact operands, ~3e-4 with fp16 rounding;
# a layout slip gives O(1). About a minute on 2 cores. mutants.sh shows it fails
# on broken copies of the kernel.
# Usage: run.sh [KERNEL_SOURCE [--first-failure]]  (default kernels/conv1d.cu;
# another path runs a modified copy, e.g. to check that a broken kernel fails;
# --first-failure stops at the first failing case).
# Needs g++ >= 12 (C++20 <barrier>, _Float16, -fsanitize) and python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:-$here/../../kernels/conv1d.cu}
if [ $# -gt 0 ]; then shift; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$src" "$work/kernel.inc" "$here/../../kernels/common.cuh" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
# As the backend does (src/kernels.rs, expand_common): the shared header in place of its include.
if '#include "common.cuh"' in s:
    s = s.replace('#include "common.cuh"', open(sys.argv[3]).read())

def sub(old, new):
    global s
    if old not in s:
        sys.exit(f"conv1d-emu: `{old}` not found in the kernel source; update run.sh")
    s = s.replace(old, new)

# The helpers made of inline PTX (common.cuh's) are replaced by prelude.h's emulations.
for head in ["__device__ __forceinline__ unsigned short f32_to_f16_rn(",
             "__device__ __forceinline__ float f16_to_f32(",
             "__device__ __forceinline__ unsigned pack_half2(",
             "__device__ __forceinline__ void mma_16816("]:
    if head not in s:
        sys.exit(f"conv1d-emu: `{head}` not found in the kernel source; update run.sh")
    i = s.index(head)
    j = s.index("\n}\n", i) + 3
    s = s[:i] + s[j:]
if "asm" in re.sub(r"//.*", "", s):
    sys.exit("conv1d-emu: inline PTX left in the kernel source; emulate it in prelude.h and strip it here")
n = len(re.findall(r'extern "C" __global__ void', s))
s = re.sub(r'extern "C" __global__ void(\s+__launch_bounds__\([^)]*\))?\s+', "void ", s)
if n != 2:
    sys.exit(f"conv1d-emu: expected 2 kernels, found {n}; update run.sh and main.cpp")
sub("float* __restrict__ out,", "EmuOut out,")
sub("__device__ __forceinline__", "static inline")
sub("__shared__ __align__(16)", "alignas(16) static")  # one block at a time
sub("__shared__", "static")
sub("__restrict__", "__restrict")
open(sys.argv[2], "w").write('#include "prelude.h"\n#include "conv_shims.h"\n' + s)
PY
cp "$here/../flash-attention-emu/prelude.h" "$here/conv_shims.h" "$here/main.cpp" "$work/"
g++ -std=c++20 -O2 -pthread -fno-strict-aliasing -fsanitize=address -fsanitize=alignment \
    -fno-sanitize-recover=all "$work/main.cpp" -o "$work/emu"
"$work/emu" "$@"
