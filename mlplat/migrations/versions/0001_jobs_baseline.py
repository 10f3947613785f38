"""Baseline: the notebook-job tables as mlplat created them before migrations (created only where absent).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "job_runs" not in existing:
        op.create_table(
            "job_runs",
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
    if "job_schedules" not in existing:
        op.create_table(
            "job_schedules",
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
    if "job_slots" not in existing:
        op.create_table(
            "job_slots",
            sa.Column("schedule_id", sa.Integer, primary_key=True),
            sa.Column("slot", UTC_TIME, primary_key=True),
            sa.Column("job_id", sa.String(32)),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("claimed_at", UTC_TIME, nullable=False),
        )


def downgrade() -> None:
    for table in ("job_slots", "job_schedules", "job_runs"):
        op.drop_table(table)
