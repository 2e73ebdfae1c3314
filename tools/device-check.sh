#!/usr/bin/env bash
# The CUDA checks and benchmarks, on a GPU machine that has the NVIDIA driver
# and the CUDA libraries (and PyTorch, for the comparison) but no Rust. Build the
# binaries elsewhere first (tools/build-device-bin.sh -> tools/device-bin/),
# bring the working tree and tools/device-bin/ to the GPU machine, then run
#
#   tools/device-check.sh [PART...]        (default: all, in this order)
#
# Parts, most important first; logs in $OUT (default /tmp/lova-device-check):
#   kernels    lova-fast kernels --check for the GPU's architecture (NVRTC, registers, spills)
#   ops        backend_ops: every CUDA op against its CPU twin (table of errors);
#              step_execution: no device allocation in the step loop, and a captured
#              CUDA graph step gives the latents of plain launches
#   sanitize   compute-sanitizer (memcheck, racecheck) on the small flash-attention and conv
#              op cases, when the toolkit's compute-sanitizer is present
#   attention  the attention kernel alone (criterion bench) at the DiT and CLIP shapes:
#              TFLOP/s next to the card's dense fp16 peak, and attention's share of a
#              30 s DiT step (with the step time of `full-size`, when that part ran)
#   infer      cuda_infer: DiT vs the PyTorch fixtures, infer --device cuda vs cpu (tiny model),
#              infer --batch 3 vs each input alone on CUDA
#   bench      one sampler step for 10/30/60 s clips: lova-fast bench (latency, TFLOP/s,
#              memory) next to PyTorch fp16 eager (tools/reference/bench_torch.py), and
#              next to the roofline prediction for this card (lova-fast bench --roofline),
#              and the 30 s step with f32 block activations (LOVA_CUDA_ACTIVATIONS=f32)
#   startup    writes a full-size random engine file, then lova-fast bench --weights:
#              process start to first step with the file in the page cache
#   serve      lova-fast serve on a full-size random engine, tools/load.py (48 clips of
#              2/5/10 s, 50 steps, 4 per second): continuous batching, then --no-batching;
#              throughput, p50/p95/p99 latency, mean batch rows per step (goal: batching
#              >= 3x the one-at-a-time throughput at equal or better p95)
#   criterion  the criterion benches with short measurement times: dit_step (10/30/60 s),
#              clip_encode (240 frames), vae_decode (30 s), end_to_end (30 s)
#   compile    bench_torch.py with torch.compile for a 30 s clip (compiling takes a while)
#   vae-clip   cuda_infer --ignored: the SNR of a full-size 10 s VAE decode (CUDA vs CPU),
#              and the times of a 30 s VAE decode and of CLIP on 240 frames
#   full-size  cuda_infer --ignored: full-size random weights, 10 s clip, 10 steps, latents
#              CUDA vs CPU, and the step time for 10 s and 30 s clips
# Groups: `checks` = kernels ops sanitize attention infer vae-clip full-size; `speed` = bench startup serve criterion compile.
#
# Everything shares one time budget, BUDGET seconds (default 540, inside a
# 10-minute remote command): a part starts only if enough is left, else it is
# reported as skipped with the command that runs it alone. Prints the figures
# and a summary; exit status 1 if any part failed. On an H100: kernels to bench
# take about 3-4 minutes, all parts about 10.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/tools/device-bin
OUT=${OUT:-/tmp/lova-device-check}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

ALL_PARTS="kernels ops sanitize attention infer bench startup serve criterion vae-clip compile full-size"
parts=""
for a in "${@:-all}"; do
    case $a in
        all) parts="$parts $ALL_PARTS" ;;
        checks) parts="$parts kernels ops sanitize attention infer vae-clip full-size" ;;
        speed) parts="$parts bench startup serve criterion compile" ;;
        kernels | ops | sanitize | attention | infer | bench | startup | serve | criterion | vae-clip | compile | full-size) parts="$parts $a" ;;
        *)
            echo "unknown part $a (parts: $ALL_PARTS; groups: all checks speed)" >&2
            exit 2
            ;;
    esac
done
wanted() { [[ " $parts " == *" $1 "* ]]; }
BUDGET=${BUDGET:-540}

need=(lova-fast)
wanted ops && need+=(backend_ops step_execution)
{ wanted infer || wanted full-size || wanted vae-clip; } && need+=(cuda_infer)
wanted attention && need+=(attention)
wanted criterion && need+=(dit_step clip_encode vae_decode end_to_end)
for b in "${need[@]}"; do
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

# step PART NAME LIMIT MIN_SECONDS COMMAND...: runs COMMAND if PART was asked
# for and at least MIN_SECONDS of the budget are left, for at most LIMIT seconds
# (or what is left), logging to $OUT/NAME.log.
step() {
    local part=$1 name=$2 limit=$3 min=$4
    shift 4
    wanted "$part" || return 0
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt "$min" ]; then
        printf '%-16s %-40s %4ss\n' "$name" "skipped (budget: ${left}s left)" 0 | tee -a "$SUMMARY"
        echo "                 run it alone: tools/device-check.sh $part" | tee -a "$SUMMARY"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local start=$SECONDS
    # Through bash so that COMMAND may be one of the (exported) functions below.
    timeout "$limit" bash -c '"$@"' "$name" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local verdict=ok
    [ $rc -ne 0 ] && verdict="FAILED (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"
    # On a GPU machine a skipped GPU test is a failure: the libraries were not found.
    [ $rc -eq 0 ] && grep -q "SKIPPED" "$OUT/$name.log" && verdict="FAILED (SKIPPED: CUDA not usable)"
    # A benchmark that fell back to the CPU measured the wrong thing.
    [ $rc -eq 0 ] && grep -q "no usable GPU" "$OUT/$name.log" && verdict="FAILED (ran on the CPU: CUDA not usable)"
    printf '%-16s %-40s %4ss\n' "$name" "$verdict" "$((SECONDS - start))" | tee -a "$SUMMARY"
    return 0
}

{
    echo "== machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
    nvidia-smi 2>&1 | grep -m1 "CUDA Version"
    ldd --version 2>&1 | head -1
    nproc 2>&1 | sed 's/^/CPU cores: /'
    python3 -c 'import torch; print("PyTorch", torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -1
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    for lib in libcuda.so.1 libnvrtc.so.13 libnvrtc.so.12 libcublasLt.so.13 libcublasLt.so.12; do
        found=$(ldconfig -p 2>/dev/null | grep -m1 "$lib" | awk '{print $NF}')
        [ -z "$found" ] && found=$(for d in ${LD_LIBRARY_PATH//:/ }; do [ -e "$d/$lib" ] && echo "$d/$lib" && break; done)
        echo "$lib: ${found:-not found}"
    done
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "parts:$parts; budget ${BUDGET}s"

arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
arch=${arch:+sm_$arch}

# Peaks for the roofline prediction (bench --roofline --gpu): dense fp16
# tensor-core TFLOP/s and memory GB/s from NVIDIA's data sheets (the same
# dense figures as `peak` below). GH200 first: its name contains H200.
case "$CARD" in
    *GH200*) roofline_gpu=989,4000 ;;
    *H200*NVL*) roofline_gpu=835,4800 ;;
    *H200*) roofline_gpu=h200 ;;
    *H100*NVL*) roofline_gpu=835,3900 ;;
    *H100*PCIe*) roofline_gpu=756,2000 ;;
    *H100*) roofline_gpu=h100 ;;
    *A100*) roofline_gpu=312,2039 ;;
    *L40S*) roofline_gpu=362,864 ;;
    *L4*) roofline_gpu=121,300 ;;
    *) roofline_gpu=h100 ;;
esac
export roofline_gpu

# The PyTorch comparison runs lova-fast bench itself; without PyTorch, lova-fast alone.
compare() {
    if python3 -c 'import torch' >/dev/null 2>&1; then
        python3 tools/reference/bench_torch.py --device cuda --lova-fast "$BIN/lova-fast" "$@"
    else
        echo "PyTorch not importable: lova-fast figures only"
        "$BIN/lova-fast" bench --device cuda --seconds 10,30,60 --steps 20
    fi
}
# Start-up with an engine file in the page cache: a full-size random engine
# (~3 GB, outside $OUT so that it does not come back), read once, then measured.
startup() {
    local dir=${TMPDIR:-/tmp}/lova-startup engine
    engine=$dir/random-vl30.safetensors
    mkdir -p "$dir" && "$BIN/lova-fast" bench --make-engine "$engine" || return 1
    cat "$engine" >/dev/null
    "$BIN/lova-fast" bench --device cuda --weights "$engine" --seconds 30 --steps 10
    local rc=$?
    rm -rf "$dir"
    return $rc
}
# The service under load: continuous batching, then one job at a time, on the
# same open-loop load (tools/load.py), each on a fresh server.
serve_load() {
    local dir=${TMPDIR:-/tmp}/lova-serve engine mode log pid url
    engine=$dir/random-vl30.safetensors
    mkdir -p "$dir" && "$BIN/lova-fast" bench --make-engine "$engine" || return 1
    for mode in batching no-batching; do
        log=$dir/serve-$mode.log
        if [ $mode = batching ]; then
            "$BIN/lova-fast" serve --weights "$engine" --device cuda --port 0 >"$log" 2>&1 &
        else
            "$BIN/lova-fast" serve --weights "$engine" --device cuda --port 0 --no-batching >"$log" 2>&1 &
        fi
        pid=$!
        url=""
        for _ in $(seq 1 120); do
            url=$(grep -o -m1 'http://[0-9.]*:[0-9]*' "$log" || true)
            [ -n "$url" ] && python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/readyz')" "$url" 2>/dev/null && break
            sleep 1
        done
        echo "== serve, $mode ($url)"
        python3 tools/load.py --url "$url" --rate 4 --requests 48 --steps 50 --lengths 2,5,10
        kill -TERM $pid
        wait $pid
        grep -v " succeeded" "$log" | tail -5
    done
    rm -rf "$dir"
}
criterion_bench() {
    # Criterion's own reports go outside $OUT; --noplot skips the plots.
    CRITERION_HOME=${TMPDIR:-/tmp}/lova-criterion "$BIN/$1" --bench --noplot \
        --warm-up-time 1 --measurement-time 2 --sample-size 10
}

# The roofline of the same step for this card's peaks (computed, no GPU needed):
# the JSON for the comparison below, the table in the log.
roofline() {
    "$BIN/lova-fast" bench --roofline --gpu "$roofline_gpu" --seconds 10,30,60 --json >"$OUT/roofline.json"
}

export -f compare startup serve_load criterion_bench roofline
export BIN OUT

# Limits in seconds; the last number is the least budget a part needs to start.
step kernels kernels-check 60 20 "$BIN/lova-fast" kernels --check --arch "${arch:-sm_90}"
step ops backend-ops 120 30 "$BIN/backend_ops" --nocapture --test-threads=1
step ops step-execution 30 10 "$BIN/step_execution" --nocapture --test-threads=1
# compute-sanitizer: out-of-bounds and misaligned accesses (memcheck) and
# shared-memory races (racecheck) in the tensor-core kernels, on their small
# op cases (LOVA_OPS_MAX_MMAS); the sanitizer slows kernels down a lot.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
sanitize() {
    local tool=$1 op=$2
    LOVA_OPS_FILTER=$op LOVA_OPS_MAX_MMAS=20000 "$sanitizer" --tool "$tool" --error-exitcode 1 \
        "$BIN/backend_ops" --nocapture --exact every_cuda_op_matches_its_cpu_twin
}
export -f sanitize
export sanitizer
if [ -n "$sanitizer" ]; then
    for op in attention conv1d; do
        step sanitize "memcheck-$op" 90 30 sanitize memcheck "$op"
        step sanitize "racecheck-$op" 90 30 sanitize racecheck "$op"
    done
elif wanted sanitize; then
    printf '%-16s %-40s %4ss\n' sanitize "skipped (no compute-sanitizer)" 0 | tee -a "$SUMMARY"
fi
# --bench: a criterion binary run without it only smoke-tests each benchmark.
step attention attention-bench 45 20 "$BIN/attention" --bench --noplot
step infer cuda-infer 120 30 "$BIN/cuda_infer" --nocapture --test-threads=1
step bench bench 180 60 compare --check --seconds 10,30,60 --compile-seconds none --iters 20 --json "$OUT/bench.json"
step bench roofline 30 5 roofline
# What fp16 block activations (the default) save: the 30 s step with them in f32.
step bench f32-activations 60 20 env LOVA_CUDA_ACTIVATIONS=f32 "$BIN/lova-fast" bench --device cuda --seconds 30 --steps 20
step startup startup 120 60 startup
step serve serve-load 240 120 serve_load
step criterion crit-dit-step 90 40 criterion_bench dit_step
step criterion crit-clip 60 20 criterion_bench clip_encode
step criterion crit-vae 60 20 criterion_bench vae_decode
step criterion crit-end-to-end 120 40 criterion_bench end_to_end
step compile torch-compile 240 90 compare --seconds 30 --compile-seconds 30 --iters 20 --json "$OUT/compile.json"
step vae-clip vae-clip 140 60 "$BIN/cuda_infer" --ignored --nocapture --test-threads=1 full_size_vae measure_vae
step full-size full-size 270 120 "$BIN/cuda_infer" --ignored --nocapture --test-threads=1 full_size_latents full_size_cuda_step

show() { [ -s "$OUT/$1.log" ]; }

# Dense (no sparsity) fp16 tensor-core peak in TFLOP/s, from NVIDIA's data sheets
# (they quote the sparse figure, twice these): H100 SXM 989, H100 PCIe 756,
# H100 NVL 835, H200 SXM 989, H200 NVL 835, A100 312, L40S 362, L4 121.
# The kernel uses mma.sync (Ampere-style); on Hopper only wgmma reaches the peak.
case "$CARD" in
    *H100*NVL* | *H200*NVL*) peak=835 ;;
    *H100*PCIe*) peak=756 ;;
    *H100* | *H200* | *GH200*) peak=989 ;;
    *A100*) peak=312 ;;
    *L40S*) peak=362 ;;
    *L4*) peak=121 ;;
    *) peak="" ;;
esac
if show kernels-check; then
    echo
    echo "== kernels"
    cat "$OUT/kernels-check.log"
fi
if show backend-ops; then
    echo
    echo "== op tests"
    grep -v -E "^(test |running [0-9]+ test|$)" "$OUT/backend-ops.log" | head -100
fi
if show step-execution; then
    echo
    echo "== step execution (allocations, CUDA graph capture)"
    grep -v -E "^(running [0-9]+ test|$)" "$OUT/step-execution.log" | head -30
fi
if show attention-bench; then
    echo
    echo "== attention kernel"
    grep -E "^attention .*TFLOP/s" "$OUT/attention-bench.log" | while read -r line; do
        tflops=$(sed -n 's/.* \([0-9.]*\) TFLOP\/s.*/\1/p' <<<"$line")
        if [ -n "$tflops" ] && [ -n "$peak" ]; then
            pct=$(awk -v a="$tflops" -v p="$peak" 'BEGIN { printf "%.0f", 100 * a / p }')
            echo "$line (dense fp16 peak of $CARD: $peak TFLOP/s; $pct%)"
        else
            echo "$line (dense fp16 peak of ${CARD:-this GPU}: ${peak:-not in the table})"
        fi
    done
    grep -h "^attention per DiT step" "$OUT/attention-bench.log"
    step_ms=$(grep -h -o "30 s clip .*: [0-9.]* ms/step" "$OUT/full-size.log" 2>/dev/null | grep -o "[0-9.]* ms/step" | head -1 | cut -d' ' -f1)
    attn_ms=$(grep -h "^attention per DiT step" "$OUT/attention-bench.log" | grep -o "[0-9.]* ms$" | cut -d' ' -f1)
    if [ -n "$step_ms" ] && [ -n "$attn_ms" ]; then
        awk -v a="$attn_ms" -v s="$step_ms" \
            'BEGIN { printf "attention share of a 30 s DiT step: %.3f of %.1f ms = %.1f%% (target <= 15%%)\n", a, s, 100 * a / s }'
    fi
fi
if show cuda-infer || show full-size; then
    echo
    echo "== end to end"
    grep -h -E "running on|SKIPPED|rel L2|ms/step|max abs|--device|test result|panicked|FAIL" \
        "$OUT/cuda-infer.log" "$OUT/full-size.log" 2>/dev/null | head -60
fi
if show vae-clip; then
    echo
    echo "== VAE and CLIP (full size)"
    grep -h -E "SNR|measurement:|SKIPPED|test result|panicked|FAIL" "$OUT/vae-clip.log" | head -20
fi
if show bench || show startup || show torch-compile; then
    echo
    echo "== speed on ${CARD:-the GPU} (one sampler step = DiT cond + uncond, CFG, DPM++ update)"
    for f in bench torch-compile; do
        show $f && grep -v -E "^(lova-fast: /|DiT: )" "$OUT/$f.log" | grep -E -A12 "^check:|^lova-fast bench on|^one sampler step|compile took|failed|NON-FINITE|Error|error" | head -40
    done
    show startup && grep -E "start-up|wrote|error" "$OUT/startup.log"
fi
if [ -s "$OUT/roofline.json" ]; then
    echo
    echo "== measured step next to the roofline prediction (--gpu $roofline_gpu; the prediction is a floor for today's kernels)"
    python3 - "$OUT/roofline.json" "$OUT/bench.json" <<'PY' || grep -E "^ *[0-9]+ +[0-9]+ " "$OUT/roofline.log"
import json, sys
pred = json.load(open(sys.argv[1]))
try:
    rows = {r["seconds"]: r for r in json.load(open(sys.argv[2]))["rows"]}
except (OSError, ValueError, KeyError):
    rows = {}
gpu = pred["settings"]["gpu"]
print(f"peaks: {gpu['name']} {gpu['tensor_tflops']} TFLOP/s, {gpu['bandwidth_gbps']} GB/s; "
      f"captured CUDA graph: {pred['settings']['captured']}")
print(f"{'seconds':>7} | {'GFLOP':>8} | {'GB moved':>8} | {'launches':>8} | {'predicted ms':>12} | "
      f"{'measured ms':>11} | {'measured / predicted':>20}")
for c in pred["clips"]:
    measured = (rows.get(c["seconds"]) or {}).get("lova_fast_ms")
    ratio = f"{measured / c['predicted_ms']:.2f}" if measured else "-"
    shown = f"{measured:.2f}" if measured else "-"
    print(f"{c['seconds']:>7g} | {c['flops'] * 1e-9:>8.1f} | {c['bytes'] * 1e-9:>8.2f} | {c['launches']:>8} | "
          f"{c['predicted_ms']:>12.2f} | {shown:>11} | {ratio:>20}")
PY
fi
if show serve-load; then
    echo
    echo "== lova-fast serve under load (continuous batching vs one at a time)"
    grep -E "^== serve|^requests|^wall|^latency|^batch|rror|job " "$OUT/serve-load.log" | head -30
fi
if ls "$OUT"/crit-*.log >/dev/null 2>&1; then
    echo
    echo "== criterion (short runs: 10 samples, 2 s each)"
    grep -h -E "time:|note:|no usable GPU|CUDA backend on|one run:|TFLOP/s|^[a-z_]+/(cuda|cpu)/|panicked|error" "$OUT"/crit-*.log | head -60
fi
echo
echo "== summary on ${CARD:-?} (logs in $OUT)"
cat "$SUMMARY"
! grep -q FAILED "$SUMMARY"
