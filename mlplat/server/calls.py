"""What the platform server answers: each call the SDK may send, and the permission it needs.

A call is ``part.method`` on the server's own (embedded) platform: ``models.promote``,
``features.registry.get_view``, ``platform.deploy``. Anything not listed here is refused, so a new library
method is reachable through the server only once someone decides who may call it. A :class:`Rule` names the
action (as refusals say it), the kind of object, the argument naming it and the role needed in its team;
``None`` marks a read, open to every authenticated user.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mlplat.errors import DefinitionError, InvalidArgument, MlplatError, PermissionDenied
from mlplat.identity import Identity
from mlplat.server.permissions import Ownership, require


@dataclass(frozen=True)
class Rule:
    """``action`` on the ``kind`` named by argument ``target`` needs ``role`` in its team."""

    action: str
    kind: str
    target: str
    role: str = "editor"
    creates: bool = False  # the object may be new: then it is created in the caller's team


def _changes(action: str, kind: str, target: str = "name") -> Rule:
    return Rule(action, kind, target)


READS = {
    "features": ["get_view", "list_views", "search", "diff", "freshness", "stats", "quarantine", "partitions",
                 "join", "key_kinds"],
    "features.registry": ["get_view", "view_names", "list_views", "usable_views", "list_entities", "versions",
                          "history", "watermark"],
    "models": ["list", "versions", "get", "trained_in", "history", "team", "private"],
    "jobs": ["schedules", "history"],
    "streams": ["dead_letters", "events", "lag", "errors"],
    "monitor": ["thresholds", "predictions", "drift", "check", "dashboard", "scrape_config"],
    "experiments": ["summary", "model_of", "predict"],
    "audit": ["entries"],
    "platform": ["deployments", "lineage", "alerts"],
}

# Reads of one object, by the argument naming it: refused when the object is private to another team.
ONE_OBJECT = {
    **{f"features.{m}": ("feature_view", "view") for m in ("diff", "freshness", "stats", "quarantine",
                                                          "partitions", "key_kinds")},
    "features.get_view": ("feature_view", "name"), "features.registry.get_view": ("feature_view", "name"),
    "features.registry.versions": ("feature_view", "name"), "features.registry.history": ("feature_view", "name"),
    **{f"models.{m}": ("model", "name") for m in ("versions", "get", "history", "team")},
    **{f"monitor.{m}": ("model", "model") for m in ("thresholds", "predictions", "drift", "check", "dashboard")},
    **{f"streams.{m}": ("feature_view", "view") for m in ("dead_letters", "events", "lag", "errors")},
}
_AUDITED_KINDS = {"feature_view": "feature_view", "model": "model", "deployment": "model"}  # entry kind -> owner kind

RULES: dict[str, Rule] = {
    "features.ingest": _changes("ingest into", "feature_view", "view"),
    "features.push": _changes("push to", "feature_view", "view"),
    "features.transfer": Rule("transfer", "feature_view", "view", role="owner"),
    "features.schedule_compute": _changes("schedule computing", "feature_view", "view"),
    "streams.send": _changes("send events to", "feature_view", "view"),
    "streams.backfill": _changes("backfill", "feature_view", "view"),
    "models.register": Rule("register a version of", "model", "name", creates=True),
    "models.promote": _changes("promote", "model"),
    "models.rollback": _changes("roll back", "model"),
    "models.archive": _changes("archive", "model"),
    "models.transfer": Rule("transfer", "model", "name", role="owner"),
    "models.set_private": _changes("change who may see", "model"),
    "models.pin": Rule("pin the files of", "model", "name", role="admin"),  # platform admins only (see authorize)
    "platform.deploy": _changes("deploy", "model"),
    "platform.undeploy": _changes("undeploy", "model"),
    "platform.rollback": _changes("roll back", "model"),
    "jobs.pause": _changes("pause", "schedule", "schedule_id"),
    "jobs.resume": _changes("resume", "schedule", "schedule_id"),
    "jobs.unschedule": _changes("unschedule", "schedule", "schedule_id"),
    "monitor.set_thresholds": _changes("change the thresholds of", "model", "model"),
    "monitor.schedule": _changes("schedule monitoring of", "model", "model"),
    "experiments.start": _changes("start an experiment on", "model", "model"),
    "experiments.conclude": _changes("conclude", "experiment"),
    "experiments.record_outcome": _changes("record an outcome of", "experiment"),
    "audit.record": Rule("record training of", "model", "obj", creates=True),
}
# Calls that create in the caller's team, or check each object they carry (see Calls.authorize).
CREATES = {"jobs.schedule", "jobs.schedule_template", "features.apply", "features.materialize"}
_TRAINING_ACTIONS = ("trained", "tuned")  # what the SDK records itself (p.train runs in the workspace)


class Calls:
    """Resolve, authorise and run calls against ``platform`` (the server's embedded one)."""

    def __init__(self, platform: Any):
        self.platform = platform
        self.ownership = Ownership(platform)

    def known(self, name: str) -> bool:
        part, _, method = name.rpartition(".")
        return method in READS.get(part, ()) or name in RULES or name in CREATES

    def run(self, identity: Identity, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Check that ``identity`` may make call ``name`` with these arguments, then make it."""
        if not self.known(name):
            raise InvalidArgument(f"{name!r} is not something the platform server does; see mlplat.server.calls "
                                  "for what it answers.")
        method = self._method(name)
        try:
            bound = inspect.signature(method).bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgument(f"{name}(): {exc}.") from None
        bound.apply_defaults()
        self.authorize(identity, name, bound.arguments)
        _refuse_pyfunc(name, bound.arguments)
        return self.visible(identity, name, method(*bound.args, **bound.kwargs))

    def visible(self, identity: Identity, name: str, result: Any) -> Any:
        """What of ``result`` (of call ``name``) ``identity`` may see: lists lose what is private to others."""
        from mlplat.audit import AuditTrail
        from mlplat.features.definitions import FeatureView

        hidden = functools.partial(self.ownership.hidden, identity)
        if isinstance(result, AuditTrail):
            seen: dict[tuple[str, str], bool] = {}
            return AuditTrail(e for e in result if e.kind not in _AUDITED_KINDS or not seen.setdefault(
                (e.kind, e.object), hidden(_AUDITED_KINDS[e.kind], e.object)))
        if isinstance(result, list) and name.endswith(("list_views", "search", "usable_views")):
            return [v for v in result if not (isinstance(v, FeatureView) and v.private and hidden("feature_view",
                                                                                                  v.name))]
        if name == "features.registry.view_names":
            return [v for v in result if not hidden("feature_view", v)]
        if name == "models.list":
            return [m for m in result if not hidden("model", m["name"])]
        if name == "streams.errors":  # every view's errors when none is named
            return result[[not hidden("feature_view", view) for view in result["view"]]].reset_index(drop=True)
        return result

    def authorize(self, identity: Identity, name: str, arguments: dict[str, Any]) -> None:
        """Raise PermissionDenied unless ``identity`` may make call ``name`` with ``arguments`` (edited in place
        where the server decides: the team a new object gets)."""
        rule = RULES.get(name)
        if name in ONE_OBJECT:
            kind, argument = ONE_OBJECT[name]
            self._read(identity, kind, arguments.get(argument))
        elif name == "features.join":  # the rows of each view read
            for read in _as_list(arguments["reads"]):
                self._read(identity, "feature_view", _view_read(read))
        elif rule is not None:
            if name == "audit.record" and (arguments.get("kind") != "model"
                                           or arguments.get("action") not in _TRAINING_ACTIONS):
                raise InvalidArgument("The audit trail is written by the platform server; a client may only "
                                      "record that it trained or tuned a model.")
            if rule.role == "admin":  # not a team role: whoever owns the model may not vouch for its files
                if not identity.admin:
                    raise PermissionDenied(f"{identity.name} may not {rule.action} {rule.kind} "
                                           f"{str(arguments[rule.target])!r}: only a platform admin may.",
                                           action=rule.action, kind=rule.kind, obj=str(arguments[rule.target]),
                                           role="admin")
            else:
                self._check(identity, rule, arguments[rule.target])
        elif name == "features.apply":
            arguments["objects"] = [self._applicable(identity, obj) for obj in _as_list(arguments["objects"])]
        elif name == "features.materialize":
            for view in arguments.get("views") or self.platform.features.registry.view_names():
                self._check(identity, _changes("materialize", "feature_view"), view)
        elif name in CREATES:
            require(identity, "editor", "schedule jobs in", "team", identity.team, identity.team)

    def _read(self, identity: Identity, kind: str, target: Any) -> None:
        """PermissionDenied when ``target`` is private to a team ``identity`` is not in."""
        if target is not None and self.ownership.hidden(identity, kind, target):
            require(identity, "viewer", "read", kind, target, self.ownership.team(kind, target))

    def _check(self, identity: Identity, rule: Rule, target: Any) -> None:
        if isinstance(target, bool) or not isinstance(target, (str, int)):
            raise InvalidArgument(f"{rule.target}={target!r}: name the {rule.kind.replace('_', ' ')} by its name "
                                  "(a schedule by its id).")
        try:
            team = self.ownership.team(rule.kind, target)
        except MlplatError:
            if not rule.creates:
                raise
            team = identity.team  # a new model is made in the caller's team
        require(identity, rule.role, rule.action, rule.kind, target, team)

    def _applicable(self, identity: Identity, obj: Any) -> Any:
        """``obj`` (an Entity or FeatureView) with the team it will have, once the caller may apply it."""
        from mlplat.features.definitions import Entity, FeatureView

        if not isinstance(obj, (Entity, FeatureView)):
            raise DefinitionError(f"apply() takes Entity and FeatureView objects, not {type(obj).__name__}.")
        kind = "entity" if isinstance(obj, Entity) else "feature_view"
        try:
            current, exists = self.ownership.team(kind, obj.name), True
        except MlplatError:
            current, exists = "", False
        if not exists:
            team = obj.team or identity.team
            require(identity, "editor", "create", kind, obj.name, team)
            return replace(obj, team=team)
        require(identity, "editor", "change", kind, obj.name, current)
        if obj.team and obj.team != current:
            require(identity, "owner", "transfer", kind, obj.name, current)
            require(identity, "editor", "transfer into", "team", obj.team, obj.team)
        return replace(obj, team=obj.team or current)

    def _method(self, name: str) -> Callable[..., Any]:
        target: Any = self.platform
        *parts, method = name.split(".")
        for part in parts:
            if part != "platform":
                target = getattr(target, part)
        return getattr(target, method)


def _as_list(objects: Any) -> list[Any]:
    return list(objects) if isinstance(objects, (list, tuple)) else [objects]


def _view_read(read: Any) -> str | None:
    """The view a read of ``features.join`` names; None for a malformed one (the join refuses it)."""
    return read[0] if isinstance(read, (list, tuple)) and read and isinstance(read[0], str) else None


def _refuse_pyfunc(name: str, arguments: dict[str, Any]) -> None:
    """A shared install registers no pyfunc-fallback version (mlplat.registry.logged_onnx): serving one runs its
    author's code in a worker on the serving host, which this install does not isolate per user yet."""
    if name == "models.register" and arguments.get("runtime") not in (None, "onnx"):
        raise PermissionDenied("A shared install serves models as ONNX only: a model ONNX cannot express would run "
                               "its author's code on the serving host. Register it on an embedded platform, or "
                               "use a model type ONNX can express.", action="register", kind="model",
                               obj=arguments.get("name"), role="admin")
