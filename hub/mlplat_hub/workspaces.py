"""Workspace folders on one machine: ``<root>/users/<name>`` per user, ``<root>/teams/<team>`` per team.

A user's folder holds a ``teams/`` folder with one link per team they belong to,
so a team's notebooks and data live once and every member opens them from their
own workspace. Leaving a team removes its link at the next server start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mlplat.errors import HubError
from mlplat.kernels import install_kernels
from mlplat_hub.accounts import closed_to_accounts

TEAMS = "teams"
KERNELS = "kernels"


def _safe_name(name: str, kind: str) -> str:
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise HubError(f"The {kind} name {name!r} cannot name a folder; rename the {kind} in JupyterHub "
                       "(no '/', not starting with '.').")
    return name


def user_folder(root: Path, user: str) -> Path:
    """Where ``user``'s server starts: their notebooks, and their teams' links."""
    return root / "users" / _safe_name(user, "user")


def team_folder(root: Path, team: str) -> Path:
    """The project folder ``team`` shares."""
    return root / TEAMS / _safe_name(team, "team")


def link_team_folders(root: Path, user: str, teams: list[str]) -> Path:
    """Create ``user``'s folder and link each of ``teams``' folders into its ``teams/``; return the folder.

    Links to teams the user has left are removed; anything else the user put there stays.
    """
    links = user_folder(root, user) / TEAMS
    links.mkdir(parents=True, exist_ok=True)
    wanted = {team: team_folder(root, team) for team in teams}
    for link in links.iterdir():
        if link.is_symlink() and link.name not in wanted and link.readlink().parent == root / TEAMS:
            link.unlink()
    for team, target in wanted.items():
        target.mkdir(parents=True, exist_ok=True)
        link = links / team
        if link.is_symlink() and link.readlink() != target:
            link.unlink()
        elif link.exists() and not link.is_symlink():
            raise HubError(f"{link} is in the way of team {team!r}'s folder; move it elsewhere and start again.")
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    return links.parent


def open_to_accounts(root: Path) -> Path:
    """Make ``root``, ``users/`` and ``teams/`` passable (0711) and install the kernel specs in ``kernels/``
    for every account; return the ``JUPYTER_PATH`` holding them. Refuse a root that accounts cannot reach."""
    for folder in (root, root / "users", root / TEAMS):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o711)
    closed = closed_to_accounts(root)
    if closed is not None:
        raise HubError(f"Workspaces run as their users' accounts cannot reach {root}: {closed} is closed to other "
                       "accounts. Set MLPLAT_HUB_ROOT to a folder outside it (such as /srv/mlplat/workspaces).")
    kernels = root / KERNELS
    install_kernels(str(kernels))
    for folder, _, files in os.walk(kernels):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o644)
    return kernels / "share" / "jupyter"


def give_user_folder(root: Path, user: str, uid: int, gid: int) -> Path:
    """``user``'s folder, made if missing, owned by their account and closed to every other (0700)."""
    folder = user_folder(root, user)
    folder.mkdir(exist_ok=True)
    os.chown(folder, uid, gid, follow_symlinks=False)
    os.chmod(folder, 0o700)
    return folder


def share_team_folder(root: Path, team: str, gid: int) -> Path:
    """``team``'s folder, made if missing, for its OS group ``gid`` alone: root-owned, setgid, 2770."""
    folder = team_folder(root, team)
    folder.mkdir(exist_ok=True)
    os.chown(folder, 0, gid, follow_symlinks=False)
    os.chmod(folder, 0o2770)
    return folder


def main(argv: list[str]) -> None:
    """``python -m mlplat_hub.workspaces ROOT USER [TEAM ...]``: link the teams' folders, as the user's account."""
    root, user, *teams = argv
    try:
        link_team_folders(Path(root), user, teams)
    except HubError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main(sys.argv[1:])
