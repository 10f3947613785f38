"""The metadata database's schema, kept current by the Alembic migrations in ``mlplat/migrations``.

Tables that a migration manages are changed only by a new revision there, never by
``create_all``: an existing database then gets the new columns with its rows kept.
:func:`upgrade` runs where those tables are first needed; it is cheap when the database
is current, and safe when several processes (the scheduler, kernels, the CLI) start at once.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "mlplat_alembic_version"  # not alembic_version: MLflow's store may share the database

# Taken inside the migration's transaction, so that one process migrates while the others wait.
_LOCKS = {"sqlite": "BEGIN IMMEDIATE", "postgresql": "SELECT pg_advisory_xact_lock(7046532901)"}


def upgrade(engine: sa.Engine) -> None:
    """Bring the database behind ``engine`` to the newest revision, creating what is absent."""
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if current_revision(engine) == ScriptDirectory.from_config(config).get_current_head():
        return
    with engine.begin() as conn:
        if engine.dialect.name in _LOCKS:
            conn.exec_driver_sql(_LOCKS[engine.dialect.name])
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at (None before its first :func:`upgrade`)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
