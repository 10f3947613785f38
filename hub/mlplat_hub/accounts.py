"""OS accounts for hub users and OS groups for teams, on one machine (``MLPLAT_HUB_ACCOUNTS=1``).

Each hub user's server runs as an account of its own, named by a template (``mlplat-{username}``),
created when missing (``useradd``: no login shell, home = the user's workspace folder) and never
root nor a system account. Each team is the OS group ``mlplat-team-<team>``; an account is in exactly
the team groups of its user's hub groups, so leaving a team drops the group at the next server start.
Only a hub run as root can do this; :func:`check_can_manage` and :func:`check_runnable` say so first.
"""

from __future__ import annotations

import grp
import importlib.util
import pwd
import re
import stat
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from mlplat.errors import HubError
from mlplat.jobs.owners import FIRST_UID  # below: system accounts, which no workspace (nor job) runs as

PREFIX = "mlplat-"
TEAM_GROUP = PREFIX + "team-"
DEFAULT_TEMPLATE = PREFIX + "{username}"
# What useradd and groupadd accept everywhere (POSIX's portable names, lower case, at most 32 characters).
_LEGAL = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_LEGAL_RULE = "lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32 characters"
NOLOGIN = "/usr/sbin/nologin"
_NOBODY = 65534


def account_name(template: str, username: str) -> str:
    """The OS account of hub user ``username``: ``template`` with ``{username}`` filled in, checked."""
    name = template.replace("{username}", username)
    if not _LEGAL.fullmatch(name):
        raise HubError(f"Hub user {username!r} would run as OS account {name!r}, which is not a legal account name "
                       f"({_LEGAL_RULE}). Rename the user, or change MLPLAT_HUB_ACCOUNT_NAME (now {template!r}).")
    return name


def check_template(template: str) -> None:
    """Refuse a ``MLPLAT_HUB_ACCOUNT_NAME`` that does not name one account per user."""
    if template.count("{username}") != 1:
        raise HubError(f"MLPLAT_HUB_ACCOUNT_NAME={template!r} must hold '{{username}}' once, as in "
                       f"{DEFAULT_TEMPLATE!r}: each hub user needs an OS account of their own.")
    account_name(template, "alice")


def team_group(team: str) -> str:
    """The OS group of ``team``'s folder and members."""
    name = TEAM_GROUP + team
    if not _LEGAL.fullmatch(name):
        raise HubError(f"Team {team!r} would be the OS group {name!r}, which is not a legal group name "
                       f"({_LEGAL_RULE}). Rename the hub group.")
    return name


def check_can_manage(euid: int) -> None:
    """Refuse unless this process (effective uid ``euid``) may create accounts and switch to them."""
    if euid != 0:
        raise HubError("MLPLAT_HUB_ACCOUNTS=1 runs each user's workspace as an OS account of its own, which only "
                       "a hub run as root can create and switch to. Start the hub as root (`sudo mlplat hub`), or "
                       "without MLPLAT_HUB_ACCOUNTS for the one-user hub, whose workspaces run as you.")


def closed_to_accounts(path: Path) -> Path | None:
    """The first folder above ``path`` that other accounts may not pass through (no ``o+x``), or None."""
    return next((folder for folder in path.parents if not folder.stat().st_mode & stat.S_IXOTH), None)


def check_runnable(python: str, imports: str) -> None:
    """Refuse unless another account (``nobody``) can run ``python``, as this very interpreter (not another one
    that a path it cannot reach falls back to), and import ``imports`` with it."""
    try:
        done = subprocess.run(["setpriv", f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups", "--",
                               python, "-c", f"import sys, {imports}; print(sys.version)"],
                              capture_output=True, text=True, timeout=120, cwd="/")
    except FileNotFoundError:
        raise HubError("setpriv (util-linux) is needed to check what accounts can run: "
                       "`apt-get install util-linux`.") from None
    if done.returncode == 0 and done.stdout.strip() == sys.version:
        return
    if done.returncode:
        why = (done.stderr.strip().splitlines() or ["it failed"])[-1]
    else:
        why = f"for them it runs Python {done.stdout.split()[0]}, not this {sys.version.split()[0]}"
    raise HubError(
        f"Workspaces run as their users' accounts cannot run this hub's Python {python} ({why}). Build the "
        "environment with an interpreter every account can run: `rm -rf .venv .venv-triton && make install` "
        "(the Makefile prefers Debian's /usr/bin/python3: `apt-get install python3-venv python3-dev`), or "
        "`make install PYTHON=<a python outside /root>`." + _closed_hint(python, imports))


def _closed_hint(python: str, imports: str) -> str:
    """What to open when the interpreter or the packages ``imports`` names lie in a folder accounts cannot pass."""
    modules = [importlib.util.find_spec(name.strip()) for name in imports.split(",")]
    for path in (Path(python), *(Path(m.origin) for m in modules if m is not None and m.origin)):
        closed = closed_to_accounts(path)
        if closed is not None:
            return (f" {path} lies in {closed}, which other accounts may not pass through: `chmod o+x {closed}`, "
                    "or install in a folder they can.")
    return ""


def ensure_account(name: str, home: Path) -> pwd.struct_passwd:
    """The account ``name``, created with ``home`` (not made: the caller owns its folder) when missing."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        _run(["useradd", "--home-dir", str(home), "--no-create-home", "--shell", NOLOGIN, "--user-group",
              "--comment", "mlplat hub workspace", name])
        account = pwd.getpwnam(name)
    if account.pw_uid < FIRST_UID:
        raise HubError(f"OS account {name!r} is a system account (uid {account.pw_uid}): no workspace runs as one. "
                       "Change MLPLAT_HUB_ACCOUNT_NAME so that hub users map to accounts of their own.")
    return account


def join_team_groups(account: str, teams: Iterable[str]) -> dict[str, int]:
    """Put ``account`` in the groups of ``teams`` (created when missing) and out of every other team's group;
    return each team's gid."""
    gids = {}
    for team in teams:
        group = team_group(team)
        try:
            entry = grp.getgrnam(group)
        except KeyError:
            _run(["groupadd", group])
            entry = grp.getgrnam(group)
        if account not in entry.gr_mem:
            _run(["gpasswd", "--add", account, group])
        gids[team] = entry.gr_gid
    wanted = {team_group(team) for team in gids}
    for entry in grp.getgrall():
        if entry.gr_name.startswith(TEAM_GROUP) and entry.gr_name not in wanted and account in entry.gr_mem:
            _run(["gpasswd", "--delete", account, entry.gr_name])
    return gids


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise HubError(f"`{' '.join(command)}` failed: {done.stderr.strip()}. Fix that on this machine and start "
                       "the server again.")
