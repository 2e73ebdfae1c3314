#!/usr/bin/env bash
# Long run of the in-process mutation fuzzer (tests/fuzz.rs) for SECONDS
# seconds: engine headers and their configs, model configs, features files and
# latents files through the library's parsers and loaders. Prints the counts of
# clean errors, successes, crashes (panics) and outputs left behind, per target
# and in total; an abort (the process killed by a signal) is reported as such.
#
#   tools/fuzz.sh 600            # ten minutes, seed 20
#   LOVA_FUZZ_SEED=7 tools/fuzz.sh 3600
#
# Exit status: 0 when there was no crash, no abort and nothing left behind.
set -uo pipefail
seconds="${1:?usage: tools/fuzz.sh SECONDS}"
cd "$(dirname "$0")/.."

cargo test --test fuzz --no-run >/dev/null 2>&1 || { cargo test --test fuzz --no-run; exit 1; }
log="$(mktemp)"
LOVA_FUZZ_SECONDS="$seconds" cargo test --test fuzz -- --nocapture --test-threads 1 >"$log" 2>&1
status=$?
# -o: with --nocapture the test harness' "test ... " prefix may share a line with the first count.
grep -oE '(fuzz |crash \().*' "$log"
if [ "$status" -gt 128 ] || ! grep -q 'fuzz total' "$log"; then
    echo "ABORTED: the fuzz run ended without its summary (exit status $status); last lines:"
    tail -n 20 "$log"
    exit 1
fi
if [ "$status" -ne 0 ]; then
    grep -E 'panicked|assert' "$log" | head -n 20
fi
rm -f "$log"
exit "$status"
