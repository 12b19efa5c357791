#!/usr/bin/env bash
# GPU check: every CUDA path of the project in one run of at most 10 minutes, with the epoch times,
# clips/s, peak memory and FLOPs utilisation written as JSON and Markdown (benchmarks/gpu_check.py
# does the work; docs/performance.md, "GPU check", says how to read it).
#
#   bash benchmarks/gpu_check.sh                                  # on a GPU machine: reports in $OUT or gpu-check-out/
#   bash benchmarks/gpu_check.sh --out DIR --work /tmp/gc-work    # reports in DIR, data and runs elsewhere
#   bash benchmarks/gpu_check.sh --device cpu --tiny --out DIR    # the CPU rehearsal (tests/test_gpu_check.py)
#   bash benchmarks/gpu_check.sh --stages 'step:*:compiled'       # only some stages
#   bash benchmarks/gpu_check.sh --help                           # every option
#
# Python: .venv/bin/python when the project's environment exists, else python3. Nothing is installed,
# unless --setup is given: then 'bash scripts/setup.sh' runs first (it needs pip's network access)
# and the check runs in the .venv/ it made.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

setup=0
args=()
for arg in "$@"; do
    if [ "$arg" = "--setup" ]; then setup=1; else args+=("$arg"); fi
done
if [ "$setup" = 1 ]; then
    bash "$ROOT/scripts/setup.sh" || { echo "error: scripts/setup.sh failed (see above); nothing was checked" >&2; exit 1; }
fi
if [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
elif command -v python3 >/dev/null 2>&1; then
    PY="$(command -v python3)"
else
    echo "error: no Python: neither $ROOT/.venv/bin/python nor python3 exists (--setup makes .venv/)" >&2
    exit 1
fi
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "${args[@]+"${args[@]}"}"
