"""Who is calling: a JupyterHub token in, an :class:`~mlplat.identity.Identity` out.

:class:`HubAuthenticator` asks the hub who owns the token (``GET /hub/api/user`` with that token, as
JupyterHub's own ``HubAuth`` does), then, with the server's service token, which groups the user is in and
what those groups say of roles. Teams are hub groups. A member's role in a team is the group's
``mlplat_role`` property (default ``editor``), or the one its ``mlplat_roles`` property gives that user
(``{"carol": "viewer", "bob": "owner"}``). Hub admins and members of the ``mlplat-admins`` group administer
the platform. Answers are kept for ``ttl`` seconds so a busy client costs the hub one call a minute.

:class:`JobTokenAuthenticator` lets in a scheduled job's kernel too, as its schedule's owner: its job token
(:mod:`mlplat.job_tokens`) names the user, and the wrapped authenticator says who that user is now.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from mlplat.errors import NotAuthenticated, ServiceError
from mlplat.identity import ROLES, Identity
from mlplat.job_tokens import JobTokens, is_job_token

ADMIN_GROUP = "mlplat-admins"
DEFAULT_ROLE = "editor"


class Authenticator(Protocol):
    """Turns a bearer token into the identity it belongs to, or raises :class:`NotAuthenticated`."""

    def identify(self, token: str) -> Identity: ...

    def identity_of(self, name: str) -> Identity:
        """User ``name`` with their roles now, or :class:`NotAuthenticated` if this source knows no such user."""
        ...


class HubAuthenticator:
    """Identities from a JupyterHub: ``api_url`` is its API (``http://127.0.0.1:8081/hub/api``)."""

    def __init__(self, api_url: str, service_token: str, ttl: float = 60.0, admin_group: str = ADMIN_GROUP):
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(timeout=10.0, headers={"Authorization": f"token {service_token}"})
        self.ttl = ttl
        self.admin_group = admin_group
        self._known: dict[str, tuple[float, Identity]] = {}
        self._lock = threading.Lock()

    def identify(self, token: str) -> Identity:
        """The hub user owning ``token``, with their roles; :class:`NotAuthenticated` if the hub does not know it."""
        if not token:
            raise NotAuthenticated("No token: send the JupyterHub API token as 'Authorization: token <token>' "
                                   "(a workspace has it in JUPYTERHUB_API_TOKEN).")
        return self._cached(hashlib.sha256(token.encode()).hexdigest(), lambda: self._ask_hub(token))

    def _cached(self, key: str, ask: Callable[[], Identity]) -> Identity:
        """The identity kept under ``key`` if fresh, else ``ask()``'s, kept for ``ttl`` seconds."""
        with self._lock:
            known = self._known.get(key)
        if known and known[0] > time.monotonic():
            return known[1]
        identity = ask()
        with self._lock:
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[key] = (time.monotonic() + self.ttl, identity)
        return identity

    def identity_of(self, name: str) -> Identity:
        """Hub user ``name`` with their roles, asked with the server's own token (a job token names a user)."""
        return self._cached(f"user:{name}", lambda: self._user(name))

    def _user(self, name: str) -> Identity:
        user = self._get(f"/users/{quote(name, safe='')}")
        if user is None or user.get("name") != name:
            raise NotAuthenticated(f"The hub has no user {name!r} (removed?): a job token names a hub user.")
        groups = user.get("groups") or []
        roles = {}
        for group in groups:
            role = self._role(group, name)
            if role:
                roles[group] = role
        return Identity(name, roles, admin=bool(user.get("admin")) or self.admin_group in groups)

    def _ask_hub(self, token: str) -> Identity:
        owner = self._get("/user", token)
        if owner is None or owner.get("kind", "user") != "user" or not owner.get("name"):
            raise NotAuthenticated("The hub does not know this token (wrong, expired or revoked): log in to the "
                                   "hub again, or use JUPYTERHUB_API_TOKEN from a running workspace.")
        return self._user(owner["name"])

    def _role(self, group: str, user: str) -> str | None:
        if group == self.admin_group:
            return None
        properties = (self._get(f"/groups/{group}") or {}).get("properties") or {}
        named = properties.get("mlplat_roles") or {}
        role = named.get(user) if isinstance(named, dict) else None
        role = role or properties.get("mlplat_role") or DEFAULT_ROLE
        return role if role in ROLES else None

    def _get(self, path: str, token: str | None = None) -> Any:
        headers = {"Authorization": f"token {token}"} if token else None
        try:
            response = self._http.get(self.api_url + path, headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceError(f"The hub's API at {self.api_url} cannot be reached ({exc}); the platform server "
                               "needs it to check tokens.") from None
        if response.status_code in (401, 403, 404):
            return None
        if response.status_code != 200:
            raise ServiceError(f"The hub's API answered {response.status_code} to {path}: {response.text[:200]}")
        return response.json()


class LocalAuthenticator:
    """Fixed tokens for a server without a hub (a laptop, a test): ``{token: Identity}``."""

    def __init__(self, identities: dict[str, Identity]):
        self._identities = dict(identities)

    def identify(self, token: str) -> Identity:
        identity = self._identities.get(token)
        if identity is None:
            raise NotAuthenticated("Unknown token: use one this server was started with.")
        return identity

    def identity_of(self, name: str) -> Identity:
        """The identity named ``name`` among this server's tokens."""
        for identity in self._identities.values():
            if identity.name == name:
                return identity
        raise NotAuthenticated(f"No token of this server is {name!r}'s: a job token names one of its users.")


class JobTokenAuthenticator:
    """``inner``'s tokens, and job tokens (:mod:`mlplat.job_tokens`): a valid one is its user, whose roles
    ``inner`` says now (cached as ``inner`` caches), so a user taken out of a team loses its rights in jobs too."""

    def __init__(self, inner: Authenticator, tokens: JobTokens):
        self.inner = inner
        self.tokens = tokens

    def identify(self, token: str) -> Identity:
        """The job token's user, or whom ``inner`` says owns ``token``."""
        if is_job_token(token):
            return self.inner.identity_of(self.tokens.user_of(token))
        return self.inner.identify(token)

    def identity_of(self, name: str) -> Identity:
        return self.inner.identity_of(name)
