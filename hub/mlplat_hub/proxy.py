"""Find configurable-http-proxy, JupyterHub's proxy (an npm package), and run it with a private pid file."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from jupyterhub.proxy import ConfigurableHTTPProxy

from mlplat.errors import ServiceBinaryNotFound

PROXY = "configurable-http-proxy"


def proxy_command(configured: str | None = None) -> str:
    """``configured`` (``MLPLAT_HUB_PROXY``), else the one `make hub-proxy` installs in ``.node`` beside the venv,
    else the one on PATH."""
    if configured:
        if not Path(configured).is_file():
            raise ServiceBinaryNotFound(f"MLPLAT_HUB_PROXY={configured!r} does not exist; point it at the "
                                        f"{PROXY} executable, or unset it.")
        return configured
    beside_venv = Path(sys.prefix).parent / ".node" / "node_modules" / ".bin" / PROXY
    found = str(beside_venv) if beside_venv.is_file() else shutil.which(PROXY)
    if not found:
        raise ServiceBinaryNotFound(
            f"JupyterHub needs {PROXY} (Node.js). Install it with `make hub-proxy` "
            f"(npm install --prefix .node {PROXY}@4) or `npm install -g {PROXY}`, or set MLPLAT_HUB_PROXY to its path.")
    return found


class PrivateProxy(ConfigurableHTTPProxy):
    """JupyterHub's proxy, its pid file written 0600 like the rest of the hub's state (JupyterHub's own is 0644)."""

    def _write_pid_file(self):
        fd = os.open(self.pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # one left by an earlier hub keeps its mode on open: tighten it too
        with os.fdopen(fd, "w") as handle:
            handle.write(str(self.proxy_process.pid))
