#!/usr/bin/env bash
# The CUDA checks, on a GPU machine that has the NVIDIA driver and the CUDA
# libraries but no Rust. Build the binaries elsewhere first
# (tools/build-device-bin.sh -> tools/device-bin/), bring the working tree and
# tools/device-bin/ to the GPU machine, then run this from anywhere.
#
# Runs, each with its own time limit, logging to $OUT (default
# /tmp/lova-device-check):
#   1. GPU name, driver and CUDA versions (nvidia-smi; the backend prints its own view)
#   2. lova-fast kernels --check for the GPU's architecture (NVRTC, registers, spills)
#   3. backend_ops: every CUDA op against its CPU twin (table of errors)
#   4. cuda_infer: DiT vs the PyTorch fixtures, infer --device cuda vs cpu (tiny model)
#   5. step_execution: no device allocation in the step loop, a captured CUDA
#      graph step gives the latents of plain launches
#   6. cuda_infer --ignored: full-size random weights, 10 s clip, 10 steps:
#      latents CUDA vs CPU, and the time of one sampler step (10 s and 30 s clips)
# and prints a summary; exit status 1 if any part failed. About 2-4 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/tools/device-bin
OUT=${OUT:-/tmp/lova-device-check}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

for b in lova-fast backend_ops cuda_infer step_execution; do
    if [ ! -x "$BIN/$b" ]; then
        echo "missing $BIN/$b: run tools/build-device-bin.sh on the build machine first" >&2
        exit 2
    fi
done

# The CUDA libraries: the toolkit's folders, then the pip wheels (PyTorch's
# nvidia-* packages, or nvidia-cuda-nvrtc), whichever exist. cudarc finds
# libcuda.so.1, libnvrtc.so.1{3,2} and libcublasLt.so.1{3,2} by name.
extra=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    [ -d "$d" ] && extra="$extra:$d"
done
if command -v python3 >/dev/null 2>&1; then
    for d in $(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for lib in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib"))):
        print(lib)
PY
    ); do
        extra="$extra:$d"
    done
fi
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}$extra"
export LOVA_FIXTURES=$ROOT/tests/fixtures
export LOVA_FAST_BIN=$BIN/lova-fast
export LOVA_FAST_CACHE_DIR=$OUT/kernel-cache

step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local verdict=ok
    [ $rc -ne 0 ] && verdict="FAILED (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"
    # On a GPU machine a skipped GPU test is a failure: the libraries were not found.
    [ $rc -eq 0 ] && grep -q "SKIPPED" "$OUT/$name.log" && verdict="FAILED (SKIPPED: CUDA not usable)"
    printf '%-16s %-40s %4ss\n' "$name" "$verdict" "$((SECONDS - start))" | tee -a "$SUMMARY"
    return 0
}

{
    echo "== machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
    nvidia-smi 2>&1 | grep -m1 "CUDA Version"
    ldd --version 2>&1 | head -1
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    for lib in libcuda.so.1 libnvrtc.so.13 libnvrtc.so.12 libcublasLt.so.13 libcublasLt.so.12; do
        found=$(ldconfig -p 2>/dev/null | grep -m1 "$lib" | awk '{print $NF}')
        [ -z "$found" ] && found=$(for d in ${LD_LIBRARY_PATH//:/ }; do [ -e "$d/$lib" ] && echo "$d/$lib" && break; done)
        echo "$lib: ${found:-not found}"
    done
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
arch=${arch:+sm_$arch}
# Limits add up to 570 s, inside a 10-minute remote command.
step kernels-check 60 "$BIN/lova-fast" kernels --check --arch "${arch:-sm_90}"
step backend-ops 120 "$BIN/backend_ops" --nocapture --test-threads=1
step cuda-infer 120 "$BIN/cuda_infer" --nocapture --test-threads=1
step step-execution 30 "$BIN/step_execution" --nocapture --test-threads=1
step full-size 240 "$BIN/cuda_infer" --ignored --nocapture --test-threads=1

echo
echo "== kernels"
cat "$OUT/kernels-check.log"
echo
echo "== op tests"
grep -v -E "^(test |running [0-9]+ test|$)" "$OUT/backend-ops.log" | head -100
echo
echo "== end to end"
grep -h -E "running on|SKIPPED|rel L2|ms/step|max abs|--device|allocation|test result|panicked|FAIL" \
    "$OUT/cuda-infer.log" "$OUT/step-execution.log" "$OUT/full-size.log" | head -60
echo
echo "== summary (logs in $OUT)"
cat "$SUMMARY"
! grep -q FAILED "$SUMMARY"
