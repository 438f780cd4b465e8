#!/usr/bin/env bash
# One command for anyone with a GPU: run the GPU tests, the full benchmark and the pytest
# benchmarks, and leave everything in one folder to commit:
#
#     bash benchmarks/gpu_report.sh          # from the repository root
#
# Output: benchmarks/results/<device-slug>-<YYYY-MM-DD>/ (the next free -2, -3, ... if it exists):
#   log.txt                  everything printed below (nvidia-smi, versions, tests, benchmarks)
#   <slug>-<date>.json/.png  benchmarks/run.py's figures and chart
#   pytest-benchmark.json    pytest-benchmark's figures for `pytest benchmarks`
#
# Exit status: non-zero when the GPU tests fail (1), when there is no CUDA device (2), or when a
# benchmark step fails (3); the log is written in every case where the folder could be made.
# Python: $PYTHON if set, else .venv/bin/python if it exists, else python3.
# For a dry run of this script's plumbing on a machine without a GPU (not a report to commit):
#   GPU_REPORT_DEVICE=cpu GPU_REPORT_RUN_ARGS="--quick" bash benchmarks/gpu_report.sh
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi

DEVICE="${GPU_REPORT_DEVICE:-cuda}"
read -r -a RUN_ARGS <<< "${GPU_REPORT_RUN_ARGS:-}"

if [[ "$DEVICE" == cuda ]] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_report.sh: no CUDA device visible to $PY (torch.cuda.is_available() is False); nothing run" >&2
    exit 2
fi

slug="$("$PY" benchmarks/run.py --print-slug --device "$DEVICE")" || { echo "gpu_report.sh: cannot name the device" >&2; exit 2; }
base="benchmarks/results/${slug}-$(date +%F)"
dir="$base"
k=2
while [[ -e "$dir" ]]; do dir="${base}-${k}"; k=$((k + 1)); done
mkdir -p "$dir"
log="$dir/log.txt"

# Everything from here on goes to the terminal and to the log.
exec > >(tee -a "$log") 2>&1

section() { printf '\n===== %s  (%s)\n' "$1" "$(date -u +%FT%TZ)"; }

section "environment"
echo "command: bash benchmarks/gpu_report.sh; python: $PY; folder: $dir"
echo "git: $(git rev-parse HEAD 2>/dev/null || echo '?')$( [[ -n "$(git status --porcelain 2>/dev/null)" ]] && echo ' (dirty)')"
nvidia-smi 2>&1 || echo "(nvidia-smi not available)"
"$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton not importable:", e)
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0))
else:
    print("no CUDA device: a dry run of this script, not a GPU report")
EOF

section "GPU tests: pytest tests/test_gpu.py tests/test_triton_*.py -v"
"$PY" -m pytest tests/test_gpu.py tests/test_triton_*.py -v
tests_rc=$?
echo "GPU tests exit status: $tests_rc"

section "benchmark: python benchmarks/run.py --device $DEVICE ${RUN_ARGS[*]} --out $dir"
"$PY" benchmarks/run.py --device "$DEVICE" "${RUN_ARGS[@]}" --out "$dir"
run_rc=$?
echo "run.py exit status: $run_rc"

section "benchmark: python benchmarks/run.py --optimizer adamw --device $DEVICE ${RUN_ARGS[*]} --out $dir"
"$PY" benchmarks/run.py --optimizer adamw --device "$DEVICE" "${RUN_ARGS[@]}" --out "$dir" || run_rc=$?
echo "run.py --optimizer adamw exit status: $run_rc"

section "pytest benchmarks --benchmark-json $dir/pytest-benchmark.json"
"$PY" -m pytest benchmarks --benchmark-json "$dir/pytest-benchmark.json"
bench_rc=$?
echo "pytest benchmarks exit status: $bench_rc"

section "summary"
echo "GPU tests: $tests_rc | run.py: $run_rc | pytest benchmarks: $bench_rc"
ls -l "$dir"
echo "To commit (the PNG sits in a subfolder, which .gitignore's '*.png' rule ignores): git add -f $dir"

if [[ $tests_rc -ne 0 ]]; then
    exit 1
fi
if [[ $run_rc -ne 0 || $bench_rc -ne 0 ]]; then
    exit 3
fi
exit 0
