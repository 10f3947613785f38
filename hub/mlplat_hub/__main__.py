"""``python -m mlplat_hub [--ip IP] [--port PORT]``: run JupyterHub configured from ``MLPLAT_HUB_*`` (what `mlplat hub` starts)."""

from __future__ import annotations

import argparse
import os
import signal

from jupyterhub.app import JupyterHub
from traitlets.config import Config

from mlplat.files import private_home
from mlplat_hub.config import configure_from_env
from mlplat_hub.options import PREFIX


def main() -> None:
    # Started in the background of a script, we inherit an ignored SIGINT and would pass it on to every
    # server and service; the hub stops them with SIGINT first, and would wait for nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(prog="python -m mlplat_hub", description=__doc__)
    parser.add_argument("--ip", help=f"Address to listen on (default: ${PREFIX}IP or 127.0.0.1).")
    parser.add_argument("--port", help=f"Port to listen on (default: ${PREFIX}PORT or 8000).")
    args = parser.parse_args()
    overrides = {f"{PREFIX}{key.upper()}": value for key, value in vars(args).items() if value}
    config = Config()
    options = configure_from_env(config, {**os.environ, **overrides})
    # Read no stray ./jupyterhub_config.py; anything JupyterHub writes relative lands in the state dir.
    private_home(options.state_dir)  # 0700: see configure_local
    os.chdir(options.state_dir)
    JupyterHub.instance(config=config)
    JupyterHub.launch_instance([])


if __name__ == "__main__":
    main()
