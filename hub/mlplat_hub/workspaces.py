"""Workspace folders on one machine: ``<root>/users/<name>`` per user, ``<root>/teams/<team>`` per team.

A user's folder holds a ``teams/`` folder with one link per team they belong to,
so a team's notebooks and data live once and every member opens them from their
own workspace. Leaving a team removes its link at the next server start.
"""

from __future__ import annotations

from pathlib import Path

from mlplat.errors import HubError

TEAMS = "teams"


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
