#!/usr/bin/env bash
# Create .venv-feast with Feast 0.67 for `make bench` (Feast needs pandas < 3, so it cannot share .venv).
# Never fails the build: without Feast the benchmark still runs and reports Feast as "not run".
set -uo pipefail

VENV="${1:-.venv-feast}"
PYTHON="${PYTHON:-python3}"

if "$VENV/bin/python" -c "import feast" 2>/dev/null; then
    exit 0
fi
echo "Creating $VENV with feast[redis]==0.67.* ..."
if "$PYTHON" -m venv "$VENV" \
    && "$VENV/bin/python" -m pip install -q --upgrade pip \
    && "$VENV/bin/python" -m pip install -q 'feast[redis]==0.67.*'; then
    exit 0
fi
echo "warning: could not install Feast into $VENV; the benchmark will report Feast as not run" >&2
exit 0
