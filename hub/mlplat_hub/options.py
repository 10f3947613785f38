"""How the hub runs, read from ``MLPLAT_HUB_*`` variables (a mistyped one is refused).

=========================  ==========================================================  ==========================
variable                   meaning                                                      default
=========================  ==========================================================  ==========================
MLPLAT_HUB_MODE            ``local`` (processes here) or ``kubernetes`` (KubeSpawner)    local
MLPLAT_HUB_IP / _PORT      where the hub listens (local)                                127.0.0.1 / 8000
MLPLAT_HUB_STATE           cookie secret, database, proxy pid, password (local)         $MLPLAT_HOME/hub
MLPLAT_HUB_ROOT            ``users/<name>`` and ``teams/<team>`` folders (local)         $MLPLAT_HOME/workspaces;
                                                                                        accounts: /srv/mlplat/workspaces
MLPLAT_HUB_PASSWORD        the shared login password (local)                            generated, in the state dir
MLPLAT_HUB_ACCOUNTS        ``1``: each user's server runs as an OS account of its own   0
                           (created by the hub, which must run as root), teams are OS
                           groups; needs MLPLAT_HUB_SERVER=1 (local)
MLPLAT_HUB_ACCOUNT_NAME    the OS account of hub user ``{username}`` (accounts)         mlplat-{username}
MLPLAT_HUB_AUTHENTICATOR   ``shared`` (any name, the shared password), ``native``       shared; accounts: native
                           (sign-up, approved by MLPLAT_HUB_ADMINS), ``pam`` (the
                           machine's passwords) or an Authenticator's import path
MLPLAT_HUB_USERS           who may log in, comma-separated                              anyone with the password
MLPLAT_HUB_TEAMS           teams as YAML ``{team-a: [alice, bob]}``                     none
MLPLAT_HUB_CULL_TIMEOUT    seconds a server may idle before it is stopped; 0: never     3600
MLPLAT_HUB_SERVICES        hub services to run, comma-separated: mlflow, scheduler,     mlflow,scheduler,
                           monitor (prediction-log flusher and Prometheus metrics),    monitor,stream
                           stream (the consumer of stream feature views)
MLPLAT_HUB_ADMIN_TOKEN     API token of the ``mlplat-admin`` service (provisioning)     none
MLPLAT_HUB_PROXY           the configurable-http-proxy executable (local)               .node beside the venv, PATH
MLPLAT_HUB_IMAGE           workspace image (kubernetes)                                 required there
MLPLAT_HUB_TEAM_CLAIM      PersistentVolumeClaim holding the team folders (kubernetes)  mlplat-teams
MLPLAT_HUB_SERVICE_HOST    host the proxy reaches hub services at                       127.0.0.1; kubernetes: hub
MLPLAT_HUB_SERVER          ``1``: server mode, ``mlplat server`` judges every change    0
                           and workspaces send it their calls (``MLPLAT_SERVER_URL``)
MLPLAT_HUB_SERVER_URL      where workspaces reach ``mlplat server`` (kubernetes: its    http://mlplat-server:8585
                           Service); local: a loopback port kept across restarts
MLPLAT_HUB_SERVER_TOKEN    API token of the ``mlplat-server`` service (kubernetes,      required there
                           where the server runs as its own Deployment)
MLPLAT_HUB_TEAM_ROLES      roles in teams as YAML ``{team-b: {carol: viewer}}``; the    editor for every member
                           key ``"*"`` sets the team's default (viewer/editor/owner)
MLPLAT_HUB_ADMINS          platform admins (group ``mlplat-admins``), comma-separated;  none
                           with a real authenticator also hub admins (who approve
                           sign-ups and can reach every server)
=========================  ==========================================================  ==========================
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from mlplat.config import Settings
from mlplat.errors import ConfigError
from mlplat.identity import ROLES
from mlplat_hub.accounts import DEFAULT_TEMPLATE, check_can_manage, check_template

PREFIX = "MLPLAT_HUB_"
MODES = ("local", "kubernetes")
SERVICES = ("mlflow", "scheduler", "monitor", "stream")
_MIN_PASSWORD = 8  # SharedPasswordAuthenticator's minimum
TEAM_DEFAULT = "*"  # in MLPLAT_HUB_TEAM_ROLES: the role of a team's members not named
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
AUTHENTICATORS = ("shared", "native", "pam")  # or an import path
ACCOUNTS_ROOT = Path("/srv/mlplat/workspaces")  # outside any home: every account passes through to its folder


@dataclasses.dataclass(frozen=True)
class HubOptions:
    """The hub's own settings; the platform's come from :func:`mlplat.config.load_settings`."""

    state_dir: Path
    root: Path
    mode: str = "local"
    ip: str = "127.0.0.1"
    port: int = 8000
    password: str | None = None
    users: tuple[str, ...] | None = None
    teams: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    cull_timeout: int = 3600
    services: tuple[str, ...] = SERVICES
    admin_token: str | None = None
    proxy: str | None = None
    image: str | None = None
    team_claim: str = "mlplat-teams"
    service_host: str | None = None
    server: bool = False
    server_url: str | None = None
    server_token: str | None = None
    team_roles: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    admins: tuple[str, ...] = ()
    accounts: bool = False
    account_name: str = DEFAULT_TEMPLATE
    authenticator: str = "shared"  # from_env: native with accounts

    @classmethod
    def from_env(cls, settings: Settings, env: Mapping[str, str] = os.environ) -> HubOptions:
        """Read ``MLPLAT_HUB_*`` from ``env``; ConfigError naming the variable when one is wrong."""
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "state_dir"] + ["state"]
        raw = {key[len(PREFIX):].lower(): value for key, value in env.items() if key.startswith(PREFIX)}
        for key in raw:
            if key not in fields:
                hint = difflib.get_close_matches(key, fields, n=1)
                suggestion = f"; did you mean {PREFIX}{hint[0].upper()}?" if hint else ""
                raise ConfigError(f"Unknown variable {PREFIX}{key.upper()}{suggestion} Known: "
                                  f"{', '.join(PREFIX + f.upper() for f in fields)}.")
        values: dict = {k: v for k, v in raw.items() if k not in ("state", "root")}
        values["state_dir"] = Path(raw.get("state") or settings.home / "hub").expanduser().resolve()
        for key in ("server", "accounts"):
            if key in values:
                values[key] = _flag(values[key], key)
        root = raw.get("root") or (ACCOUNTS_ROOT if values.get("accounts") else settings.home / "workspaces")
        values["root"] = Path(root).expanduser().resolve()
        values.setdefault("authenticator", "native" if values.get("accounts") else "shared")
        for key in ("port", "cull_timeout"):
            if key in values:
                values[key] = _whole(values[key], key)
        for key in ("users", "services", "admins"):
            if key in values:
                values[key] = tuple(name.strip() for name in values[key].split(",") if name.strip())
        if "teams" in values:
            values["teams"] = _teams(values["teams"])
        if "team_roles" in values:
            values["team_roles"] = _team_roles(values["team_roles"])
        options = cls(**values).checked()
        if options.accounts:
            check_can_manage(os.geteuid())
        return options

    def checked(self) -> HubOptions:
        """Self, after checking values that do not depend on the environment's format."""
        if self.mode not in MODES:
            raise ConfigError(f"{PREFIX}MODE={self.mode!r}; use one of {', '.join(MODES)}.")
        unknown = sorted(set(self.services) - set(SERVICES))
        if unknown:
            raise ConfigError(f"{PREFIX}SERVICES names unknown services {unknown}; choose from {', '.join(SERVICES)}.")
        if self.password is not None and len(self.password) < _MIN_PASSWORD:
            raise ConfigError(f"{PREFIX}PASSWORD must have at least {_MIN_PASSWORD} characters.")
        if self.mode == "kubernetes" and not self.image:
            raise ConfigError(f"{PREFIX}IMAGE is required on Kubernetes: the workspace image, with mlplat "
                              "and its kernels installed (`pip install 'mlplat[hub]' && mlplat install-kernels`).")
        self._check_server()
        if self.accounts:
            self._check_accounts()
        elif self.authenticator != "shared" and self.mode == "local":
            raise ConfigError(f"{PREFIX}AUTHENTICATOR={self.authenticator!r} logs people in to servers that all run "
                              f"as the hub's account; set {PREFIX}ACCOUNTS=1 to give each their own.")
        return self

    def _check_accounts(self) -> None:
        if self.mode != "local":
            raise ConfigError(f"{PREFIX}ACCOUNTS is for workspaces on this machine ({PREFIX}MODE=local); on "
                              "Kubernetes each workspace is a pod of its own already.")
        if not self.server:
            raise ConfigError(f"{PREFIX}ACCOUNTS=1 needs {PREFIX}SERVER=1: workspaces run as their users' accounts "
                              "reach the platform through mlplat server, never with the hub's stores.")
        if self.authenticator not in AUTHENTICATORS[1:] and "." not in self.authenticator:
            raise ConfigError(f"{PREFIX}AUTHENTICATOR={self.authenticator!r}: with {PREFIX}ACCOUNTS=1 each person "
                              "logs in as themselves; use native (sign-up approved by an admin), pam or an "
                              "Authenticator's import path (such as oauthenticator.GitHubOAuthenticator).")
        check_template(self.account_name)

    def _check_server(self) -> None:
        for team, roles in self.team_roles.items():
            wrong = {user: role for user, role in roles.items() if role not in ROLES}
            if wrong:
                raise ConfigError(f"{PREFIX}TEAM_ROLES gives {wrong} in {team!r}; roles are {', '.join(ROLES)}.")
            strangers = sorted(set(roles) - {TEAM_DEFAULT, *self.teams.get(team, ())}) if team in self.teams else []
            if strangers:
                raise ConfigError(f"{PREFIX}TEAM_ROLES gives {', '.join(strangers)} a role in {team!r}, but "
                                  f"{PREFIX}TEAMS does not list them in it: add them there, or remove the role.")
        if self.server and self.mode == "kubernetes" and not self.server_token:
            raise ConfigError(f"{PREFIX}SERVER_TOKEN is required for server mode on Kubernetes: the hub API token "
                              "that the mlplat-server Deployment also gets (the Secret mlplat-server-hub-token, see "
                              "serving/kubernetes/server.yaml). Make one with `openssl rand -hex 32`.")

    def login_password(self) -> str:
        """The shared password: ``MLPLAT_HUB_PASSWORD``, else one generated once and kept in the state dir."""
        if self.password:
            return self.password
        stored = self.state_dir / "password"
        if not stored.is_file():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            stored.touch(mode=0o600)
            stored.write_text(secrets.token_urlsafe(12))
        return stored.read_text().strip()


def _whole(text: str, key: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{PREFIX}{key.upper()} must be a whole number >= 0, got {text!r}.")
    return int(text)


def _flag(text: str, key: str) -> bool:
    if text.strip().lower() not in _TRUE + _FALSE:
        raise ConfigError(f"{PREFIX}{key.upper()} must be 1 (on) or 0 (off), got {text!r}.")
    return text.strip().lower() in _TRUE


def _team_roles(text: str) -> dict[str, dict[str, str]]:
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        data = None
    if not isinstance(data, Mapping) or not all(
            isinstance(team, str) and isinstance(roles, Mapping)
            and all(isinstance(user, str) and isinstance(role, str) for user, role in roles.items())
            for team, roles in data.items()):
        raise ConfigError(f"{PREFIX}TEAM_ROLES must be YAML mapping each team to its members' roles, such as "
                          f"'{{team-b: {{carol: viewer, \"*\": editor}}}}', got {text!r}.")
    return {team: dict(roles) for team, roles in data.items()}


def _teams(text: str) -> dict[str, tuple[str, ...]]:
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        data = None
    if not isinstance(data, Mapping) or not all(
            isinstance(team, str) and isinstance(members, list) and all(isinstance(m, str) for m in members)
            for team, members in data.items()):
        raise ConfigError(f"{PREFIX}TEAMS must be YAML mapping each team to its users, such as "
                          f"'{{team-a: [alice, bob], team-b: [carol]}}', got {text!r}.")
    return {team: tuple(members) for team, members in data.items()}
