"""Typed feature definitions: Entity, Field, FeatureView.

A FeatureView's *schema* (its entities' join keys, timestamp columns and typed
fields) decides how its data is stored offline and packed online, so changing
it makes a new version; everything else (TTL, owner, description, tags,
source, data-quality expectations) is metadata and changes in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import reprlib
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, ClassVar

from mlplat.errors import DefinitionError

DTYPES = ("float32", "float64", "int32", "int64", "bool", "string")
_NUMERIC = ("float32", "float64", "int32", "int64")
RULES = ("not_null", "min", "max", "allowed")  # a Field's data-quality expectations
_CONDITIONS = {"not_null": "not null", "min": ">= {!r}", "max": "<= {!r}", "allowed": "in {!r}"}
VIOLATION_POLICIES = ("reject", "quarantine")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # whole names only: use fullmatch (``$`` would allow a newline)
MAX_NAME = 64  # names become folder names, Redis keys and SQL values: keep them short


def valid_name(name: Any) -> bool:
    """Whether ``name`` can name an entity, view or field (not its length, which :func:`_check_name` checks)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and "__" not in name


def _check_name(kind: str, name: Any) -> None:
    if not valid_name(name):
        raise DefinitionError(
            f"{kind} name {reprlib.repr(name)} is invalid; use letters, digits and single underscores, "
            "starting with a letter (for example 'driver_stats')."
        )
    if len(name) > MAX_NAME:
        raise DefinitionError(f"{kind} name {reprlib.repr(name)} has {len(name)} characters; "
                              f"use at most {MAX_NAME}.")


def check_text(what: str, value: Any, optional: bool = False) -> None:
    """Refuse a description, owner, tag or path that is not text storable as UTF-8 (a lone surrogate is not)."""
    if optional and value is None:
        return
    if not isinstance(value, str):
        raise DefinitionError(f"{what} must be a string, not {type(value).__name__}.")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise DefinitionError(f"{what} holds {value[exc.start:exc.end]!r}, which is not valid Unicode text "
                              "(a lone surrogate); remove it.") from None


def check_metadata(view: Any, where: str) -> None:
    """A view's description, owner, team, source and tags must be text: search, the catalog and the registry show them."""
    for attr in ("description", "owner", "team"):
        check_text(f"{where}: {attr}", getattr(view, attr))
    check_text(f"{where}: source", view.source, optional=True)
    if not isinstance(view.tags, dict):
        raise DefinitionError(f"{where}: tags must be a dict of strings, e.g. tags={{'team': 'pricing'}}.")
    for key, value in view.tags.items():
        check_text(f"{where}: tag {key!r}", key)
        check_text(f"{where}: tag {key!r}", value)


def _as_list(value: Any, what: str, example: str) -> list:
    """``value`` as a list, refusing a single object, a string or a non-iterable where a list is needed."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise DefinitionError(f"{what} must be a list, e.g. {example}; got {type(value).__name__}.")
    return list(value)


@dataclasses.dataclass(frozen=True)
class Entity:
    """A thing features describe, identified by one or more join-key columns.

    >>> Entity("driver", join_keys=["driver_id"])
    """

    name: str
    join_keys: list[str]
    description: str = ""
    team: str = ""  # default: the team of whoever applies it

    def __post_init__(self) -> None:
        _check_name("Entity", self.name)
        if isinstance(self.join_keys, str):
            object.__setattr__(self, "join_keys", [self.join_keys])
        check_text(f"Entity {self.name!r}: description", self.description)
        check_text(f"Entity {self.name!r}: team", self.team)
        keys = _as_list(self.join_keys, f"Entity {self.name!r}: join_keys", f"join_keys=['{self.name}_id']")
        object.__setattr__(self, "join_keys", keys)
        if not self.join_keys:
            raise DefinitionError(f"Entity {self.name!r} needs at least one join key, e.g. join_keys=['{self.name}_id'].")
        for key in self.join_keys:
            _check_name("Join key", key)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Field:
    """A typed feature column, optionally with data-quality expectations.

    >>> Field("rating", "float32", not_null=True, min=0, max=5)
    >>> Field("city", "string", allowed=["paris", "rome"])

    A null breaks only ``not_null``; ranges suit numeric features, ``allowed``
    string and integer ones. Ingest and push check every row (see
    ``FeatureView.on_violation``).
    """

    name: str
    dtype: str
    description: str = ""
    not_null: bool = dataclasses.field(default=False, kw_only=True)
    min: float | None = dataclasses.field(default=None, kw_only=True)
    max: float | None = dataclasses.field(default=None, kw_only=True)
    allowed: list[str | int] | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_name("Field", self.name)
        check_text(f"Field {self.name!r}: description", self.description)
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise DefinitionError(f"Field {self.name!r} has dtype {self.dtype!r}; use one of {', '.join(DTYPES)}.")
        _check_expectations(self)

    def rules(self) -> dict[str, Any]:
        """The expectations this field declares: ``{"not_null": True, "min": 0}``."""
        declared = {rule: getattr(self, rule) for rule in RULES}
        return {rule: value for rule, value in declared.items() if value is not None and value is not False}

    def conditions(self) -> list[str]:
        """What the expectations ask of a value, in words: ``[">= 0", "not null"]``."""
        return [condition(rule, value) for rule, value in self.rules().items()]

    def to_dict(self) -> dict[str, Any]:
        """Name, dtype, description and the expectations it declares (no defaults)."""
        return {"name": self.name, "dtype": self.dtype, "description": self.description, **self.rules()}


def condition(rule: str, value: Any) -> str:
    """An expectation in words: ``condition("min", 0)`` is ``">= 0"``."""
    return _CONDITIONS[rule].format(value)


def _check_expectations(field: Field) -> None:
    where = f"Field {field.name!r} ({field.dtype})"
    if not isinstance(field.not_null, bool):
        raise DefinitionError(f"{where}: not_null must be True or False, not {field.not_null!r}.")
    for bound in ("min", "max"):
        value = getattr(field, bound)
        if value is None:
            continue
        if field.dtype not in _NUMERIC:
            raise DefinitionError(f"{where} cannot have {bound}=: ranges suit numeric features; "
                                  "use allowed=[...] for a string feature.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise DefinitionError(f"{where}: {bound} must be a number, not {value!r}.")
    if field.min is not None and field.max is not None and field.min > field.max:
        raise DefinitionError(f"{where} has min={field.min!r} above max={field.max!r}; swap them.")
    if field.allowed is not None:
        _check_allowed(field, where)


def _check_allowed(field: Field, where: str) -> None:
    if field.dtype not in ("string", "int32", "int64"):
        raise DefinitionError(f"{where} cannot have allowed=: allowed values suit string and integer features; "
                              "use min=/max= for a float and not_null=True for a bool.")
    kind, example = (str, "['paris', 'rome']") if field.dtype == "string" else (int, "[1, 2, 3]")
    values = field.allowed
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or not (values := list(values)):
        raise DefinitionError(f"{where}: allowed must be a non-empty list, e.g. allowed={example}.")
    wrong = [v for v in values if not isinstance(v, kind) or isinstance(v, bool)]
    if wrong:
        raise DefinitionError(f"{where} allows {wrong}, which are not {field.dtype} values; "
                              f"list {kind.__name__} values, e.g. allowed={example}.")
    object.__setattr__(field, "allowed", values)


@dataclasses.dataclass(frozen=True)
class FeatureView:
    """A versioned group of features of one or more entities, with event timestamps.

    ``ttl`` bounds how old a value may be and still be served (None: forever);
    ``created_timestamp_field`` breaks ties between rows with the same event time,
    so a later correction wins; ``source`` is an optional Parquet path that
    ``ingest(view)`` reads when no DataFrame is given; ``on_violation`` says what
    ingest and push do with rows that break the fields' expectations: ``"reject"``
    the whole batch, or ``"quarantine"`` the bad rows and store the rest. A ``private`` view is seen only by
    its team (and platform admins) in server mode; others are readable by every user.
    """

    name: str
    entities: list[Entity]
    schema: list[Field]
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None
    ttl: timedelta | None = None
    owner: str = ""  # default: the user who first applies it
    team: str = ""  # default: that user's team (MLPLAT_TEAM; the JupyterHub group in a workspace)
    description: str = ""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    source: str | None = None
    on_violation: str = "reject"
    private: bool = False  # server mode: only its team (and admins) may see it
    version: int = 0  # assigned by the registry

    kind: ClassVar[str] = "feature_view"  # subclasses (computed views) name theirs, see VIEW_KINDS

    def __post_init__(self) -> None:
        _check_name("FeatureView", self.name)
        where = f"FeatureView {self.name!r}"
        object.__setattr__(self, "entities", _as_list(self.entities, f"{where}: entities", "entities=[driver]"))
        object.__setattr__(self, "schema", _as_list(self.schema, f"{where}: schema", "schema=[Field('rating', 'float32')]"))
        check_metadata(self, where)
        object.__setattr__(self, "tags", dict(self.tags))
        if not self.entities or not all(isinstance(e, Entity) for e in self.entities):
            raise DefinitionError(f"FeatureView {self.name!r} needs entities=[Entity(...), ...].")
        if not self.schema or not all(isinstance(f, Field) for f in self.schema):
            raise DefinitionError(f"FeatureView {self.name!r} needs schema=[Field('name', 'float32'), ...].")
        if self.ttl is not None and (not isinstance(self.ttl, timedelta) or self.ttl <= timedelta(0)):
            raise DefinitionError(f"FeatureView {self.name!r}: ttl must be a positive timedelta or None, not {self.ttl!r}.")
        if not isinstance(self.private, bool):
            raise DefinitionError(f"FeatureView {self.name!r}: private must be True or False, not {self.private!r}.")
        if self.on_violation not in VIOLATION_POLICIES:
            raise DefinitionError(f"FeatureView {self.name!r}: on_violation={self.on_violation!r}; use one of "
                                  f"{', '.join(map(repr, VIOLATION_POLICIES))}.")
        _check_name("Timestamp field", self.timestamp_field)
        if self.created_timestamp_field is not None:
            _check_name("Created timestamp field", self.created_timestamp_field)
        columns = [*self.join_keys, self.timestamp_field, *filter(None, [self.created_timestamp_field])]
        columns += [f.name for f in self.schema]
        duplicates = sorted({c for c in columns if columns.count(c) > 1})
        if duplicates:
            raise DefinitionError(
                f"FeatureView {self.name!r} uses the column name(s) {duplicates} twice; each join key, "
                "timestamp field and feature needs its own name."
            )

    @property
    def join_keys(self) -> list[str]:
        return [key for entity in self.entities for key in entity.join_keys]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.schema]

    def field(self, name: str) -> Field:
        return next(f for f in self.schema if f.name == name)

    def _repr_html_(self) -> str:
        from html import escape

        expects = {f.name: ", ".join(f.conditions()) for f in self.schema}
        rows = "".join(f"<tr><td>{escape(f.name)}</td><td>{f.dtype}</td><td>{escape(f.description)}</td>"
                       f"<td>{escape(expects[f.name])}</td></tr>" for f in self.schema)
        facts = {"entities": ", ".join(f"{e.name} ({', '.join(e.join_keys)})" for e in self.entities),
                 "timestamp": self.timestamp_field, "ttl": str(self.ttl or "none"), "owner": self.owner or "-",
                 "team": self.team or "-", "tags": ", ".join(f"{k}={v}" for k, v in self.tags.items()) or "-"}
        if any(expects.values()):
            facts["on violation"] = self.on_violation
        header = "".join(f"<div><b>{k}</b>: {escape(v)}</div>" for k, v in facts.items())
        return (f"<div><h4>{escape(self.name)} v{self.version}</h4><p>{escape(self.description)}</p>{header}"
                f"<table><tr><th>feature</th><th>dtype</th><th>description</th><th>expectations</th></tr>{rows}"
                "</table></div>")

    def schema_fingerprint(self) -> str:
        """Hash of everything that decides how the data is stored."""
        return hashlib.sha256(json.dumps(self._schema_part(), sort_keys=True).encode()).hexdigest()[:16]

    def _schema_part(self) -> dict[str, Any]:
        return {
            "join_keys": self.join_keys,
            "timestamp_field": self.timestamp_field,
            "created_timestamp_field": self.created_timestamp_field,
            "fields": [[f.name, f.dtype] for f in self.schema],
        }

    def kind_changes(self, old: FeatureView) -> list[dict[str, Any]]:
        """What changed from ``old``, a view of the same kind, in what the kind adds (see :func:`diff_views`)."""
        return []

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (what the registry stores); ``kind`` says which class to load it as."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["entities"] = [dataclasses.asdict(e) for e in self.entities]
        data["schema"] = [f.to_dict() for f in self.schema]
        data["ttl"] = None if self.ttl is None else self.ttl.total_seconds()
        return {**data, **({"kind": self.kind} if self.kind != FeatureView.kind else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureView:
        """The view a :meth:`to_dict` describes, as its own kind (a stream view loads as a StreamFeatureView)."""
        data = dict(data)
        kind = data.pop("kind", FeatureView.kind)
        if cls is FeatureView and kind != FeatureView.kind:
            return view_class(kind).from_dict(data)
        data["entities"] = [Entity(**e) for e in data["entities"]]
        data["schema"] = [Field(**f) for f in data["schema"]]
        data["ttl"] = None if data.get("ttl") is None else timedelta(seconds=data["ttl"])
        return cls(**data)


VIEW_KINDS = {  # kind -> "module:Class" of the FeatureView subclasses, imported when a registered one is loaded
    "batch": "mlplat.features.compute.view:BatchFeatureView",
    "on_demand": "mlplat.features.on_demand:OnDemandFeatureView",
    "stream": "mlplat.streaming.definitions:StreamFeatureView",
}


def view_class(kind: str) -> type[FeatureView]:
    """The FeatureView subclass registered under ``kind``."""
    import importlib

    if kind not in VIEW_KINDS:
        raise DefinitionError(f"A registered view has kind {kind!r}, which this mlplat does not know "
                              f"({', '.join(VIEW_KINDS) or 'none'}); upgrade mlplat.")
    module, name = VIEW_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def keep_ownership(view: FeatureView, registered: FeatureView) -> FeatureView:
    """``view`` with ``registered``'s owner and team where it names none: an edit does not change hands."""
    return dataclasses.replace(view, owner=view.owner or registered.owner, team=view.team or registered.team)


def diff_views(old: FeatureView, new: FeatureView) -> list[dict[str, Any]]:
    """What changed from ``old`` to ``new``, each change marked incompatible or not.

    An incompatible change (a schema change) needs a new version.
    """
    changes: list[dict[str, Any]] = []
    old_fields = {f.name: f for f in old.schema}
    new_fields = {f.name: f for f in new.schema}
    for name in new_fields.keys() - old_fields.keys():
        changes.append({"change": "field added", "name": name, "to": new_fields[name].dtype, "incompatible": True})
    for name in old_fields.keys() - new_fields.keys():
        changes.append({"change": "field removed", "name": name, "from": old_fields[name].dtype, "incompatible": True})
    for name in old_fields.keys() & new_fields.keys():
        if old_fields[name].dtype != new_fields[name].dtype:
            changes.append({"change": "dtype changed", "name": name, "from": old_fields[name].dtype,
                            "to": new_fields[name].dtype, "incompatible": True})
            continue
        if old_fields[name].description != new_fields[name].description:
            changes.append({"change": "field description changed", "name": name, "incompatible": False})
        if old_fields[name].rules() != new_fields[name].rules():  # checks later writes; stored rows stay
            changes.append({"change": "expectations changed", "name": name, "from": old_fields[name].rules(),
                            "to": new_fields[name].rules(), "incompatible": False})
    if [f.name for f in old.schema if f.name in new_fields] != [f.name for f in new.schema if f.name in old_fields]:
        changes.append({"change": "fields reordered", "incompatible": True})
    for attr in ("join_keys", "timestamp_field", "created_timestamp_field"):
        if getattr(old, attr) != getattr(new, attr):
            changes.append({"change": f"{attr} changed", "from": getattr(old, attr), "to": getattr(new, attr),
                            "incompatible": True})
    for attr in ("ttl", "owner", "team", "description", "tags", "source", "on_violation", "private"):
        if getattr(old, attr) != getattr(new, attr):
            changes.append({"change": f"{attr} changed", "from": _plain(getattr(old, attr)),
                            "to": _plain(getattr(new, attr)), "incompatible": False})
    if [e.name for e in old.entities] != [e.name for e in new.entities] and old.join_keys == new.join_keys:
        changes.append({"change": "entities renamed", "incompatible": False})
    if old.kind != new.kind:
        changes.append({"change": "kind changed", "from": old.kind, "to": new.kind, "incompatible": True})
    else:
        changes += new.kind_changes(old)
    return sorted(changes, key=lambda c: (not c["incompatible"], c["change"], c.get("name", "")))


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, timedelta) else value


def definitions_from_file(path: str) -> list[Entity | FeatureView]:
    """Run a Python file and return the Entity and FeatureView objects it defines."""
    import runpy

    try:
        namespace = runpy.run_path(str(path))
    except FileNotFoundError:
        raise DefinitionError(f"No definitions file at {path}; give the path of a .py file.") from None
    except Exception as exc:  # the user's code: report what it raised, wherever
        raise DefinitionError(f"Running {path} failed: {type(exc).__name__}: {exc}") from exc
    return definitions_in(namespace.values(), str(path))


def definitions_in(values: Iterable[Any], where: str) -> list[Entity | FeatureView]:
    """The Entity and FeatureView objects among ``values``; ``where`` names their source in the error."""
    found = [v for v in values if isinstance(v, (Entity, FeatureView))]
    if not found:
        raise DefinitionError(f"{where} defines no Entity or FeatureView at module level.")
    return found
