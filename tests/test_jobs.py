"""Notebook jobs on a real Jupyter kernel (papermill): provenance, failures, retries, reruns, bad input."""

import json

import nbformat
import pytest

import mlplat
from mlplat.errors import JobError, JobFailed
from mlplat.training import tracking


def notebook(path, *cells, parameters="x = 1\nseed = 0"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell(parameters)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


def outputs(path):
    nb = nbformat.read(path, as_version=4)
    return [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.fixture
def p(tmp_path, redis_url):
    platform = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, online_prefix="jobs")
    yield platform
    platform.close()


def test_a_run_is_parameterised_tracked_and_rerun_identically(p, tmp_path):
    source = notebook(tmp_path / "square.ipynb",
                      "import random\nrandom.seed(seed)\nprint(x * x, random.random())")
    run = p.jobs.run(source, parameters={"x": 7})
    assert run.status == "succeeded" and run.attempts == 1
    assert outputs(run.output)[0].startswith("49 ")
    with tracking.session(p.settings) as client:
        tracked = client.get_run(run.mlflow_run_id)
        artifacts = [a.path for a in client.list_artifacts(run.mlflow_run_id, "notebook")]
    assert tracked.data.params["param.x"] == "7" and tracked.data.tags["mlplat.status"] == "succeeded"
    assert artifacts == ["notebook/square.ipynb"]
    source.write_text(source.read_text().replace("x * x", "x + x"))  # the original changes afterwards
    again = p.jobs.rerun(run.id)
    assert again.id != run.id and outputs(again.output) == outputs(run.output)  # same inputs, same outputs
    assert [j.id for j in p.jobs.history(source)] == [again.id, run.id]


def test_a_failing_cell_is_reported_plainly_after_retries(p, tmp_path):
    source = notebook(tmp_path / "broken.ipynb", "print('start')", "1 / 0")
    with pytest.raises(JobFailed, match=r"broken.ipynb failed after 2 attempt\(s\): cell 3 raised ZeroDivisionError"):
        p.jobs.run(source, retries=1, backoff=0.01)
    (failed,) = p.jobs.history(source)
    assert failed.status == "failed" and failed.attempts == 2 and "ZeroDivisionError" in failed.error
    assert "Traceback" in json.dumps(nbformat.read(failed.output, as_version=4))  # kept for reading


def test_bad_jobs_are_refused_before_anything_runs(p, tmp_path):
    source = notebook(tmp_path / "ok.ipynb", "print(x)")
    with pytest.raises(JobError, match="No notebook at"):
        p.jobs.run(tmp_path / "missing.ipynb")
    with pytest.raises(JobError, match="declares no parameter 'y'.*declares \\['seed', 'x'\\]"):
        p.jobs.run(source, parameters={"y": 1})
    with pytest.raises(JobError, match="No Jupyter kernel 'cobol'"):
        p.jobs.run(source, kernel="cobol")
    with pytest.raises(JobError, match="No job run"):
        p.jobs.rerun("nope")
    assert p.jobs.history() == []


def test_the_scheduler_runs_each_slot_once_across_restarts(p, tmp_path):
    from datetime import UTC, timedelta

    import sqlalchemy as sa

    from mlplat.jobs.schedules import Scheduler, schedules_table, slots_of

    source = notebook(tmp_path / "tick.ipynb", "print(x)")
    schedule_id = p.jobs.schedule(source, "*/10 * * * *", parameters={"x": 3})
    with p.engine.connect() as conn:
        made = conn.execute(sa.select(schedules_table.c.created_at)).scalar().replace(tzinfo=UTC)
    later = made + timedelta(minutes=25)
    # independently: every 10-minute mark after the schedule was made, up to `later`
    mark = made.replace(minute=made.minute - made.minute % 10, second=0, microsecond=0) + timedelta(minutes=10)
    expected = []
    while mark <= later:
        expected.append(mark)
        mark += timedelta(minutes=10)

    assert len(Scheduler(p).tick(later)) == len(expected)  # a scheduler that was down catches up
    assert Scheduler(p).tick(later) == []  # and a restarted one runs none of them again
    slots = slots_of(p, schedule_id)
    assert [s["slot"] for s in slots] == expected
    assert {s["status"] for s in slots} == {"succeeded"} and len({s["job_id"] for s in slots}) == len(expected)
    assert len(Scheduler(p).tick(later + timedelta(minutes=10))) == 1  # the next slot, once
    assert len(p.jobs.history(source)) == len(expected) + 1


def test_a_bad_schedule_is_refused(p, tmp_path):
    source = notebook(tmp_path / "ok.ipynb", "print(x)")
    with pytest.raises(JobError, match="not a cron expression"):
        p.jobs.schedule(source, "every hour")
    with pytest.raises(JobError, match="declares no parameter"):
        p.jobs.schedule(source, "0 * * * *", parameters={"z": 1})
