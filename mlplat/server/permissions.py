"""Who may do what: every object belongs to a team; roles in that team decide.

- reading is open to every authenticated user, except objects their team marks private (a feature view's
  ``private=True``, ``p.models.set_private(name)``): those only its members (any role) and admins see;
- creating in a team needs ``editor`` in it;
- changing, archiving, promoting, deploying, undeploying, pausing or deleting needs ``editor`` in the owning
  team;
- transferring ownership to another team needs ``owner`` in the owning team (and ``editor`` in the new one);
- platform admins may do everything. An object that belongs to no team (made before teams, in embedded mode)
  is changed by admins alone, who can give it to a team.

:class:`Ownership` finds an object's team in the stores of the server's platform.
"""

from __future__ import annotations

from typing import Any

from mlplat.errors import MlplatError, PermissionDenied, RegistryError
from mlplat.identity import Identity


def require(identity: Identity, role: str, action: str, kind: str, obj: Any, team: str) -> None:
    """Raise :class:`PermissionDenied` unless ``identity`` holds ``role`` in ``team`` (the team of ``obj``)."""
    if identity.has(role, team):
        return
    what = f"{kind.replace('_', ' ')} {str(obj)!r}"
    if not team:
        message = (f"{identity.name} may not {action} {what}: it belongs to no team, so only a platform admin "
                   "may (an admin can give it to a team with transfer).")
    else:
        held = identity.role(team)
        message = (f"{identity.name} may not {action} {what} of team {team!r}: that needs {role} in {team!r}, "
                   f"and {identity.name} is {'a ' + held if held else 'not a member'} there. Ask an owner of "
                   f"{team!r} or a platform admin.")
    raise PermissionDenied(message, action=action, kind=kind, obj=str(obj), team=team, role=role)


class Ownership:
    """The team of each kind of object, read from the platform the server holds."""

    def __init__(self, platform: Any):
        self.platform = platform

    def team(self, kind: str, name: Any) -> str:
        """The team owning ``kind`` ``name``; a missing object raises the store's own not-found error."""
        return getattr(self, f"_{kind}")(name)

    def private(self, kind: str, name: Any) -> bool:
        """Whether ``kind`` ``name`` is kept to its team."""
        if kind == "feature_view":
            return bool(getattr(self.platform.features.registry.get_view(name), "private", False))
        if kind == "model":
            return self.platform.models.private(name)
        return False

    def hidden(self, identity: Identity, kind: str, name: Any) -> bool:
        """Whether ``identity`` may not see ``kind`` ``name`` (private to a team they are not in)."""
        if identity.admin:
            return False
        try:
            return self.private(kind, name) and not identity.has("viewer", self.team(kind, name))
        except MlplatError:
            return False  # gone or unreadable: the call itself says so

    def _feature_view(self, name: str) -> str:
        return _team_of(self.platform.features.registry.get_view(name))

    def _entity(self, name: str) -> str:
        for entity in self.platform.features.registry.list_entities():
            if entity.name == name:
                return entity.team
        raise RegistryError(f"No entity is named {name!r}.")

    def _model(self, name: str) -> str:
        return self.platform.models.team(name)

    def _schedule(self, schedule_id: int) -> str:
        from mlplat.jobs.schedules import schedule_of

        return schedule_of(self.platform.engine, int(schedule_id)).team

    def _experiment(self, name: str) -> str:
        return self._model(self.platform.experiments.model_of(name))


def _team_of(view: Any) -> str:
    return getattr(view, "team", "") or ""
