#!/usr/bin/env bash
# Shows that the tests on the virtual GPU can fail: breaks the CUDA backend or
# a kernel in one small way at a time (the mutants issue 17 lists), runs the
# test that should notice on the virtual GPU, and fails unless every mutant
# is caught (a failing test, not a build error). Each mutant is applied to
# the working tree and undone afterwards, whatever happens.
# Needs what .ci/run sets up: NVRTC on LD_LIBRARY_PATH, g++, python3.
# Usage: tools/vgpu/mutants.sh [VGPU_BUILD_DIR]   (default: the CI cache)
set -uo pipefail
cd "$(dirname "$0")/../.."
out_root=${1:-${LOVA_CI_CACHE:-${HOME:-/tmp}/.cache/lova-fast-ci}/vgpu}
backup=$(mktemp -d)
restore() {
    for f in "$backup"/*; do
        [ -e "$f" ] || continue
        cp "$f" "$(tr '%' '/' <<<"$(basename "$f")")"
    done
    rm -rf "$backup"
}
trap restore EXIT
mutants=(
    # name|file|text|replacement|test binary|test name|extra environment
    "flash attention: shared-memory row stride 72 -> 68 halves|kernels/flash_attention.cu|#define FA_LDS 72|#define FA_LDS 68|backend_ops|every_cuda_op_matches_its_cpu_twin|LOVA_OPS_FILTER=attention"
    "common.cuh: the halves of pack_half2 swapped (flash attention)|kernels/common.cuh|\"f\"(hi), \"f\"(lo)|\"f\"(lo), \"f\"(hi)|backend_ops|every_cuda_op_matches_its_cpu_twin|LOVA_OPS_FILTER=attention"
    "flash attention: no __syncthreads after the K/V tile store|kernels/flash_attention.cu|load_tile(vbase + (long long)j0 * v_ld, v_ld, tile_keys, false, rope_table, 0, smem.v[0]);
            __syncthreads();|load_tile(vbase + (long long)j0 * v_ld, v_ld, tile_keys, false, rope_table, 0, smem.v[0]);|backend_ops|every_cuda_op_matches_its_cpu_twin|LOVA_OPS_FILTER=attention"
    "flash attention: K/V tiles read before their cp.async copies land|kernels/flash_attention.cu|            cp_async_wait_all_but_newest();  // this thread's copies of tile it have landed|            // (wait removed)|backend_ops|every_cuda_op_matches_its_cpu_twin|LOVA_OPS_FILTER=attention"
    "flash attention: the halves of an fp16 load swapped|kernels/flash_attention.cu|f16_to_f32(h.x & 0xffffu), f16_to_f32(h.x >> 16)|f16_to_f32(h.x >> 16), f16_to_f32(h.x & 0xffffu)|backend_ops|every_cuda_op_matches_its_cpu_twin|LOVA_OPS_FILTER=attention"
    "cuBLASLt: the transpose flag of W flipped|src/backend/cuda/gemm.rs|const OP_T: i32 = 1;|const OP_T: i32 = 0;|backend_ops|every_cuda_op_matches_its_cpu_twin|LOVA_OPS_FILTER=linear"
    "layer norm launched for one row too few|src/backend/cuda/norm.rs|r as i64, c as i32);|r as i64 - 1, c as i32);|backend_ops|every_cuda_op_matches_its_cpu_twin|LOVA_OPS_FILTER=layer_norm"
    "capture silently falls back to plain launches|src/backend/cuda/capture.rs|if ctx.arena.recordings.warmed_up.insert(key) {|if { ctx.arena.recordings.warmed_up.insert(key); true } {|step_execution|a_captured_step_gives_the_latents_of_plain_launches|"
)
status=0
printf '%-62s %s\n' "mutant" "result"
for m in "${mutants[@]}"; do
    IFS='|' read -r -d '' name file old new binary test env <<<"$m"
    env=${env%$'\n'}
    key=$(tr '/' '%' <<<"$file")
    [ -e "$backup/$key" ] || cp "$file" "$backup/$key"
    python3 - "$file" "$old" "$new" <<'PY' || exit 1
import sys
path, old, new = sys.argv[1:4]
s = open(path).read()
if s.count(old) != 1:
    sys.exit(f"mutants.sh: `{old}` is not exactly once in {path}; update the mutant")
open(path, "w").write(s.replace(old, new))
PY
    log=$(mktemp)
    if ! vgpu_dir=$(tools/vgpu/build.sh "$out_root" 2>"$log"); then
        echo "NOT CAUGHT (the virtual GPU did not build): $name"; cat "$log"; status=1
    else
        # shellcheck disable=SC2086
        env LOVA_VGPU=1 LOVA_VGPU_DIR="$vgpu_dir" $env cargo test --quiet --test "$binary" -- --exact "$test" >"$log" 2>&1
        rc=$?
        if grep -q "error\[E\|could not compile" "$log"; then
            printf '%-62s %s\n' "$name" "NOT CAUGHT (build error: fix the mutant)"; status=1
        elif [ $rc -ne 0 ] && grep -q "test result: FAILED" "$log"; then
            why=$(grep -v "^test \|^failures:\|^    [a-z_]*$" "$log" | grep -m1 -o "FAIL (.*\|ERROR.*\|panicked.*" | cut -c1-110)
            printf '%-62s %s\n' "$name" "caught: $why"
        else
            printf '%-62s %s\n' "$name" "NOT CAUGHT"; tail -5 "$log"; status=1
        fi
    fi
    rm -f "$log"
    cp "$backup/$key" "$file"
done
exit $status
