#!/usr/bin/env bash
# Builds the AMX check into DIR: static binaries (CGO_ENABLED=0) and DIR/run.sh, so that the check
# runs from any copy of DIR on a Linux x86-64 machine whose CPU has AMX (amx_tile, amx_bf16 in
# /proc/cpuinfo: Xeon Sapphire Rapids and later) — no repository, no Go needed there.
#
#   scripts/amx-check.sh DIR        # here
#   DIR/run.sh [OUTDIR]             # there; writes OUTDIR/kern.log, OUTDIR/bench.log
#
# run.sh runs:
#   1. engine/internal/kern's tests with PROLONG_REQUIRE_AMX=1: the AMX kernel against its Go
#      emulation bit for bit (TestAMXHardware: every row split, denormal and overflow ranges, 8
#      goroutines with the GC running), VDPBF16PS against its emulation, every matmul path against
#      the float64 oracle -> kern.log;
#   2. tools/bench (the matmul table with the amx and avx512-bf16 rows, prefill, decode, a training
#      step with --matmul-precision bf16), with --torch (PyTorch's fp32 and bf16-autocast steps)
#      where /usr/bin/python3 has torch -> bench.log.
set -euo pipefail
dir="${1:?usage: scripts/amx-check.sh DIR}"
cd "$(dirname "$0")/.."
mkdir -p "$dir/scripts"
export CGO_ENABLED=0 GOOS=linux GOARCH=amd64
go test -c -o "$dir/kern.test" ./engine/internal/kern
go build -o "$dir/bench" ./tools/bench
cp scripts/bench_torch_train.py "$dir/scripts/"
cat >"$dir/run.sh" <<'RUN'
#!/usr/bin/env bash
# The AMX check; see scripts/amx-check.sh in the repository.
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here}"
mkdir -p "$out"
grep -m1 'model name' /proc/cpuinfo | tee "$out/cpu.txt"
grep -m1 -o -w -E 'amx_(tile|bf16|int8)' /proc/cpuinfo | sort -u | tr '\n' ' ' | tee -a "$out/cpu.txt"; echo
echo "== kern tests (AMX required)"
PROLONG_REQUIRE_AMX=1 timeout 300 "$here/kern.test" -test.v -test.skip ByteEncodings >"$out/kern.log" 2>&1
echo "kern exit $?"; grep -E '^(--- (FAIL|SKIP)|ok|FAIL|PASS)|AMX on this machine' "$out/kern.log" | tail -20
echo "== bench"
torch=""
/usr/bin/python3 -c 'import torch' 2>/dev/null && torch="--torch"
(cd "$here" && timeout 900 "$here/bench" $torch 2>&1) | tee "$out/bench.log"
RUN
chmod +x "$dir/run.sh"
echo "built $dir; run $dir/run.sh on a machine with AMX"
