#!/usr/bin/env bash
# Create .venv-perf with Triton's perf_analyzer for `make bench` (benchmarks/serving.py runs it).
# The perf-analyzer wheels are manylinux_2_38 (glibc >= 2.38; Debian 12 has 2.36). tritonclient[all] 2.41, the
# last to bundle the binary, is manylinux1: it needs libb64 (Debian's libb64-0d) and CUDA's runtime library, which
# nvidia-cuda-runtime-cu12 ships (it is only loaded: no GPU is needed to benchmark a CPU Triton over gRPC).
# Never fails the build: without it the benchmark says why perf_analyzer was skipped.
set -uo pipefail

VENV="${1:-.venv-perf}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/perf_analyzer" ] && ldconfig -p | grep -q 'libb64.so.0d'; then
    exit 0
fi
if ! ldconfig -p | grep -q 'libb64.so.0d'; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get install -y -q libb64-0d >/dev/null || echo "warning: could not install libb64-0d" >&2
fi
echo "Creating $VENV with perf_analyzer (tritonclient[all]==2.41.0) ..."
if "$PYTHON" -m venv "$VENV" \
    && "$VENV/bin/python" -m pip install -q --upgrade pip \
    && "$VENV/bin/python" -m pip install -q --no-deps 'tritonclient==2.41.0' 'nvidia-cuda-runtime-cu12==12.*'; then
    exit 0
fi
echo "warning: could not install perf_analyzer into $VENV; the serving benchmark will say it skipped it" >&2
exit 0
