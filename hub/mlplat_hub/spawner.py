"""The local workspace spawners: each user's Jupyter server as a process on the hub's machine.

:class:`WorkspaceSpawner` runs every server as the hub's own OS user, so hub users need no system
accounts and nobody is isolated from anybody: it is for one machine and people who trust each other.
:class:`AccountSpawner` (``MLPLAT_HUB_ACCOUNTS=1``) runs each as its user's own OS account, in the team
groups of the user's teams (see :mod:`mlplat_hub.accounts`). KubeSpawner (``configure_kubernetes``)
isolates users in pods.
"""

from __future__ import annotations

import asyncio
import html
import os
import pwd
import subprocess
import sys
from pathlib import Path

from jupyterhub.spawner import SimpleLocalProcessSpawner, set_user_setuid
from traitlets import Unicode, default

from mlplat.errors import HubError
from mlplat_hub.accounts import DEFAULT_TEMPLATE, account_name, ensure_account, join_team_groups
from mlplat_hub.environment import teams
from mlplat_hub.profiles import DEFAULT_PROFILE, PROFILES, profile_from_options
from mlplat_hub.workspaces import give_user_folder, link_team_folders, share_team_folder, user_folder

SHELL = "/bin/bash"  # for Lab's terminals: accounts have no login shell
WORKSPACE_UMASK = 0o007  # what a member writes in a team folder, the team reads and writes; others nothing


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

    def prepare_folders(self, user: str, names: list[str]) -> None:
        """Make ``user``'s folder and link their teams' folders (``names``) into it."""
        link_team_folders(Path(self.workspace_root), user, names)

    async def start(self):
        # Off the event loop (with accounts it runs commands); the hub's database is read here, on the loop.
        await asyncio.to_thread(self.prepare_folders, self.user.name, teams(self))
        return await super().start()


class AccountSpawner(WorkspaceSpawner):
    """A :class:`WorkspaceSpawner` whose server runs as its user's OS account, never root, with the team groups of
    the user's teams as supplementary groups; needs a hub run as root."""

    account_template = Unicode(DEFAULT_TEMPLATE, config=True, help="The OS account of hub user {username}.")

    @property
    def account(self) -> str:
        return account_name(self.account_template, self.user.name)

    @default("args")
    def _default_args(self) -> list[str]:
        return []

    def make_preexec_fn(self, name):
        become = set_user_setuid(self.account, chdir=False)  # uid, gid and the groups of getgrouplist()
        folder = self.home_dir

        def preexec():
            become()
            os.umask(WORKSPACE_UMASK)
            os.chdir(folder)

        return preexec

    def user_env(self, env):
        account = pwd.getpwnam(self.account)
        return {**env, "USER": account.pw_name, "HOME": account.pw_dir, "SHELL": SHELL}

    def prepare_folders(self, user: str, names: list[str]) -> None:
        """Create ``user``'s account (and their teams' groups) when missing, give it its folder and the teams'
        folders their groups, then link those into its folder as the account."""
        root = Path(self.workspace_root)
        account = ensure_account(account_name(self.account_template, user), user_folder(root, user))
        for team, gid in join_team_groups(account.pw_name, names).items():
            share_team_folder(root, team, gid)
        give_user_folder(root, user, account.pw_uid, account.pw_gid)
        # The links are made by the account itself: the hub follows no link a user put in their folder.
        done = subprocess.run([sys.executable, "-m", "mlplat_hub.workspaces", str(root), user, *names],
                              user=account.pw_uid, group=account.pw_gid, extra_groups=[], capture_output=True,
                              text=True, env={k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")},
                              cwd="/")
        if done.returncode:
            raise HubError(done.stderr.strip() or f"Linking {user}'s team folders failed.")
