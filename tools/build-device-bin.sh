#!/usr/bin/env bash
# Builds, on a machine without a GPU, the binaries that tools/device-check.sh
# runs on a GPU machine (which has the NVIDIA driver and CUDA libraries but no
# Rust), and copies them to tools/device-bin/ (ignored by git):
#   lova-fast      the CLI (cargo build --release)
#   backend_ops    tests/backend_ops.rs (every CUDA op vs its CPU twin)
#   cuda_infer     tests/cuda_infer.rs (fixtures, CLI, full-size error and timing)
#   attention_bench benches/attention.rs (the attention kernel alone, TFLOP/s)
# The binaries are linked against this machine's glibc; the script prints the
# newest glibc symbol version they need, to compare with the GPU machine's.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release
# The test binaries' file names carry a hash; cargo prints them as JSON.
mapfile -t tests < <(cargo test --release --no-run --message-format=json \
    --test backend_ops --test cuda_infer 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"] + " " + m["executable"])')

bench=$(cargo bench --no-run --message-format=json --bench attention 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
        print(m["executable"])')

mkdir -p tools/device-bin
cp target/release/lova-fast tools/device-bin/lova-fast
for entry in "${tests[@]}"; do
    name=${entry%% *}
    cp "${entry#* }" "tools/device-bin/$name"
done
cp "$bench" tools/device-bin/attention_bench
ls -l tools/device-bin
if command -v objdump >/dev/null 2>&1; then
    echo "newest glibc symbol needed: $(objdump -T tools/device-bin/* | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1)"
fi
