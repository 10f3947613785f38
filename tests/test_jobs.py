"""Notebook jobs on a real Jupyter kernel (papermill): provenance, failures, retries, reruns, bad input."""

import json
import os

import nbformat
import pytest

import mlplat
from mlplat.errors import ConfigError, JobError, JobFailed
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
    platform = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, online_prefix="jobs", user="ana",
                              team="pricing")
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
    assert (run.owner, run.team, tracked.data.tags["mlplat.team"]) == ("ana", "pricing", "pricing")
    assert artifacts == ["notebook/square.ipynb"]
    source.write_text(source.read_text().replace("x * x", "x + x"))  # the original changes afterwards
    again = p.jobs.rerun(run.id)
    assert again.id != run.id and outputs(again.output) == outputs(run.output)  # same inputs, same outputs
    assert [(j.id, j.owner, j.team) for j in p.jobs.history(source)] == [(again.id, "ana", "pricing"),
                                                                          (run.id, "ana", "pricing")]


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


def test_a_job_runs_on_a_dask_worker(p, tmp_path):
    from distributed import Client, LocalCluster

    source = notebook(tmp_path / "where.ipynb", "import os\nprint(x * 2, os.getpid())")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        (worker,) = client.scheduler_info()["workers"]
        worker_pid = client.run(os.getpid)[worker]
        run = p.jobs.run(source, parameters={"x": 21}, client=client)
        with pytest.raises(JobFailed, match="cell 2 raised NameError"):  # a failure on the worker reads the same
            p.jobs.run(notebook(tmp_path / "bad.ipynb", "print(undefined)"), client=client)
    assert run.host == worker and p.jobs.history(source)[0].host == worker
    printed = outputs(run.output)[0].split()
    assert printed[0] == "42"
    assert int(printed[1]) != os.getpid()  # the kernel was started by the worker, not by this process
    assert worker_pid != os.getpid()


def test_schedules_are_listed_paused_and_resumed_without_a_backlog(p, tmp_path):
    from datetime import UTC, datetime, timedelta

    from mlplat.jobs.schedules import Scheduler

    source = notebook(tmp_path / "tick.ipynb", "print(x)")
    schedule_id = p.jobs.schedule(source, "0 * * * *", parameters={"x": 3})
    (listed,) = p.jobs.schedules()
    now = datetime.now(UTC)
    assert (listed.id, listed.cron, listed.parameters, listed.enabled) == (schedule_id, "0 * * * *", {"x": 3}, True)
    assert (listed.created_by, listed.team) == ("ana", "pricing")
    assert listed.next_run == (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    p.jobs.pause(schedule_id)
    assert p.jobs.schedules()[0].next_run is None
    assert Scheduler(p).tick(now + timedelta(hours=3)) == []  # paused: nothing runs
    p.jobs.resume(schedule_id)
    assert Scheduler(p).due(now + timedelta(minutes=1)) == []  # the slots missed while paused are skipped
    assert len(Scheduler(p).due(now + timedelta(hours=1, minutes=1))) == 1
    with pytest.raises(JobError, match="No schedule 99"):
        p.jobs.pause(99)


K8S = {"image": "registry.example/mlplat:1.0", "namespace": "ml", "volume": "team-projects", "gpu": 1,
       "cpu": "2", "memory": "8Gi", "node_selector": {"pool": "gpu"},
       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
SERVERS = {"registry": "postgresql+psycopg://ml@db.ml:5432/mlplat", "tracking": "http://mlflow.ml:5000",
           "online_store": "redis://redis.ml:6379/0", "offline_store": "s3://features/offline",
           "artifacts": "s3://features/artifacts"}


def test_a_schedule_becomes_a_kubernetes_cronjob(tmp_path, redis_url):
    from croniter import croniter
    from kubernetes.client import ApiClient, V1CronJob

    project = tmp_path / "project"
    (project / "reports").mkdir(parents=True)
    source = notebook(project / "reports" / "Daily Report.ipynb", "print(x)")
    local = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, online_prefix="cron")
    schedule_id = local.jobs.schedule(source, "30 6 * * 1-5", parameters={"x": 5, "seed": 1})
    with pytest.raises(ConfigError, match="needs the kubernetes settings section"):
        local.jobs.cronjob(schedule_id, project)
    local.close()
    # the same metadata database, now described by the server URLs the cluster reaches
    p = mlplat.connect(home=str(tmp_path / "h"), kubernetes=K8S,
                       **{**SERVERS, "registry": local.settings.registry})
    with pytest.raises(ConfigError, match="cannot reach registry=sqlite"):  # embedded services stay on this machine
        p.jobs.cronjob(schedule_id, project)
    manifest = build_cronjob(p, schedule_id, project)
    # read back as the client reads the API server's JSON: every field must be one the CronJob model knows
    job = ApiClient().deserialize(json.dumps(manifest), "V1CronJob", "application/json")
    assert ApiClient().sanitize_for_serialization(job) == manifest  # nothing was dropped on the way
    assert isinstance(job, V1CronJob) and job.metadata.name == f"mlplat-daily-report-{schedule_id}"
    assert croniter.is_valid(job.spec.schedule) and job.spec.schedule == "30 6 * * 1-5"
    assert job.spec.concurrency_policy == "Forbid" and job.spec.suspend is False
    pod = job.spec.job_template.spec.template.spec
    (container,) = pod.containers
    assert container.command == ["mlplat", "jobs", "run", "/workspace/reports/Daily Report.ipynb", "--kernel",
                                 "python3", "--parameters", '{"seed": 1, "x": 5}']
    assert container.working_dir == "/workspace/reports"
    assert container.resources.limits == {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}
    assert pod.node_selector == {"pool": "gpu"} and pod.tolerations[0].effect == "NoSchedule"
    assert pod.volumes[0].persistent_volume_claim.claim_name == "team-projects"
    env = {e.name: e.value for e in container.env}
    assert env["MLPLAT_TRACKING"] == "http://mlflow.ml:5000" and env["MLPLAT_ONLINE_STORE"] == "redis://redis.ml:6379/0"
    with pytest.raises(JobError, match="not inside the project folder"):
        p.jobs.cronjob(schedule_id, tmp_path / "elsewhere")
    p.close()


def build_cronjob(p, schedule_id, project):
    """The manifest with the registry URL swapped for a server's (the test's registry is a local SQLite file)."""
    from dataclasses import replace

    from mlplat.jobs.kubernetes import cronjob, manifest
    from mlplat.jobs.schedules import schedule_of

    cluster_settings = replace(p.settings, registry=SERVERS["registry"])
    return manifest(cronjob(cluster_settings, schedule_of(p, schedule_id), project))


def test_a_parameter_line_papermill_cannot_read_is_named(p, tmp_path):
    source = notebook(tmp_path / "gate.ipynb", "print(gate)", parameters="gate = None  # None = no gate")
    with pytest.raises(JobError, match="papermill cannot read the line assigning 'gate'.*write it as `gate = value"):
        p.jobs.run(source, parameters={"gate": 0.7})
