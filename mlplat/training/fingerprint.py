"""Fingerprints that tie a model to exactly what made it: data, code, environment."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of the exact rows and columns (values, order, column names and dtypes).

    Plain numeric columns are hashed as their raw bytes (fast); other columns
    (strings, nullable or timezone-aware types) through pandas' row hashes.
    """
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    for _, column in frame.items():
        if isinstance(column.dtype, np.dtype) and column.dtype.kind in "biuf":
            digest.update(np.ascontiguousarray(column.to_numpy()).data)
        else:
            digest.update(pd.util.hash_pandas_object(column, index=False).to_numpy().data)
    return digest.hexdigest()


def code_fingerprint() -> dict[str, Any]:
    """The notebook or script being run: its path, content hash, and git commit when in a repository."""
    path = _running_file()
    info: dict[str, Any] = {"path": str(path) if path else None, "sha256": None, "git_commit": None, "git_dirty": None}
    if path is None or not path.is_file():
        return info
    info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    git = ["git", "-C", str(path.parent)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run([*git, "status", "--porcelain", "--", str(path)], capture_output=True,
                                    text=True, timeout=5)
            info["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def _running_file() -> Path | None:
    # Jupyter Server tells a kernel which notebook it runs for; papermill and scripts have __main__.
    notebook = os.environ.get("JPY_SESSION_NAME") or os.environ.get("MLPLAT_NOTEBOOK")
    if notebook:
        return Path(notebook).resolve()
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(main).resolve() if main else None


@functools.cache
def environment() -> tuple[str, ...]:
    """``name==version`` of every installed distribution, sorted: the full pip environment (read once)."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower()] = f"{name}=={dist.version}"
    return tuple(found[k] for k in sorted(found))


def requirements(*packages: str) -> list[str]:
    """Pinned requirements for the packages a model needs to load (those installed)."""
    pinned = []
    for package in packages:
        try:
            pinned.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return pinned
