#!/usr/bin/env bash
# Shows that run.sh can fail: runs it on copies of kernels/conv1d.cu broken in
# small ways (a fragment register swapped, off-by-ones in the padding, the
# transposed conv's phase, the C_out bound, rows past the end written,
# 32-bit element offsets, misaligned shared-memory stores) and fails unless
# every copy fails.
# About a minute on 2 cores.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mutants=(
    # name|text in the kernel|its replacement
    "A fragment registers 1 and 2 swapped|af[1] = *reinterpret_cast<const unsigned int*>(ap + 8 * CONV_LD);|af[1] = *reinterpret_cast<const unsigned int*>(ap + 8);"
    "padding: one row past a sequence's end read|src < hi|src <= hi"
    "padding: conv pad one row short|src_shift[h] = tap * dilation - pad;|src_shift[h] = tap * dilation - pad + (pad > 0);"
    "transposed conv: phase p gathers like phases < p|pad = phase < p ? -1 : 0;|pad = phase <= p ? -1 : 0;"
    "epilogue writes column C_out|if (col < n) {|if (col <= n) {"
    "tile rows past the end written to the last row|row_out[i] = -1;|row_out[i] = m_rows - 1;"
    "output offset in 32 bits|long long base = (long long)orow * n;|long long base = (int)(orow * (unsigned)n);"
    "input offset in 32 bits|__ldg(x + src * cin + ci[h])|__ldg(x + (int)(src * cin) + ci[h])"
    "shared rows of 36 halves: right values, misaligned 16-byte stores|#define CONV_LD 40|#define CONV_LD 36"
)
status=0
for m in "${mutants[@]}"; do
    IFS='|' read -r name old new <<<"$m"
    python3 - "$here/../../kernels/conv1d.cu" "$work/conv1d.cu" "$old" "$new" <<'PY' || exit 1
import sys
s = open(sys.argv[1]).read()
if s.count(sys.argv[3]) != 1:
    sys.exit(f"mutants.sh: `{sys.argv[3]}` is not once in the kernel; update the mutant")
open(sys.argv[2], "w").write(s.replace(sys.argv[3], sys.argv[4]))
PY
    "$here/run.sh" "$work/conv1d.cu" --first-failure >"$work/log" 2>&1
    # Caught: a failing case, or an access the sanitizers or __ldg's check abort on (not a build error).
    evidence=$(grep -m2 'FAIL$\|ERROR: AddressSanitizer\|runtime error\|misaligned' "$work/log")
    if [ -n "$evidence" ]; then
        echo "caught: $name ($(grep -c 'FAIL$' "$work/log") failing case(s))"
        echo "$evidence" | sed 's/^/    /'
    else
        echo "NOT CAUGHT: $name"
        tail -5 "$work/log" | sed 's/^/    /'
        status=1
    fi
done
exit $status
