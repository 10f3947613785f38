"""Alembic's entry point: migrate the connection :mod:`mlplat.db` opened (and locked)."""

from alembic import context

from mlplat.db import VERSION_TABLE

context.configure(connection=context.config.attributes["connection"], version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
