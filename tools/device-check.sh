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
#   5. cuda_infer --ignored: full-size random weights, 10 s clip, 10 steps:
#      latents CUDA vs CPU, and the time of one sampler step (10 s and 30 s clips)
#   6. attention_bench: the attention kernel alone at the DiT and CLIP shapes,
#      TFLOP/s next to the card's dense fp16 peak, and attention's share of a
#      30 s DiT step (with the step time of 5)
# and prints a summary; exit status 1 if any part failed. About 2-4 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/tools/device-bin
OUT=${OUT:-/tmp/lova-device-check}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

for b in lova-fast backend_ops cuda_infer attention_bench; do
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
# Limits add up to 585 s, inside a 10-minute remote command.
step kernels-check 45 "$BIN/lova-fast" kernels --check --arch "${arch:-sm_90}"
step backend-ops 120 "$BIN/backend_ops" --nocapture --test-threads=1
step cuda-infer 105 "$BIN/cuda_infer" --nocapture --test-threads=1
step full-size 270 "$BIN/cuda_infer" --ignored --nocapture --test-threads=1
# --bench: a criterion binary run without it only smoke-tests each benchmark.
step attention-bench 45 "$BIN/attention_bench" --bench

# Dense (no sparsity) fp16 tensor-core peak in TFLOP/s, from NVIDIA's data sheets
# (they quote the sparse figure, twice these): H100 SXM 989, H100 PCIe 756,
# H100 NVL 835, H200 SXM 989, H200 NVL 835, A100 312, L40S 362, L4 121.
# The kernel uses mma.sync (Ampere-style); on Hopper only wgmma reaches the peak.
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$gpu" in
    *H100*NVL* | *H200*NVL*) peak=835 ;;
    *H100*PCIe*) peak=756 ;;
    *H100* | *H200* | *GH200*) peak=989 ;;
    *A100*) peak=312 ;;
    *L40S*) peak=362 ;;
    *L4*) peak=121 ;;
    *) peak="" ;;
esac

echo
echo "== kernels"
cat "$OUT/kernels-check.log"
echo
echo "== op tests"
grep -v -E "^(test |running [0-9]+ test|$)" "$OUT/backend-ops.log" | head -100
echo
echo "== end to end"
grep -h -E "running on|SKIPPED|rel L2|ms/step|max abs|--device|test result|panicked|FAIL" \
    "$OUT/cuda-infer.log" "$OUT/full-size.log" | head -60
echo
echo "== attention kernel"
grep -E "^attention .*TFLOP/s" "$OUT/attention-bench.log" | while read -r line; do
    tflops=$(sed -n 's/.* \([0-9.]*\) TFLOP\/s.*/\1/p' <<<"$line")
    if [ -n "$tflops" ] && [ -n "$peak" ]; then
        pct=$(awk -v a="$tflops" -v p="$peak" 'BEGIN { printf "%.0f", 100 * a / p }')
        echo "$line (dense fp16 peak of $gpu: $peak TFLOP/s; $pct%)"
    else
        echo "$line (dense fp16 peak of ${gpu:-this GPU}: ${peak:-not in the table})"
    fi
done
step_ms=$(grep -h -o "30 s clip .*: [0-9.]* ms/step" "$OUT/full-size.log" | grep -o "[0-9.]* ms/step" | head -1 | cut -d' ' -f1)
grep -h "^attention per DiT step" "$OUT/attention-bench.log"
attn_ms=$(grep -h "^attention per DiT step" "$OUT/attention-bench.log" | grep -o "[0-9.]* ms$" | cut -d' ' -f1)
if [ -n "$step_ms" ] && [ -n "$attn_ms" ]; then
    awk -v a="$attn_ms" -v s="$step_ms" \
        'BEGIN { printf "attention share of a 30 s DiT step: %.3f of %.1f ms = %.1f%% (target <= 15%%)\n", a, s, 100 * a / s }'
fi
echo
echo "== summary (logs in $OUT)"
cat "$SUMMARY"
! grep -q FAILED "$SUMMARY"
