#!/usr/bin/env bash
# Runs kernels/flash_attention.cu on the CPU: the kernel's own source, compiled
# by g++ with prelude.h standing in for CUDA (128 std::threads per block,
# std::barrier for __syncthreads, warp collectives through exchange buffers;
# ldmatrix and mma.sync m16n8k16 emulated from the fragment layouts of the PTX
# ISA manual, fp16 rounding by _Float16), against an f64 reference (main.cpp)
# on packed batches with RoPE, grouped-query heads, odd lengths, an empty
# sequence and an empty key set. Checks the kernel's index math, masking,
# online softmax and RoPE convention without a GPU; it cannot check the
# hardware's own semantics (the emulation encodes our reading of the manual).
# Expected: rel L2 ~4e-4 per case (fp16 operands); a layout slip gives O(1).
# Needs g++ >= 12 (C++20 <barrier>, _Float16) and python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$here/../../kernels/flash_attention.cu" "$work/kernel.inc" "$here/../../kernels/common.cuh" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
# As the backend does (src/kernels.rs, expand_common): the shared header in place of its include.
if '#include "common.cuh"' in s:
    s = s.replace('#include "common.cuh"', open(sys.argv[3]).read())
# The helpers made of inline PTX (the kernel's own and common.cuh's) are replaced by prelude.h's emulations.
for head in ["__device__ __forceinline__ unsigned short f32_to_f16_rn(", "__device__ __forceinline__ float f16_to_f32(",
             "__device__ __forceinline__ unsigned pack_half2(", "__device__ __forceinline__ void mma_16816(",
             "__device__ __forceinline__ unsigned smem_addr(", "__device__ __forceinline__ void ldmatrix_x4(",
             "__device__ __forceinline__ void ldmatrix_x4_trans("]:
    if head not in s:
        sys.exit(f"flash-attention-emu: `{head}` not found in the kernel source; update run.sh")
    i = s.index(head)
    j = s.index("\n}\n", i) + 3
    s = s[:i] + s[j:]
if "asm" in re.sub(r"//.*", "", s):
    sys.exit("flash-attention-emu: inline PTX left in the kernel source; emulate it in prelude.h and strip it here")
s = s.replace('extern "C" __global__ void __launch_bounds__(FA_THREADS, 4)', "void")
s = s.replace("__device__ __forceinline__", "static inline")
s = s.replace("__shared__ __align__(16)", "alignas(16) static")  # one block at a time
s = s.replace("__restrict__", "__restrict")
open(sys.argv[2], "w").write('#include "prelude.h"\n' + s)
PY
cp "$here/prelude.h" "$here/main.cpp" "$work/"
g++ -std=c++20 -O2 -pthread "$work/main.cpp" -o "$work/emu"
"$work/emu"
