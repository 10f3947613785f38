"""Alerts: rule findings become alert records, once per episode, and go to a webhook.

A check reports a :class:`Finding` per rule and subject (a column, a feature
view, the model). A breached finding opens an alert unless one is already
firing for the same rule, model and subject: then that alert only counts one
more check. A finding that is no longer breached resolves it; the next breach
opens a new one. New alerts are POSTed to the ``alert_webhook`` setting as JSON
with a ``text`` line (what Slack and most chat webhooks read); a failed
delivery is recorded on the alert, never lost silently.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

import sqlalchemy as sa

from mlplat.db import metadata
from mlplat.times import as_utc

alerts_table = sa.Table(
    "alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(40), nullable=False),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # "firing" or "resolved"
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("checks", sa.Integer, nullable=False),
    sa.Column("delivery", sa.Text, nullable=False),  # "sent", "no webhook" or why it failed
)


@dataclass(frozen=True)
class Finding:
    """One rule evaluated on one subject: its value, threshold and whether it is breached."""

    rule: str  # "drift", "latency_p99", "error_rate", "stale_features"
    model: str
    subject: str
    value: float
    threshold: float
    breached: bool
    message: str


@dataclass(frozen=True)
class Alert:
    """An alert record."""

    id: int
    rule: str
    model: str
    subject: str
    status: str
    value: float
    threshold: float
    message: str
    fired_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    checks: int
    delivery: str


class AlertList(list):
    """Alerts, newest first; a table in notebooks."""

    def _repr_html_(self) -> str:
        colours = {"firing": "#cf222e", "resolved": "#1a7f37"}
        rows = "".join(
            f"<tr><td style='color:{colours[a.status]}'>{a.status}</td><td>{escape(a.rule)}</td><td>{escape(a.model)}"
            f"</td><td>{escape(a.subject)}</td><td>{escape(a.message)}</td><td>{a.fired_at:%Y-%m-%d %H:%M}</td>"
            f"<td>{a.checks}</td><td>{escape(a.delivery)}</td></tr>" for a in self)
        return (f"<div><b>{sum(a.status == 'firing' for a in self)} firing</b> of {len(self)} alerts<table><tr>"
                "<th>status</th><th>rule</th><th>model</th><th>subject</th><th>what</th><th>fired</th><th>checks</th>"
                f"<th>webhook</th></tr>{rows}</table></div>")

    def __str__(self) -> str:
        return "\n".join(f"{a.fired_at:%Y-%m-%d %H:%M}  {a.status:8}  {a.rule:14}  {a.model}/{a.subject}: {a.message}"
                         for a in self) or "no alerts"


class Alerts:
    """Open, de-duplicate, resolve and list alerts; deliver new ones to the webhook."""

    def __init__(self, engine: sa.Engine, webhook: str = ""):
        self.engine, self.webhook = engine, webhook

    def observe(self, findings: Iterable[Finding]) -> AlertList:
        """Apply a check's findings; return the alerts that fired now (and were sent to the webhook)."""
        now = datetime.now(UTC)
        opened = []
        with self.engine.begin() as conn:
            for finding in findings:
                key = (alerts_table.c.rule == finding.rule) & (alerts_table.c.model == finding.model) & \
                      (alerts_table.c.subject == finding.subject) & (alerts_table.c.status == "firing")
                firing = conn.execute(sa.select(alerts_table.c.id).where(key)).scalar()
                if finding.breached and firing is not None:
                    conn.execute(alerts_table.update().where(alerts_table.c.id == firing).values(
                        last_seen_at=now, checks=alerts_table.c.checks + 1, value=finding.value))
                elif finding.breached:
                    opened.append(conn.execute(alerts_table.insert().values(
                        rule=finding.rule, model=finding.model, subject=finding.subject, status="firing",
                        value=finding.value, threshold=finding.threshold, message=finding.message, fired_at=now,
                        last_seen_at=now, checks=1, delivery="pending")).inserted_primary_key[0])
                elif firing is not None:
                    conn.execute(alerts_table.update().where(alerts_table.c.id == firing).values(
                        status="resolved", resolved_at=now, last_seen_at=now))
        fired = self.list(ids=opened)
        if fired:
            delivery = self._deliver(fired)
            with self.engine.begin() as conn:
                conn.execute(alerts_table.update().where(alerts_table.c.id.in_(opened)).values(delivery=delivery))
            fired = AlertList(dataclasses.replace(a, delivery=delivery) for a in fired)
        return fired

    def list(self, status: str | None = None, model: str | None = None, ids: list[int] | None = None) -> AlertList:
        """Alerts, newest first; ``status`` "firing" or "resolved", ``model`` one model's."""
        query = sa.select(alerts_table).order_by(alerts_table.c.id.desc())
        if status is not None:
            query = query.where(alerts_table.c.status == status)
        if model is not None:
            query = query.where(alerts_table.c.model == model)
        if ids is not None:
            query = query.where(alerts_table.c.id.in_(ids))
        with self.engine.connect() as conn:
            return AlertList(Alert(**{**row._asdict(), **_utc(row)}) for row in conn.execute(query))

    def firing_counts(self) -> dict[tuple[str, str], int]:
        """(rule, model) -> alerts firing: what the ``mlplat_alerts_firing`` gauge shows."""
        query = sa.select(alerts_table.c.rule, alerts_table.c.model, sa.func.count()).where(
            alerts_table.c.status == "firing").group_by(alerts_table.c.rule, alerts_table.c.model)
        with self.engine.connect() as conn:
            return {(rule, model): n for rule, model, n in conn.execute(query)}

    def _deliver(self, alerts: list[Alert]) -> str:
        if not self.webhook:
            return "no webhook"
        body = {"text": "\n".join(f"[mlplat] {a.model}: {a.message}" for a in alerts),
                "alerts": [{"id": a.id, "rule": a.rule, "model": a.model, "subject": a.subject, "value": a.value,
                            "threshold": a.threshold, "message": a.message, "fired_at": a.fired_at.isoformat()}
                           for a in alerts]}
        request = urllib.request.Request(self.webhook, json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return "sent" if 200 <= response.status < 300 else f"webhook answered {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            return f"webhook failed: {getattr(exc, 'reason', exc)}"


def _utc(row: Any) -> dict[str, Any]:
    """The row's times, as UTC (SQLite hands them back without a zone)."""
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row._asdict().items() if k.endswith("_at")}
