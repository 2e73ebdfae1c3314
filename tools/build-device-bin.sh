#!/usr/bin/env bash
# Builds, on a machine without a GPU, the binaries that tools/device-check.sh
# runs on a GPU machine (which has the NVIDIA driver and CUDA libraries but no
# Rust), and copies them to tools/device-bin/ (ignored by git):
#   lova-fast      the CLI (cargo build --release), also `lova-fast bench`
#   backend_ops    tests/backend_ops.rs (every CUDA op vs its CPU twin)
#   cuda_infer     tests/cuda_infer.rs (fixtures, CLI, full-size error and timing)
#   step_execution tests/step_execution.rs (no allocation in the step loop, CUDA graph capture)
#   attention, dit_step, clip_encode, vae_decode, end_to_end   the criterion benches (benches/;
#                  attention: the attention kernel alone, TFLOP/s)
# Binaries are stripped of debug symbols to stay well inside the 64 MiB a GPU
# session may carry. They are linked against this machine's glibc; the script
# prints the newest glibc symbol version they need, to compare with the GPU machine's.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release
# The test and bench binaries' file names carry a hash; cargo prints them as JSON.
list_executables() {
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] in (["test"], ["bench"]):
        print(m["target"]["name"] + " " + m["executable"])'
}
mapfile -t tests < <(cargo test --release --no-run --message-format=json \
    --test backend_ops --test cuda_infer --test step_execution 2>/dev/null | list_executables)
mapfile -t benches < <(cargo bench --no-run --message-format=json \
    --bench attention --bench dit_step --bench clip_encode --bench vae_decode --bench end_to_end 2>/dev/null | list_executables)

rm -rf tools/device-bin
mkdir -p tools/device-bin
cp target/release/lova-fast tools/device-bin/lova-fast
for entry in "${tests[@]}" "${benches[@]}"; do
    name=${entry%% *}
    cp "${entry#* }" "tools/device-bin/$name"
done
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug tools/device-bin/*
fi
ls -l tools/device-bin
echo "total: $(du -sh tools/device-bin | cut -f1) (a GPU session carries at most 64 MiB)"
if command -v objdump >/dev/null 2>&1; then
    echo "newest glibc symbol needed: $(objdump -T tools/device-bin/* | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1)"
fi
