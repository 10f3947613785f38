"""The metadata database: the one ``MetaData`` every table is declared on, the engine, and the migrations.

Each table is defined in the module that uses it (``mlplat.audit``, ``mlplat.features.registry``,
``mlplat.jobs.runs``, ...) on :data:`metadata`, and created or changed only by the Alembic revisions
in ``mlplat/migrations/versions``, never by ``create_all``: an existing database then gets new
tables and columns with its rows kept. Revision 0001 is the whole schema of mlplat before
migrations (release e4c9cd3), each table created only where absent, so a database that release
made is at 0001's schema.

The platform opens its database with :func:`open_database`, which checks the schema once: a
brand-new empty database gets the newest schema there and then; one at an older revision
(or made before migrations) is refused with :class:`~mlplat.errors.SchemaOutdated` until
``mlplat db upgrade`` (:func:`upgrade`) has run; one at a revision this mlplat does not know
(a newer mlplat upgraded it) is refused with :class:`~mlplat.errors.SchemaTooNew`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mlplat.errors import RegistryError, SchemaOutdated, SchemaTooNew, one_line
from mlplat.files import private_file

metadata = sa.MetaData()

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "mlplat_alembic_version"  # not alembic_version: MLflow's store may share the database
BASELINE = "0001"  # the schema of mlplat before migrations
HEAD = "0002"  # the newest revision in mlplat/migrations/versions (tests/test_db.py checks that they agree)

# Taken inside the migration's transaction, so that one process migrates while the others wait.
_LOCKS = {"sqlite": "BEGIN IMMEDIATE", "postgresql": "SELECT pg_advisory_xact_lock(7046532901)"}
_version = sa.Table(VERSION_TABLE, sa.MetaData(), sa.Column("version_num", sa.String(32), primary_key=True))


def create_engine(url: str) -> sa.Engine:
    """A SQLAlchemy engine for the metadata database at ``url``, creating the SQLite file's folder if needed.

    It connects lazily and checks no schema: the platform opens its database with :func:`open_database`.
    """
    if url.startswith("sqlite:///") and url.removeprefix("sqlite:///") not in ("", ":memory:"):
        private_file(Path(url.removeprefix("sqlite:///").split("?")[0]))  # 0600: SQLite gives its journals the same
    try:
        return sa.create_engine(url)
    except (sa.exc.SQLAlchemyError, ModuleNotFoundError) as exc:
        raise RegistryError(f"Cannot open the metadata database {url!r}: {exc}. Check the registry setting.") from None


def open_database(url: str) -> sa.Engine:
    """The engine of the metadata database at ``url``, once :func:`check` has found its schema usable."""
    engine = create_engine(url)
    try:
        check(engine)
    except Exception:
        engine.dispose()
        raise
    return engine


def check(engine: sa.Engine) -> None:
    """Refuse a database whose schema is older or newer than this mlplat's; give an empty one the newest schema.

    Raises :class:`~mlplat.errors.SchemaOutdated` (run ``mlplat db upgrade``) or
    :class:`~mlplat.errors.SchemaTooNew` (upgrade mlplat). A current database costs one look at the
    version table.
    """
    with _connect(engine) as conn:
        revision = current_revision(conn)
    if revision is None:
        revision = _create_if_empty(engine)
    if revision != HEAD:
        raise _refusal(engine, revision)


def upgrade(engine: sa.Engine) -> str | None:
    """Bring the database to the newest schema, keeping its rows; return the revision it was at.

    A database made before migrations (``None``) is taken as revision 0001's schema, its absent
    tables created. It runs in one transaction (a failure changes nothing, on SQLite as on
    PostgreSQL) holding a lock, so while other processes start one migrates and the others wait.
    """
    from alembic import command

    with _migrating(engine) as (conn, config):
        before = current_revision(conn)
        if before is not None and before not in _revisions():
            raise _refusal(engine, before)
        if before != HEAD:
            command.upgrade(config, "head")
        return before


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands against this mlplat's migrations (``mlplat db current``)."""

    revision: str | None  # None: not stamped (empty, or made before migrations)
    status: str  # "current", "empty", "outdated" or "too_new"

    def __str__(self) -> str:
        return {
            "current": f"{self.revision} (current)",
            "empty": f"empty: the newest schema ({HEAD}) is created on first use",
            "outdated": f"{self.revision or 'made before migrations'}: older than this mlplat's {HEAD}; "
                        "back the database up, then run `mlplat db upgrade`",
            "too_new": f"{self.revision}: newer than this mlplat knows (its newest is {HEAD}); "
                       f"upgrade mlplat to a version that knows revision {self.revision}",
        }[self.status]


def state(engine: sa.Engine) -> SchemaState:
    """The database's revision and whether it is current (changes nothing)."""
    with _connect(engine) as conn:
        revision = current_revision(conn)
        if revision == HEAD:
            return SchemaState(revision, "current")
        if revision is None:
            return SchemaState(None, "outdated" if _made_before_migrations(conn) else "empty")
    return SchemaState(revision, "outdated" if revision in _revisions() else "too_new")


def current_revision(bind: sa.Engine | sa.Connection) -> str | None:
    """The revision the database is at (None before its first migration)."""
    if isinstance(bind, sa.Engine):
        with _connect(bind) as conn:
            return current_revision(conn)
    if not sa.inspect(bind).has_table(VERSION_TABLE):
        return None
    return bind.execute(sa.select(_version.c.version_num)).scalar()


def _create_if_empty(engine: sa.Engine) -> str | None:
    """Give a database holding no mlplat table the newest schema; return its revision then."""
    from alembic import command

    with _migrating(engine) as (conn, config):
        revision = current_revision(conn)  # again: another process may have created it meanwhile
        if revision is None and not _made_before_migrations(conn):
            command.upgrade(config, "head")
            revision = HEAD
        return revision


def _made_before_migrations(conn: sa.Connection) -> bool:
    """Whether the database holds a table of mlplat before migrations (and so is not empty)."""
    frozen = _scripts().get_revision(BASELINE).module.frozen  # revision 0001's copy of those tables
    return not frozen.tables.keys().isdisjoint(sa.inspect(conn).get_table_names())


def _refusal(engine: sa.Engine, revision: str | None) -> SchemaOutdated | SchemaTooNew:
    where = engine.url.render_as_string(hide_password=True)
    if revision is None or revision in _revisions():
        return SchemaOutdated(
            f"The metadata database {where} is at schema revision {revision or 'from before migrations'}, older "
            f"than this mlplat's {HEAD}. Back it up, then run `mlplat db upgrade`.")
    return SchemaTooNew(
        f"The metadata database {where} is at schema revision {revision}, which this mlplat does not know (its "
        f"newest is {HEAD}): a newer mlplat upgraded it. Upgrade mlplat to a version that knows revision {revision}.")


@contextmanager
def _connect(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection, or a RegistryError saying the database cannot be reached."""
    try:
        conn = engine.connect()
    except sa.exc.SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise RegistryError(f"Cannot open the metadata database {where}: {one_line(exc)}. "
                            "Check the registry setting.") from None
    with conn:
        yield conn


@contextmanager
def _migrating(engine: sa.Engine) -> Iterator[tuple[sa.Connection, Any]]:
    """A transaction holding the migration lock, and Alembic's configuration bound to it."""
    from alembic.config import Config

    with _connect(engine) as conn, conn.begin():
        if engine.dialect.name in _LOCKS:
            conn.exec_driver_sql(_LOCKS[engine.dialect.name])
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        yield conn, config


@cache
def _scripts() -> Any:
    """Alembic's view of mlplat/migrations (read once per process)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def _revisions() -> set[str]:
    return {script.revision for script in _scripts().walk_revisions()}
