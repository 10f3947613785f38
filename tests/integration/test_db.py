"""The metadata database's migrations: `mlplat db upgrade` brings a database made before them (by release
e4c9cd3, holding data, on SQLite and on PostgreSQL) to the declared schema with every row kept; the platform
refuses a database older or newer than it knows; a new empty one is created once however many processes start."""

import importlib
import json
import pkgutil
import shutil
import subprocess
import tarfile
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from old_install import FIXTURES, served, stored

import mlplat
from mlplat import db
from mlplat.cli import main
from mlplat.errors import SchemaOutdated, SchemaTooNew

# The job tables as mlplat created them before migrations (main at e4c9cd3, SQLAlchemy's DDL for SQLite)
BEFORE_MIGRATIONS = [
    """CREATE TABLE job_runs (id VARCHAR(32) NOT NULL, notebook TEXT NOT NULL, parameters TEXT NOT NULL,
    kernel VARCHAR(200) NOT NULL, status VARCHAR(20) NOT NULL, attempts INTEGER NOT NULL, started_at DATETIME NOT NULL,
    seconds FLOAT, input_sha256 VARCHAR(64) NOT NULL, output TEXT NOT NULL, mlflow_run_id VARCHAR(64), error TEXT,
    who VARCHAR(200) NOT NULL, team VARCHAR(200), rerun_of VARCHAR(32), host VARCHAR(200), PRIMARY KEY (id))""",
    """CREATE TABLE job_schedules (id INTEGER NOT NULL, notebook TEXT NOT NULL, cron VARCHAR(100) NOT NULL,
    parameters TEXT NOT NULL, kernel VARCHAR(200) NOT NULL, created_at DATETIME NOT NULL,
    created_by VARCHAR(200) NOT NULL, team VARCHAR(200), enabled BOOLEAN NOT NULL, resumed_at DATETIME,
    PRIMARY KEY (id))""",
    """CREATE TABLE job_slots (schedule_id INTEGER NOT NULL, slot DATETIME NOT NULL, job_id VARCHAR(32),
    status VARCHAR(20) NOT NULL, claimed_at DATETIME NOT NULL, PRIMARY KEY (schedule_id, slot))""",
]
SAFE_EXTRACT = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.11.4+ has extraction filters


def tiny_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell("x = 1")
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, nbformat.v4.new_code_cell("print(x)")]
    nbformat.write(nb, path)
    return path


def mlplat_cli(*args, **settings):
    """Run the real `mlplat` command with these settings (as MLPLAT_* variables)."""
    env = {f"MLPLAT_{key.upper()}": value for key, value in settings.items()}
    return CliRunner().invoke(main, list(args), env=env)


def schema_differences(engine):
    """What Alembic finds different between the database and every table the code declares (`alembic check`)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    for module in pkgutil.walk_packages(mlplat.__path__, "mlplat."):  # each table is declared in its own module
        importlib.import_module(module.name)
    declared = db.metadata
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "version_table": db.VERSION_TABLE, "compare_type": True,
            "include_name": lambda name, kind, _: kind != "table" or name in declared.tables})
        return compare_metadata(context, declared)


def test_a_database_made_before_migrations_is_upgraded_keeping_its_rows(tmp_path, redis_url):
    from mlplat.jobs.scheduler import Scheduler
    from mlplat.jobs.schedules import slots_of

    home, source = tmp_path / "h", tiny_notebook(tmp_path / "old.ipynb")
    home.mkdir()
    with sa.create_engine(f"sqlite:///{home / 'registry.db'}").begin() as conn:
        for statement in BEFORE_MIGRATIONS:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql(
            "INSERT INTO job_runs VALUES ('r1', ?, '{}', 'python3', 'succeeded', 1, '2026-01-01 00:00:00.000000', "
            "1.5, 'abc', '/out.ipynb', NULL, NULL, 'ana', 'pricing', NULL, 'local')", (str(source),))
        conn.exec_driver_sql("INSERT INTO job_schedules VALUES (1, ?, '0 3 * * *', '{\"x\": 2}', 'python3', "
                             "'2026-01-01 00:00:00.000000', 'ana', 'pricing', 1, NULL)", (str(source),))
        # slots a scheduler of then finished, and one it was killed running (stuck 'running' for good, then)
        conn.exec_driver_sql("INSERT INTO job_slots VALUES (1, '2026-01-02 03:00:00.000000', 'r1', 'succeeded', "
                             "'2026-01-02 03:00:01.000000'), (1, '2026-01-03 03:00:00.000000', NULL, 'running', "
                             "'2026-01-03 03:00:01.000000')")

    upgraded = mlplat_cli("db", "upgrade", home=str(home))
    assert (upgraded.exit_code, upgraded.output) == (0, "upgraded from before migrations to 0002\n")
    p = mlplat.connect(home=str(home), online_store=redis_url, online_prefix="db", user="ana")
    assert [(r.id, r.owner, r.seconds) for r in p.jobs.history()] == [("r1", "ana", 1.5)]
    assert db.current_revision(p.engine) == "0002"
    (listed,) = p.jobs.schedules()
    assert (listed.cron, listed.parameters, listed.last_status, listed.broken) == ("0 3 * * *", {"x": 2}, "running",
                                                                                   None)
    assert [(s["status"], s["claims"], s["lease_until"]) for s in slots_of(p.engine, 1)] == [("succeeded", 1, None),
                                                                                      ("running", 1, None)]
    assert schema_differences(p.engine) == []

    # the slot left running has no lease: the next scheduler takes it as its dead scheduler's and runs it
    Scheduler(p.jobs).tick(slots_of(p.engine, 1)[-1]["slot"])
    assert [(s["status"], s["claims"]) for s in slots_of(p.engine, 1)] == [("succeeded", 1), ("succeeded", 2)]
    assert len(p.jobs.history()) == 2
    p.close()


def downgrade(url, revision):
    """Take the database back to an older revision, as if this mlplat's newest were still to come."""
    from alembic import command
    from alembic.config import Config

    with sa.create_engine(url).begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(db.MIGRATIONS))
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_an_older_database_is_refused_until_mlplat_db_upgrade(tmp_path, redis_url):
    home = tmp_path / "h"
    home.mkdir()
    url = f"sqlite:///{home / 'registry.db'}"
    with sa.create_engine(url).begin() as conn:
        conn.exec_driver_sql(BEFORE_MIGRATIONS[0])
    p = mlplat.connect(home=str(home), online_store=redis_url, online_prefix="db", user="ana")
    with pytest.raises(SchemaOutdated, match=r"from before migrations, older than this mlplat's 0002\. Back it up, "
                                             r"then run `mlplat db upgrade`"):
        p.features.list_views()
    current = mlplat_cli("db", "current", home=str(home))
    assert (current.exit_code, current.output) == (1, "made before migrations: older than this mlplat's 0002; back "
                                                      "the database up, then run `mlplat db upgrade`\n")

    assert mlplat_cli("db", "upgrade", home=str(home)).output == "upgraded from before migrations to 0002\n"
    downgrade(url, "0001")
    with pytest.raises(SchemaOutdated, match=r"at schema revision 0001, older than this mlplat's 0002\. .*"
                                             r"`mlplat db upgrade`"):
        p.jobs.history()
    assert mlplat_cli("db", "current", home=str(home)).output.startswith("0001: older than this mlplat's 0002")

    assert mlplat_cli("db", "upgrade", home=str(home)).output == "upgraded from 0001 to 0002\n"
    current = mlplat_cli("db", "current", home=str(home))
    assert (current.exit_code, current.output) == (0, "0002 (current)\n")
    assert mlplat_cli("db", "upgrade", home=str(home)).output == "at 0002 already\n"
    assert p.features.list_views() == [] and p.jobs.history() == []  # the platform refused before works now
    p.close()


def test_a_database_a_newer_mlplat_upgraded_is_refused(tmp_path, redis_url):
    home = tmp_path / "h"
    with mlplat.connect(home=str(home), online_store=redis_url, online_prefix="db") as p:
        assert p.features.list_views() == []  # a new database, created at the newest revision
    with sa.create_engine(f"sqlite:///{home / 'registry.db'}").begin() as conn:
        conn.exec_driver_sql(f"UPDATE {db.VERSION_TABLE} SET version_num = '0099_from_the_future'")
    refusal = "at schema revision 0099_from_the_future, which this mlplat does not know .* Upgrade mlplat to a " \
              "version that knows revision 0099_from_the_future"
    p = mlplat.connect(home=str(home), online_store=redis_url, online_prefix="db")
    with pytest.raises(SchemaTooNew, match=refusal):
        p.features.list_views()
    p.close()
    upgraded = mlplat_cli("db", "upgrade", home=str(home))  # no downgrade by mistake
    assert upgraded.exit_code == 1 and "Upgrade mlplat to a version that knows revision" in upgraded.output
    current = mlplat_cli("db", "current", home=str(home))
    assert (current.exit_code, current.output) == (1, "0099_from_the_future: newer than this mlplat knows (its newest "
                                                      "is 0002); upgrade mlplat to a version that knows revision "
                                                      "0099_from_the_future\n")


def test_head_is_the_newest_migration():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [db.HEAD]


def test_a_new_database_gets_the_declared_schema_once_when_processes_start_together(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    start, failures = threading.Barrier(4), []

    def open_database():
        start.wait()
        try:
            db.open_database(url).dispose()
        except Exception as exc:  # collected, to fail the test below
            failures.append(exc)

    threads = [threading.Thread(target=open_database) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine = sa.create_engine(url)
    assert failures == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT version_num FROM {db.VERSION_TABLE}").all() == [("0002",)]
    assert schema_differences(engine) == []


# -- installs made by release e4c9cd3 (tests/fixtures/make_old_install.py) ----------------------------------------

def expected(name):
    return json.loads((FIXTURES / f"expected-{name}.json").read_text())


def upgrade_and_check(settings, recorded):
    """Refused as it is; `mlplat db upgrade`; then today's code reads what e4c9cd3's recorded."""
    refused = mlplat.connect(**settings)
    with pytest.raises(SchemaOutdated, match="`mlplat db upgrade`"):
        refused.features.list_views()
    refused.close()
    upgraded = mlplat_cli("db", "upgrade", **{k: v for k, v in settings.items() if k in ("home", "registry")})
    assert (upgraded.exit_code, upgraded.output) == (0, "upgraded from before migrations to 0002\n")

    p = mlplat.connect(**settings)
    assert stored(p) == {key: recorded[key] for key in stored(p)}
    assert schema_differences(p.engine) == []
    return p


def works_on(p, home):
    """New rows in the old tables: a partition computed, a notebook scheduled, a model promoted, all audited."""
    trips = pd.DataFrame({"driver_id": [1, 1, 2], "event_timestamp": pd.to_datetime(["2026-01-04 01:00"] * 3, utc=True),
                          "fare": [10.0, 5.0, 7.5]})
    p.features.compute("driver_daily", "2026-01-04", "2026-01-05", sources={"trips": trips}, progress=False)
    assert p.features.partitions("driver_daily")[["partition", "rows"]].values.tolist()[-1] == ["2026-01-04", 2]
    schedule = p.jobs.schedule(tiny_notebook(home / "new.ipynb"), "0 4 * * *")
    assert [s.id for s in p.jobs.schedules()] == [1, 2, schedule] and schedule == 3
    p.models.promote("churn", force=True, reason="after the upgrade")
    assert [(v.version, v.aliases) for v in p.models.versions("churn")] == [("2", ["champion"]), ("1", [])]
    assert [(e.who, e.kind, e.action) for e in p.audit.entries(limit=3)] == [
        ("ben", "feature_view", "computed"), ("ben", "schedule", "created"), ("ben", "model", "promoted")]


def test_an_install_on_sqlite_made_by_e4c9cd3_upgrades_keeping_everything(tmp_path, redis_url):
    home = tmp_path / "home"
    with tarfile.open(FIXTURES / "sqlite-home.tar.xz") as tar:
        tar.extractall(home, **SAFE_EXTRACT)
    recorded = expected("sqlite")
    p = upgrade_and_check({"home": str(home), "online_store": redis_url, "online_prefix": f"e4{uuid.uuid4().hex[:8]}",
                           "user": "ben", "team": "ml"}, recorded)
    p.features.materialize(start=datetime(2026, 1, 1, tzinfo=UTC), progress=False)  # into this test's Redis keys
    assert served(p) == {"training_set": recorded["training_set"], "online": recorded["online"]}
    works_on(p, home)
    p.close()


def psql():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), key=lambda p: int(p.parent.parent.name))
    return str(found[-1]) if found else shutil.which("psql")


def test_an_install_on_postgresql_made_by_e4c9cd3_upgrades_keeping_everything(tmp_path, redis_url, postgres_url):
    name = f"e4c9cd3_{uuid.uuid4().hex[:8]}"
    with sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = sa.make_url(postgres_url).set(database=name)
    subprocess.run([psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", url.host, "-p", str(url.port), "-U",
                    url.username, "-d", name, "-f", str(FIXTURES / "postgresql-registry.sql")],
                   check=True, capture_output=True)
    url = url.render_as_string(hide_password=False)
    home = tmp_path / "home"
    p = upgrade_and_check({"home": str(home), "registry": url, "tracking": url, "online_store": redis_url,
                           "online_prefix": f"e4{uuid.uuid4().hex[:8]}", "user": "ben", "team": "ml"},
                          expected("postgresql"))
    works_on(p, home)
    with p.engine.connect() as conn:  # MLflow's own migrations table, in the same database, is left alone
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    p.close()
