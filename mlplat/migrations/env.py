"""Alembic's entry point: migrate the connection :func:`mlplat.db.upgrade` opened (and locked)."""

from alembic import context

from mlplat.db import VERSION_TABLE

context.configure(connection=context.config.attributes["connection"], version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
