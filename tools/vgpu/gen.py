#!/usr/bin/env python3
"""Turns one kernels/*.cu file into C++ for the virtual GPU's host build.

The kernel's own source, changed only where CUDA C++ has no C++ equivalent:
the shared header expanded as the backend does (src/kernels.rs,
`expand_common`); each inline PTX statement made a call of its emulation in
device.h (vgpu_ptx::<instruction>, from the PTX ISA); `__shared__` arrays put into the
`vgpu_smem` section (poisoned before every block); `extern __shared__` bound to
the launch's dynamic shared memory; each `extern "C" __global__` kernel made a
plain function and registered under its name with its parameter types.
Fails, naming what to update, on anything it does not know.

Usage: gen.py KERNEL.cu COMMON.cuh OUT.cpp
"""
import re
import sys


src_path, common_path, out_path = sys.argv[1:4]
s = open(src_path).read()
if '#include "common.cuh"' in s:
    s = s.replace('#include "common.cuh"', open(common_path).read())


def fail(msg):
    sys.exit(f"vgpu/gen.py: {src_path}: {msg}")




def split_top(text):
    """Splits `a, b(c, d), e` at the commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def translate_asm(m):
    """asm [volatile] ("instr ops" : outputs : inputs) -> vgpu_ptx::instr(ops)."""
    body = m.group(1)
    sections = body.split(":")
    template = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', sections[0]))
    operands = []
    for sec in sections[1:]:
        for op in split_top(sec):
            c = re.match(r'"([=+]?)(\w)"\s*\((.*)\)$', op, re.S)
            if not c:
                fail(f"cannot read asm operand `{op}`")
            operands.append(c.group(3).strip())
    instrs = [t.strip() for t in template.split(";") if t.strip()]
    if len(instrs) != 1:
        fail(f"asm with {len(instrs)} instructions: `{template}`")
    instr = instrs[0].split()[0]
    refs = re.findall(r"%(\d+)", instrs[0][len(instr):])
    args = ", ".join(operands[int(r)] for r in refs)
    return f"vgpu_ptx::{instr.replace('.', '_')}({args})"


s = re.sub(r"\basm\s*(?:volatile\s*)?\((.*?)\)\s*;", lambda m: translate_asm(m) + ";", s, flags=re.S)
# Which functions reach a barrier or a warp collective (directly or through
# a helper): their kernels run their threads as fibers, the others one thread
# after the other (much cheaper).
SYNC = r"__syncthreads|__syncwarp|__shfl|vgpu_ptx::ldmatrix|vgpu_ptx::mma"
bodies = {}
for m in re.finditer(r"(\w+)\s*\([^;{)]*(?:\([^)]*\)[^;{)]*)*\)\s*\{", s):
    name, depth, j = m.group(1), 0, m.end() - 1
    while True:
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                break
        j += 1
    if name not in ("if", "for", "while", "switch"):
        bodies[name] = s[m.end():j]
syncing = {n for n, b in bodies.items() if re.search(SYNC, b)}
changed = True
while changed:
    changed = False
    for n, b in bodies.items():
        # A call, with or without explicit template arguments (`f<float, false>(`).
        if n not in syncing and any(re.search(r"\b" + f + r"\s*(<[^;(){}]*>)?\s*\(", b) for f in syncing):
            syncing.add(n)
            changed = True
kernels = []


def kernel(m):
    kernels.append(m.group(2))
    return "static void " + m.group(2) + "("


s = re.sub(r'extern "C" __global__ void(\s+__launch_bounds__\([^)]*\))?\s+(\w+)\s*\(', kernel, s)
if not kernels:
    fail("no kernel found")
s = re.sub(r"extern __shared__ (\w+) (\w+)\[\];", r"\1* const \2 = (\1*)vgpu::dynamic_shared();", s)
s = s.replace("__shared__ __align__(16)", "alignas(16) static VGPU_SHARED")
s = s.replace("__shared__", "static VGPU_SHARED")
s = s.replace("__device__ __forceinline__", "static inline")
s = s.replace("__device__", "static")
s = s.replace("__restrict__", "__restrict")
s = re.sub(r"#pragma unroll.*", "", s)
for k in kernels:
    if k not in bodies:
        fail(f"cannot find the body of kernel {k}")
reg = "".join(f"VGPU_KERNEL({k}, {'true' if k in syncing else 'false'})\n" for k in kernels)
with open(out_path, "w") as f:
    f.write(f'#include "device.h"\n{s}\n{reg}')
