"""Baseline: every table of mlplat before migrations (release e4c9cd3), each created only where absent.

A database that release made, at any point of its life (it created each table on first use), is
at this revision's schema once this has run. The tables are a frozen copy, never to be edited:
the modules' own declarations move on with later revisions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

UTC_TIME = sa.DateTime(timezone=True)
frozen = sa.MetaData()  # mlplat.db reads its table names: a database holding one of them is not empty

sa.Table(
    "entities", frozen,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("updated_at", UTC_TIME, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)
sa.Table(
    "feature_views", frozen,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("created_at", UTC_TIME, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("updated_at", UTC_TIME, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)
sa.Table(
    "materialization_watermarks", frozen,
    sa.Column("view", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("event_end_ns", sa.BigInteger, nullable=False),
    sa.Column("ingest_ns", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTC_TIME, nullable=False),
)
sa.Table(
    "feature_compute_partitions", frozen,
    sa.Column("view", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("start_ns", sa.BigInteger, primary_key=True),
    sa.Column("end_ns", sa.BigInteger, nullable=False),
    sa.Column("label", sa.String(40), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("rows", sa.BigInteger),
    sa.Column("error", sa.Text),
    sa.Column("started_at", UTC_TIME, nullable=False),
    sa.Column("finished_at", UTC_TIME),
)
sa.Table(
    "audit", frozen,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTC_TIME, nullable=False),
    sa.Column("who", sa.String(200), nullable=False, index=True),
    sa.Column("team", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("object", sa.String(200), nullable=False, index=True),
    sa.Column("version", sa.String(40)),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)
sa.Table(
    "job_runs", frozen,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("notebook", sa.Text, nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("kernel", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("started_at", UTC_TIME, nullable=False),
    sa.Column("seconds", sa.Float),
    sa.Column("input_sha256", sa.String(64), nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("mlflow_run_id", sa.String(64)),
    sa.Column("error", sa.Text),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("team", sa.String(200)),
    sa.Column("rerun_of", sa.String(32)),
    sa.Column("host", sa.String(200)),
)
sa.Table(
    "job_schedules", frozen,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("notebook", sa.Text, nullable=False),
    sa.Column("cron", sa.String(100), nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("kernel", sa.String(200), nullable=False),
    sa.Column("created_at", UTC_TIME, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("team", sa.String(200)),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("resumed_at", UTC_TIME),
)
sa.Table(
    "job_slots", frozen,
    sa.Column("schedule_id", sa.Integer, primary_key=True),
    sa.Column("slot", UTC_TIME, primary_key=True),
    sa.Column("job_id", sa.String(32)),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("claimed_at", UTC_TIME, nullable=False),
)
sa.Table(
    "alerts", frozen,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(40), nullable=False),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("fired_at", UTC_TIME, nullable=False),
    sa.Column("last_seen_at", UTC_TIME, nullable=False),
    sa.Column("resolved_at", UTC_TIME),
    sa.Column("checks", sa.Integer, nullable=False),
    sa.Column("delivery", sa.Text, nullable=False),
)
sa.Table(
    "monitor_thresholds", frozen,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("settings", sa.Text, nullable=False),
)
sa.Table(
    "serving_experiments", frozen,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("champion", sa.String(40), nullable=False),
    sa.Column("challenger", sa.String(40), nullable=False),
    sa.Column("mode", sa.String(20), nullable=False),
    sa.Column("traffic", sa.Float, nullable=False),
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", UTC_TIME, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("result", sa.Text),
)
sa.Table(
    "serving_experiment_events", frozen,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment", sa.String(200), nullable=False, index=True),
    sa.Column("unit", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("arm", sa.String(20)),
    sa.Column("version", sa.String(40)),
    sa.Column("value", sa.Float),
    sa.Column("at", UTC_TIME, nullable=False),
)


def upgrade() -> None:
    frozen.create_all(op.get_bind(), checkfirst=True)  # what that release had not made yet, with its indexes


def downgrade() -> None:
    frozen.drop_all(op.get_bind())
