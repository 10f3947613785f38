"""The local workspace spawner: each user's Jupyter server as a process on the hub's machine.

It runs every server as the hub's own OS user, so hub users need no system
accounts (JupyterHub's ``LocalProcessSpawner`` needs one per user) and nobody is
isolated from anybody: it is for one machine and people who trust each other. Use
KubeSpawner (``configure_kubernetes``) for real isolation.
"""

from __future__ import annotations

import html
import os
import sys
from pathlib import Path

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Unicode, default

from mlplat_hub.environment import teams
from mlplat_hub.profiles import DEFAULT_PROFILE, PROFILES, profile_from_options
from mlplat_hub.workspaces import link_team_folders, user_folder


def profile_form() -> str:
    """The spawn page's profile choice (one radio button per profile)."""
    rows = []
    for p in PROFILES:
        checked = " checked" if p is DEFAULT_PROFILE else ""
        rows.append(f'<label style="display:block"><input type="radio" name="profile" value="{p.slug}"{checked}> '
                    f"<b>{html.escape(p.display_name)}</b>: {html.escape(p.description)}</label>")
    return "\n".join(rows)


def options_from_profile_form(formdata: dict[str, list[str]]) -> dict[str, str]:
    """The spawn page's answer as ``user_options``: the chosen profile only (the page also posts its ``_xsrf``)."""
    return {"profile": formdata["profile"][0]} if formdata.get("profile") else {}


class WorkspaceSpawner(SimpleLocalProcessSpawner):
    """Starts ``jupyterhub-singleuser`` in ``<workspace_root>/users/<name>``, with the user's team folders linked in."""

    workspace_root = Unicode(config=True, help="Folder holding users/<name> and teams/<team>.")

    @default("home_dir")
    def _default_home_dir(self) -> str:
        return str(user_folder(Path(self.workspace_root), self.user.name))

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        # The hub's own environment: the same mlplat, kernels and server extensions.
        return [str(Path(sys.executable).parent / "jupyterhub-singleuser")]

    @default("args")
    def _default_args(self) -> list[str]:
        # Jupyter refuses to run as root unless told; a hub run as root runs its servers as root.
        return ["--allow-root"] if os.geteuid() == 0 else []

    def get_args(self) -> list[str]:
        """The server's options, and its profile's (kernels offered, a managed Lab)."""
        return [*super().get_args(), *profile_from_options(self.user_options or {}).server_args]

    @default("options_form")
    def _default_options_form(self) -> str:
        return profile_form()

    @default("options_from_form")
    def _default_options_from_form(self):
        return options_from_profile_form

    async def start(self):
        link_team_folders(Path(self.workspace_root), self.user.name, teams(self))
        return await super().start()
