"""File modes: what the platform writes under ``$MLPLAT_HOME`` is its owner's alone (dirs 0700, files 0600).

Three layers, each enough on its own for what it covers:

- the home itself is 0700 (:func:`private_home`, called by ``mlplat.connect`` and ``mlplat up``), so nothing
  inside it can be reached by another local account whatever the modes inside; a home made before is
  tightened to 0700 the next time it is opened;
- every service the supervisor starts (Redis, MLflow, Triton, scheduler, monitor, stream) runs with umask
  :data:`PRIVATE_UMASK`, so what it writes (Redis's append-only file, MLflow's database and artifacts, its log)
  is 0600/0700;
- where the library itself writes under the home (the SQLite registry, Parquet, MLflow artifacts logged from
  a notebook, job runs, run/ files, the model repository), it does so inside :func:`private_umask`.

Check a home with ``find ~/.mlplat -perm /077`` (prints nothing) and ``stat -c %a ~/.mlplat`` (700).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077  # what services start with and what the library writes under: group and others get nothing

_lock = threading.Lock()
_depth = 0
_saved: int | None = None


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and folders made inside get no group or other bits (the umask gains 0o077 for the duration).

    The umask is per process, so nested and concurrent uses (threads) share one change: the first to enter
    tightens it, the last to leave restores it. Files made meanwhile by other threads come out private too.
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = os.umask(PRIVATE_UMASK)
            os.umask(_saved | PRIVATE_UMASK)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                os.umask(_saved)
                _saved = None


def private_inside(home: Path, path: Path) -> contextlib.AbstractContextManager[None]:
    """:func:`private_umask` for writes to ``path`` inside ``home``; nothing for a folder outside it, which
    another program may have to read (a model repository shared with a Triton the platform was given)."""
    inside = path.resolve().is_relative_to(home.resolve())
    return private_umask() if inside else contextlib.nullcontext()


def private_home(home: Path) -> None:
    """Make ``home`` (and missing parents' last part) a folder only its owner can enter: created 0700, or an
    existing one tightened to 0700 when it allows group or others anything (a home made before this)."""
    try:
        with private_umask():
            home.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(home.stat().st_mode)
        if mode & PRIVATE_UMASK and home.stat().st_uid == os.geteuid():
            os.chmod(home, mode & ~PRIVATE_UMASK)
    except OSError as exc:  # not ours to change: say so, do not fail
        log.warning("Cannot make %s private (mode 0700): %s", home, exc)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 when it does not exist yet (SQLite then gives its journal and WAL
    files the same mode); leave an existing one as it is."""
    with private_umask():
        path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def secret_file(path: Path) -> str:
    """The secret kept in ``path`` (0600), made on first use; empty if the file is. Whole or not at all: of
    processes racing to make it, the first wins and the others read its secret."""
    if path.exists():
        return path.read_text().strip()
    with private_umask():
        path.parent.mkdir(parents=True, exist_ok=True)
    made = secrets.token_urlsafe(32)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(made)
        os.link(partial, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        partial.unlink(missing_ok=True)
    return made
