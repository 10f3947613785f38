"""A shared install's scheduled jobs run as their owners (the scheduler's ``job_server_url`` setting).

A job's kernel then gets a clean environment, not the scheduler's (no ``MLPLAT_HOME``, no store credential):
the paths it needs, ``MLPLAT_SERVER_URL`` and, in ``MLPLAT_SERVER_TOKEN``, a job token
(:mod:`mlplat.job_tokens`) naming the schedule's owner and lasting as long as the job may run. So
``mlplat.connect()`` in the notebook is server mode acting as that user, with their permissions, audited
under their name. With ``job_account`` (a hub with one OS account per user) the kernel also runs as the
owner's account (``setpriv``), its connection file in a folder only that account reads; an owner without
an account fails the run, saying so.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client import AsyncKernelManager

from mlplat.config import Settings
from mlplat.errors import JobError
from mlplat.job_tokens import JobTokens

FIRST_UID = 1000  # below: root and system accounts, which no user's job runs as (Debian's UID_MIN)
KEPT = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "JUPYTER_PATH")  # from the scheduler's environment
_NO_LIMIT = 7 * 24 * 3600.0  # a token's life per cell when cells may run for ever (job_timeout 0)


@dataclass(frozen=True)
class Owner:
    """Whom a job's kernel runs as: ``user`` calling ``server_url``; as the OS account ``account`` if given."""

    user: str
    server_url: str
    tokens: JobTokens
    lifetime: float  # seconds a job token lasts
    account: str = ""

    def passwd(self) -> pwd.struct_passwd | None:
        """The owner's OS account (None: the kernel runs as the scheduler); JobError if there is none to use."""
        if not self.account:
            return None
        try:
            found = pwd.getpwnam(self.account)
        except KeyError:
            raise JobError(f"{self.user} has no OS account {self.account!r} on this machine, and scheduled jobs "
                           f"run as their owner's account: {self.user} gets one by starting their workspace in the "
                           "hub once; the next slot then runs.") from None
        if found.pw_uid < FIRST_UID:
            raise JobError(f"OS account {self.account!r} of {self.user} is root or a system account (uid "
                           f"{found.pw_uid}), which no job runs as: an admin should give {self.user} another.")
        return found

    def environment(self, account: pwd.struct_passwd | None, runtime: Path) -> dict[str, str]:
        """The kernel's whole environment, with a fresh job token."""
        env = {name: os.environ[name] for name in KEPT if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["HOME"] = account.pw_dir if account else os.environ.get("HOME", str(runtime))
        if account:
            env.update(USER=account.pw_name, LOGNAME=account.pw_name)
        return {**env, "JUPYTER_RUNTIME_DIR": str(runtime), "MLPLAT_SERVER_URL": self.server_url,
                "MLPLAT_SERVER_TOKEN": self.tokens.make(self.user, self.lifetime)}


class OwnerKernelManager(AsyncKernelManager):
    """Starts the kernel as :attr:`owner` says (set on the subclass :func:`papermill_options` makes per job)."""

    owner: Owner
    _folder: Path | None = None

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        account = self.owner.passwd()
        if self._folder is None:  # the first start (a restart keeps its folder)
            self._folder = Path(tempfile.mkdtemp(prefix="mlplat-job-"))  # 0700
            self.connection_file = str(self._folder / f"kernel-{uuid.uuid4().hex}.json")
        env = self.owner.environment(account, self._folder)
        command, kw = await super()._async_pre_start_kernel(**{**kw, "env": env})
        if account is None:
            return command, kw
        for path in (self._folder, Path(self.connection_file)):
            os.chown(path, account.pw_uid, account.pw_gid)
        return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--",
                *command], kw

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart)
        if not restart and self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def papermill_options(settings: Settings, user: str, notebook: Path, timeout: float | None) -> dict[str, Any]:
    """What papermill needs to run ``notebook``'s kernel as ``user`` (nothing without ``job_server_url``);
    the job token lasts as long as the run may: ``timeout`` per code cell."""
    if not settings.job_server_url:
        return {}
    import nbformat

    cells = sum(1 for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code")
    owner = Owner(user, settings.job_server_url, JobTokens(settings.run_dir), (timeout or _NO_LIMIT) * (cells + 1),
                  settings.job_account.replace("{username}", user) if settings.job_account else "")
    return {"kernel_manager_class": type("JobKernelManager", (OwnerKernelManager,), {"owner": owner})}
