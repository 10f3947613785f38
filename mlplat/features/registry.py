"""The feature registry: entities and versioned feature views in the metadata database (:mod:`mlplat.db`).

SQLite by default, PostgreSQL by URL (any SQLAlchemy URL works). Every change
is recorded with who made it and when in the platform's audit trail
(:mod:`mlplat.audit`), in the same transaction as the change.
"""

from __future__ import annotations

import difflib
import json
import numbers
import reprlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa

from mlplat.db import metadata
from mlplat.errors import BrokenDefinition, DefinitionError, FeatureViewNotFound, one_line
from mlplat.features.definitions import Entity, FeatureView, diff_views, keep_ownership, valid_name
from mlplat.features.on_demand import OnDemandFeatureView, pin_sources

if TYPE_CHECKING:
    from mlplat.audit import Audit, AuditTrail

entities_table = sa.Table(
    "entities", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)
views_table = sa.Table(
    "feature_views", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)
watermarks_table = sa.Table(
    "materialization_watermarks", metadata,
    sa.Column("view", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("event_end_ns", sa.BigInteger, nullable=False),
    sa.Column("ingest_ns", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply`` did to one object: created, updated, new_version or unchanged."""

    kind: str
    name: str
    action: str
    version: int | None
    changes: list[dict[str, Any]]

    def __str__(self) -> str:
        """``view     driver_stats v2: new_version`` and one indented line per change."""
        version = f" v{self.version}" if self.version else ""
        return "\n".join([f"{self.kind:12} {self.name}{version}: {self.action}",
                          *(f"    {describe_change(c)}" for c in self.changes)])


def describe_change(change: dict[str, Any]) -> str:
    """One line for one change of a diff: what changed, from what to what, and whether it made a new version."""
    parts = [change["change"]]
    if "name" in change:
        parts.append(change["name"])
    if "from" in change or "to" in change:
        parts.append(f"{change.get('from')} -> {change.get('to')}")
    if change.get("incompatible"):
        parts.append("(incompatible: new version)")
    return " ".join(str(p) for p in parts)


@dataclass(frozen=True)
class Watermark:
    """How far a view version has been materialised: event time and ingestion time."""

    event_end_ns: int
    ingest_ns: int


def _now() -> datetime:
    return datetime.now(UTC)


class BrokenViewWarning(UserWarning):
    """A registered view was left out of an operation on every view because its definition cannot be read."""


@dataclass(frozen=True)
class BrokenView:
    """A registered view version whose stored definition cannot be read (written by another mlplat version, or
    by hand): ``list_views`` and ``search`` list it, so it can be seen and fixed; using it raises
    :meth:`refusal`. Applying a fixed definition under its name registers a new version."""

    name: str
    version: int
    error: str
    owner: str = ""
    ttl: None = None
    schema: list = field(default_factory=list)
    entities: list = field(default_factory=list)
    tags: dict = field(default_factory=dict)
    kind: ClassVar[str] = "broken"

    @property
    def description(self) -> str:
        return f"BROKEN: its registered definition cannot be read ({self.error})"

    @property
    def feature_names(self) -> list[str]:
        return []

    def refusal(self) -> BrokenDefinition:
        """The error that using this view raises."""
        return BrokenDefinition(
            f"Feature view {self.name!r} v{self.version}: its registered definition cannot be read ({self.error}); "
            "it was written by another mlplat version or by hand. Apply a fixed definition of the view "
            "(p.features.apply([...])): that registers a new version.")


def _definition(row: Any) -> FeatureView | BrokenView:
    """The view a registry row holds, or a BrokenView saying why it cannot be read. Runs no user code: a view's
    function loads only when that view is computed or served."""
    try:
        return FeatureView.from_dict(json.loads(row.spec))
    except Exception as exc:  # text stored by another version or by hand: whatever it raises, this view alone
        return BrokenView(row.name, row.version, one_line(exc), row.created_by)


def _entity(row: Any) -> Entity | None:
    """The entity a registry row holds; None when its stored text cannot be read."""
    try:
        return Entity(**json.loads(row.spec))
    except Exception:  # stored by hand or another version: only views that use it are refused (see apply)
        return None


APPLY_ACTIONS = ("created", "updated", "new_version")


class Registry:
    """Entities and feature views, with versions; ``audit`` records each change and who acts."""

    def __init__(self, engine: sa.Engine, audit: Audit):
        self.engine = engine
        self.audit = audit

    # -- writing ---------------------------------------------------------------
    def apply(self, objects: Iterable[Entity | FeatureView]) -> list[ApplyResult]:
        """Register entities and views in one transaction; all are validated first."""
        objects = list(objects)
        for obj in objects:
            if not isinstance(obj, (Entity, FeatureView)):
                raise DefinitionError(f"apply() takes Entity and FeatureView objects, not {type(obj).__name__}.")
        names = [("entity" if isinstance(o, Entity) else "view", o.name) for o in objects]
        if len(set(names)) != len(names):
            raise DefinitionError(f"apply() got the same name twice: {sorted({n for n in names if names.count(n) > 1})}.")
        with self.engine.begin() as conn:
            known = {row.name: _entity(row) for row in conn.execute(sa.select(entities_table))}
            batch = {o.name: o for o in objects if isinstance(o, Entity)}
            for view in (o for o in objects if isinstance(o, FeatureView)):
                for entity in view.entities:
                    registered = batch.get(entity.name) or known.get(entity.name)
                    if registered is None and entity.name in known:
                        raise DefinitionError(
                            f"FeatureView {view.name!r} uses entity {entity.name!r}, whose registered definition "
                            "cannot be read; apply the Entity again together with the view."
                        )
                    if registered is None:
                        raise DefinitionError(
                            f"FeatureView {view.name!r} uses entity {entity.name!r}, which is not registered; "
                            "apply the Entity together with the view."
                        )
                    if registered.join_keys != entity.join_keys:
                        raise DefinitionError(
                            f"FeatureView {view.name!r} gives entity {entity.name!r} join keys {entity.join_keys}, "
                            f"but it is registered with {registered.join_keys}."
                        )
            results = [self._apply_entity(conn, e, known.get(e.name), e.name in known) for e in batch.values()]
            views = [o for o in objects if isinstance(o, FeatureView)]
            applied = {}
            # Stored views first, so an on-demand view pins its sources to the versions this apply leaves.
            for view in sorted(views, key=lambda v: isinstance(v, OnDemandFeatureView)):
                if isinstance(view, OnDemandFeatureView):
                    view = pin_sources(view, lambda name, version: self._view_in(conn, name, version),
                                       conn.execute(sa.select(views_table.c.name).distinct()).scalars().all())
                applied[view.name] = self._apply_view(conn, view)
            results += [applied[v.name] for v in views]
        return results

    def _apply_entity(self, conn: sa.Connection, entity: Entity, old: Entity | None, exists: bool) -> ApplyResult:
        entity = replace(entity, team=entity.team or (old.team if old else "") or self.audit.team)
        if old == entity:
            return ApplyResult("entity", entity.name, "unchanged", None, [])
        if old is not None and old.join_keys != entity.join_keys:
            raise DefinitionError(
                f"Entity {entity.name!r} is registered with join keys {old.join_keys}; changing them would "
                "orphan its feature views. Define a new entity under another name instead."
            )
        row = {"spec": json.dumps(entity.to_dict()), "updated_at": _now(), "updated_by": self.audit.user}
        if not exists:
            conn.execute(entities_table.insert().values(name=entity.name, **row))
        else:  # an unreadable stored entity (old is None) is replaced too
            conn.execute(entities_table.update().where(entities_table.c.name == entity.name).values(**row))
        action = "updated" if exists else "created"
        self.audit.write(conn, "entity", entity.name, action, spec=entity.to_dict())
        return ApplyResult("entity", entity.name, action, None, [])

    def _apply_view(self, conn: sa.Connection, view: FeatureView) -> ApplyResult:
        latest = self._latest_row(conn, view.name)
        if latest is None:  # a new view belongs to whoever applies it, unless it names its owner and team
            owned = replace(view, owner=view.owner or self.audit.user, team=view.team or self.audit.team)
            return self._insert_view(conn, owned, 1, "created", [])
        old = _definition(latest)
        if isinstance(old, BrokenView):  # a fixed definition replaces what cannot be read, as a new version
            owned = replace(view, owner=view.owner or latest.created_by, team=view.team or self.audit.team)
            change = {"change": "replaces an unreadable definition", "from": old.error, "incompatible": True}
            return self._insert_view(conn, owned, old.version + 1, "new_version", [change])
        view = keep_ownership(view, old)
        changes = diff_views(old, replace(view, version=old.version))
        if not changes:
            return ApplyResult("feature_view", view.name, "unchanged", old.version, [])
        if any(c["incompatible"] for c in changes):
            return self._insert_view(conn, view, old.version + 1, "new_version", changes)
        spec = json.dumps(replace(view, version=old.version).to_dict())
        conn.execute(
            views_table.update()
            .where(views_table.c.name == view.name, views_table.c.version == old.version)
            .values(spec=spec, updated_at=_now(), updated_by=self.audit.user)
        )
        self.audit.write(conn, "feature_view", view.name, "updated", old.version, changes=changes)
        return ApplyResult("feature_view", view.name, "updated", old.version, changes)

    def _insert_view(self, conn, view: FeatureView, version: int, action: str, changes: list) -> ApplyResult:
        view = replace(view, version=version)
        now = _now()
        conn.execute(views_table.insert().values(
            name=view.name, version=version, spec=json.dumps(view.to_dict()), fingerprint=view.schema_fingerprint(),
            created_at=now, created_by=self.audit.user, updated_at=now, updated_by=self.audit.user,
        ))
        self.audit.write(conn, "feature_view", view.name, action, version,
                         **({"changes": changes} if changes else {"spec": view.to_dict()}))
        return ApplyResult("feature_view", view.name, action, version, changes)

    # -- reading ---------------------------------------------------------------
    def _latest_row(self, conn: sa.Connection, name: str):
        query = (sa.select(views_table).where(views_table.c.name == name)
                 .order_by(views_table.c.version.desc()).limit(1))
        return conn.execute(query).first()

    def _view_in(self, conn: sa.Connection, name: str, version: int | None) -> FeatureView | None:
        if version is None:
            row = self._latest_row(conn, name)
        else:
            row = conn.execute(sa.select(views_table).where(
                views_table.c.name == name, views_table.c.version == version)).first()
        if row is None:
            return None
        view = _definition(row)
        if isinstance(view, BrokenView):
            raise view.refusal()
        return view

    def get_view(self, name: str, version: int | None = None) -> FeatureView:
        """The latest (or given) version of a view; raises FeatureViewNotFound."""
        if not valid_name(name):  # no view can have it; the database need not look
            raise FeatureViewNotFound(f"{reprlib.repr(name)} is not a feature view name; registered views: "
                                      f"{', '.join(self.view_names()) or 'none yet'}.")
        if version is not None and (isinstance(version, bool) or not isinstance(version, numbers.Integral)):
            raise FeatureViewNotFound(f"Feature view {name!r} has no version {version!r}; versions are whole "
                                      f"numbers: {self.versions(name)}.")
        with self.engine.connect() as conn:
            view = self._view_in(conn, name, version)
        if view is None:
            raise self._not_found(name, version)
        return view

    def _not_found(self, name: str, version: int | None) -> FeatureViewNotFound:
        names = self.view_names()
        if version is not None and name in names:
            return FeatureViewNotFound(
                f"Feature view {name!r} has no version {version}; it has versions {self.versions(name)}."
            )
        hint = difflib.get_close_matches(name, names, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        listing = f" Registered views: {', '.join(names)}." if names else " No views are registered yet; apply some first."
        return FeatureViewNotFound(f"{name!r} is not a registered feature view{did_you_mean}.{listing}")

    def view_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(sa.select(views_table.c.name).distinct()).scalars())

    def list_views(self, pattern: str | None = None) -> list[FeatureView | BrokenView]:
        """The latest version of every view whose name contains ``pattern``; a :class:`BrokenView` for one whose
        stored definition cannot be read (the others are listed all the same)."""
        names = [n for n in self.view_names() if pattern is None or pattern.lower() in n.lower()]
        with self.engine.connect() as conn:
            return [_definition(self._latest_row(conn, n)) for n in names]

    def usable_views(self, action: str) -> list[FeatureView]:
        """The latest version of every view that can be read, for an ``action`` on all of them; each one that
        cannot is named in a :class:`BrokenViewWarning` and left out."""
        views = self.list_views()
        for broken in (v for v in views if isinstance(v, BrokenView)):
            warnings.warn(f"{action}: skipped {broken.name!r}. {broken.refusal()}", BrokenViewWarning, stacklevel=3)
        return [v for v in views if not isinstance(v, BrokenView)]

    def list_entities(self) -> list[Entity]:
        """Every registered entity whose stored definition can be read."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(entities_table).order_by(entities_table.c.name))
            return [entity for entity in map(_entity, rows) if entity is not None]

    def versions(self, name: str) -> list[int]:
        with self.engine.connect() as conn:
            query = sa.select(views_table.c.version).where(views_table.c.name == name).order_by(views_table.c.version)
            return list(conn.execute(query).scalars())

    def history(self, name: str | None = None) -> AuditTrail:
        """Every applied change of entities and views (of one, when named), oldest first."""
        return self.audit.entries(kind=("entity", "feature_view"), obj=name, action=APPLY_ACTIONS)

    # -- materialisation watermarks ----------------------------------------------
    def watermark(self, view: FeatureView) -> Watermark | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(watermarks_table).where(
                watermarks_table.c.view == view.name, watermarks_table.c.version == view.version)).first()
        return None if row is None else Watermark(row.event_end_ns, row.ingest_ns)

    def set_watermark(self, view: FeatureView, mark: Watermark) -> None:
        with self.engine.begin() as conn:
            key = (watermarks_table.c.view == view.name, watermarks_table.c.version == view.version)
            values = {"event_end_ns": mark.event_end_ns, "ingest_ns": mark.ingest_ns, "updated_at": _now()}
            if conn.execute(watermarks_table.update().where(*key).values(**values)).rowcount == 0:
                conn.execute(watermarks_table.insert().values(view=view.name, version=view.version, **values))
