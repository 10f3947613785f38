"""The audit trail of model registry actions, in the platform's metadata database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from mlplat.features.registry import log_entries, metadata

model_audit = sa.Table(
    "model_audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("version", sa.String(40)),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)


class AuditLog:
    """Append-only record of who did what to which model version, when and why."""

    def __init__(self, engine: sa.Engine, user: str):
        self.engine = engine
        self.user = user
        metadata.create_all(engine, tables=[model_audit])

    def record(self, model: str, version: str | None, action: str, reason: str = "", **detail: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(model_audit.insert().values(
                at=datetime.now(UTC), who=self.user, model=model, version=version, action=action,
                reason=reason, detail=json.dumps(detail, default=str)))

    def entries(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every recorded action (of one model, when named), oldest first."""
        return log_entries(self.engine, model_audit, model_audit.c.model, model)
