"""``p.audit``: one append-only trail of every mutating action on the platform.

Each entry says who (the platform user: the hub user in a workspace) and which
team did what (``action``) to which object (``kind`` and name, at a version),
when, why (``reason``) and with what details. The feature registry, ingestion,
materialisation, training, the model registry, deployment, jobs, schedules and
experiments all write here, in the metadata database.

>>> p.audit.entries(obj="churn")                      # the churn model and its endpoint
>>> p.audit.entries(user="ana", since="2024-06-01").to_df()
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from html import escape
from typing import Any

import sqlalchemy as sa

from mlplat.db import metadata
from mlplat.identity import acting
from mlplat.times import as_utc, timestamp

audit_table = sa.Table(
    "audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("who", sa.String(200), nullable=False, index=True),
    sa.Column("team", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),  # feature_view, entity, model, deployment, job, ...
    sa.Column("object", sa.String(200), nullable=False, index=True),
    sa.Column("version", sa.String(40)),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action."""

    id: int
    at: datetime
    who: str
    team: str
    kind: str
    object: str
    version: str | None
    action: str
    reason: str
    detail: dict[str, Any]

    def summary(self) -> str:
        """The reason and the details on one line: ``hotfix; metric=roc_auc, previous=1``."""
        parts = [f"{k}={_short(v)}" for k, v in self.detail.items() if v not in (None, "", [], {})]
        return "; ".join([self.reason, ", ".join(parts)] if self.reason else [", ".join(parts)])


_COLUMNS = [f.name for f in fields(AuditEntry)]
_SHOWN = ("at", "who", "kind", "object", "version", "action")


class AuditTrail(list[AuditEntry]):
    """Entries, oldest first: a table in ``str()`` (CLI) and in notebooks, a DataFrame with ``to_df()``."""

    def to_df(self) -> Any:
        import pandas as pd

        return pd.DataFrame([asdict(e) for e in self], columns=_COLUMNS)

    def _rows(self) -> list[list[str]]:
        return [[f"{e.at:%Y-%m-%d %H:%M:%S}", e.who, e.kind, e.object, e.version or "", e.action, e.summary()]
                for e in self]

    def __str__(self) -> str:
        if not self:
            return "no audit entries"
        rows = [[*_SHOWN, "detail"], *self._rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_SHOWN))]
        return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip()
                         for row in rows)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{name}</th>" for name in (*_SHOWN, "detail"))
        body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in self._rows())
        return f"<table><tr>{head}</tr>{body}</table>" if self else "<p>no audit entries</p>"


class Audit:
    """Record actions and query them by kind, object, user, action and time."""

    def __init__(self, engine: sa.Engine, user: str, team: str = ""):
        self.engine = engine
        self._user = user
        self._team = team

    @property
    def user(self) -> str:
        """Who acts: the authenticated caller of a server request, else the configured user."""
        caller = acting()
        return caller.name if caller else self._user

    @property
    def team(self) -> str:
        """The team new objects belong to unless they name one: the caller's, else the configured team."""
        caller = acting()
        return caller.team if caller else self._team

    def record(self, kind: str, obj: str, action: str, version: str | int | None = None, reason: str = "",
               **detail: Any) -> None:
        """Append that this user did ``action`` to ``kind`` ``obj`` (at ``version``), why, and details."""
        with self.engine.begin() as conn:
            self.write(conn, kind, obj, action, version, reason, **detail)

    def write(self, conn: sa.Connection, kind: str, obj: str, action: str, version: str | int | None = None,
              reason: str = "", **detail: Any) -> None:
        """:meth:`record` inside the caller's transaction: the entry commits, or not, with the change it records."""
        conn.execute(audit_table.insert().values(
            at=datetime.now(UTC), who=self.user, team=self.team, kind=kind, object=str(obj),
            version=None if version is None else str(version), action=action, reason=reason or "",
            detail=json.dumps(detail, default=str)))

    def entries(self, kind: str | Iterable[str] | None = None, obj: str | None = None, user: str | None = None,
                action: str | Iterable[str] | None = None, since: datetime | str | None = None,
                limit: int | None = None) -> AuditTrail:
        """Recorded actions, oldest first: those matching every filter given (the ``limit`` newest of them).

        ``kind`` and ``action`` take one value or several; ``since`` a datetime or an ISO date
        (naive times are UTC): ``p.audit.entries(kind="model", obj="churn", action="promoted")``.
        """
        query = sa.select(audit_table)
        for column, wanted in ((audit_table.c.kind, kind), (audit_table.c.object, obj),
                               (audit_table.c.who, user), (audit_table.c.action, action)):
            if wanted is not None:
                query = query.where(column.in_([wanted] if isinstance(wanted, str) else list(wanted)))
        if since is not None:
            query = query.where(audit_table.c.at >= timestamp(since, "since").to_pydatetime())
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(audit_table.c.id.desc()).limit(limit)).all()
        return AuditTrail(AuditEntry(**{**row._asdict(), "at": as_utc(row.at), "detail": json.loads(row.detail)})
                          for row in reversed(rows))



def _short(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value) if isinstance(value, (str, int)) else \
        json.dumps(value, default=str)
    return text if len(text) <= 48 else text[:47] + "…"
