"""Who is acting: a user, their role in each team, and whether they are a platform admin.

In embedded mode the one local user acts (``Settings.user`` and ``team``). In server mode ``mlplat server``
authenticates each request with the caller's JupyterHub token and runs the request :func:`acting_as` that
identity, so everything the request records (the audit trail, owners of new objects, MLflow tags) names the
hub user, whatever the caller's environment says.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType

ROLES = ("viewer", "editor", "owner")  # each role may do what the ones before it may


def rank(role: str | None) -> int:
    """0 for no role, then 1, 2, 3 for viewer, editor, owner."""
    return ROLES.index(role) + 1 if role in ROLES else 0


@dataclass(frozen=True)
class Identity:
    """A user, their role per team (``{"a": "editor"}``), and whether they administer the platform."""

    name: str
    roles: Mapping[str, str] = field(default_factory=dict)
    admin: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", MappingProxyType(dict(self.roles)))

    def role(self, team: str) -> str | None:
        """This user's role in ``team`` (None: not a member)."""
        return self.roles.get(team)

    def has(self, role: str, team: str) -> bool:
        """Whether this user holds ``role`` (or a greater one) in ``team``; admins hold every role."""
        return self.admin or (bool(team) and rank(self.roles.get(team)) >= rank(role))

    @property
    def team(self) -> str:
        """The team that owns what this user creates unless they name one: the first they can create in."""
        editing = sorted(team for team, role in self.roles.items() if rank(role) >= rank("editor"))
        return (editing or sorted(self.roles) or [""])[0]


_acting: ContextVar[Identity | None] = ContextVar("mlplat_acting", default=None)


@contextmanager
def acting_as(identity: Identity) -> Iterator[Identity]:
    """Run the block as ``identity``: what it records names that user (the server wraps each request in this)."""
    token = _acting.set(identity)
    try:
        yield identity
    finally:
        _acting.reset(token)


def acting() -> Identity | None:
    """The identity the current request runs as, or None outside a server request (embedded mode)."""
    return _acting.get()
