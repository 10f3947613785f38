"""Test helpers for Jupyter servers with the mlplat extension: a demo platform, a real ``jupyter lab``, notebooks.

Used by test_lab_extension.py (the REST API) and test_browser.py (through the hub). Test files import
helper modules like this one by name: pytest puts ``tests/`` on ``sys.path`` (rootdir-relative, no
``__init__.py``), as it does for ``oracle.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
import requests
from platforms import demo_platform

import mlplat
from mlplat.config import Settings, load_settings
from mlplat.services import free_port
from mlplat.serving.triton import TritonService, triton_installed

FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate"]
ANNOUNCEMENTS = "@jupyterlab/apputils-extension:announcements"  # fetches news from the internet
PYTHON3 = {"name": "python3", "display_name": "Python 3", "language": "python"}


@dataclass
class Lab:
    """A running ``jupyter lab``: where it listens, its token, and the folder it serves."""

    url: str
    token: str
    root: Path

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A token-authenticated request to ``/mlplat/api/<path>``."""
        return requests.request(method, f"{self.url}mlplat/api/{path}", timeout=120,
                                headers={"Authorization": f"token {self.token}"}, **kwargs)


def make_platform(folder: Path, redis_url: str) -> tuple[mlplat.Platform, dict[str, str]]:
    """The demo's platform (:func:`platforms.demo_platform`, its home in ``folder``) and its settings, for
    :func:`platform_variables`."""
    p = demo_platform(folder / "mlplat-home", redis_url, drivers=50, customers=20, days=4, trips=600, seed=3)
    return p, {"home": str(p.settings.home), "online_store": redis_url, "online_prefix": p.settings.online_prefix}


def platform_variables(settings: dict[str, str]) -> dict[str, str]:
    """``settings`` (as passed to ``mlplat.connect``) as the ``MLPLAT_*`` variables a server reads them from."""
    return {f"MLPLAT_{key.upper()}": value for key, value in settings.items()}


def disable_announcements(config_dir: Path) -> None:
    """Turn off Lab's news announcements (an internet fetch and a pop-up) for servers reading ``config_dir``
    (a ``JUPYTER_CONFIG_DIR``, by default ``~/.jupyter``)."""
    labconfig = config_dir / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(json.dumps({"disabledExtensions": {ANNOUNCEMENTS: True}}))


@contextmanager
def running_lab(root: Path, settings: dict[str, str]) -> Iterator[Lab]:
    """``jupyter lab`` serving ``root`` on a free loopback port with a token, its own HOME and Jupyter folders,
    and MLPLAT_* variables for ``settings``; on exit it stops, and so does the Triton its deploys started."""
    home = root.with_name(f"{root.name}-home")
    disable_announcements(home / ".jupyter")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MLPLAT_", "JUPYTER"))}
    env.update({"HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
                "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
                **platform_variables(settings)})
    port = free_port()
    lab = Lab(f"http://127.0.0.1:{port}/", secrets.token_hex(16), root)
    log_path = root.with_name(f"{root.name}-jupyter-lab.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyter-lab"), "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={lab.token}",
             f"--ServerApp.root_dir={root}"],
            env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(lab, process, log_path)
        yield lab
    finally:
        process.terminate()
        process.wait(30)
        TritonService(load_settings(**settings)).stop()


def _wait_until_up(lab: Lab, process: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if requests.get(f"{lab.url}api/status", params={"token": lab.token}, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"jupyter lab did not start; its log ends with:\n{log_path.read_text()[-3000:]}")


def write_notebook(path: Path, *cells: str, kernelspec: dict[str, str] = PYTHON3) -> None:
    """A notebook for ``kernelspec`` whose first cell is tagged ``parameters``."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = dict(kernelspec)
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    notebook.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(notebook, path)


def skip_without_triton(settings: Settings) -> None:
    """Skip the calling test when no Triton server is installed for ``settings`` (deploys need one)."""
    if not triton_installed(settings):
        pytest.skip(f"no Triton in {settings.triton_env}: `make triton` creates it")
