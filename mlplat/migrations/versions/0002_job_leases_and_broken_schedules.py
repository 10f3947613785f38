"""Leases on claimed job slots (a dead scheduler's slot is re-claimed), why a slot failed, broken schedules.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    # A slot claimed before leases has none: the next scheduler takes it as its runner's, dead.
    op.add_column("job_slots", sa.Column("lease_until", sa.DateTime(timezone=True)))
    op.add_column("job_slots", sa.Column("claims", sa.Integer, nullable=False, server_default="1"))
    op.add_column("job_slots", sa.Column("error", sa.Text))
    op.add_column("job_schedules", sa.Column("broken", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("job_slots") as batch:
        for column in ("lease_until", "claims", "error"):
            batch.drop_column(column)
    with op.batch_alter_table("job_schedules") as batch:
        batch.drop_column("broken")
