"""The metadata database's migrations: a database made before them is upgraded with its rows kept, the result
is the schema the code declares, and processes starting at once upgrade it once."""

import threading

import nbformat
import sqlalchemy as sa

import mlplat
from mlplat import db

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


def tiny_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell("x = 1")
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, nbformat.v4.new_code_cell("print(x)")]
    nbformat.write(nb, path)
    return path


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


def schema_differences(engine):
    """What Alembic finds different between the database's job tables and the tables the code declares."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from mlplat.jobs.runs import job_runs
    from mlplat.jobs.schedules import schedules_table, slots_table

    declared = sa.MetaData()
    for table in (job_runs, schedules_table, slots_table):
        table.to_metadata(declared)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "version_table": db.VERSION_TABLE, "compare_type": True,
            "include_name": lambda name, kind, _: kind != "table" or name in declared.tables})
        return compare_metadata(context, declared)


def test_a_new_database_gets_the_declared_schema_once_when_processes_start_together(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    start, failures = threading.Barrier(4), []

    def open_database():
        engine = sa.create_engine(url)
        start.wait()
        try:
            db.upgrade(engine)
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
