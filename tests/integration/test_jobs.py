"""Notebook jobs on a real Jupyter kernel (papermill): provenance, failures, retries, reruns, bad input."""

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import pytest

import mlplat
from mlplat.errors import ConfigError, DefinitionError, InvalidArgument, JobError, JobFailed
from mlplat.registry import tracking


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


def test_a_template_keeps_one_live_schedule_per_key_and_a_new_cron_replaces_it(p):
    from mlplat.jobs.runs import Jobs
    from mlplat.scheduling import TemplateScheduler

    assert inspect.signature(Jobs.schedule_template) == inspect.signature(TemplateScheduler.schedule_template)
    check = "monitor_check.ipynb"
    churn = p.jobs.schedule_template(check, "0 * * * *", {"model": "churn"}, key="model")
    assert p.jobs.schedule_template(check, "0 * * * *", {"model": "churn"}, key="model") == churn  # asked again
    fraud = p.jobs.schedule_template(check, "0 * * * *", {"model": "fraud"}, key="model")  # another key: its own
    with pytest.raises(JobError, match="'hourly' is not a cron expression"):  # refused before churn's is paused
        p.jobs.schedule_template(check, "hourly", {"model": "churn"}, key="model")
    with pytest.raises(InvalidArgument, match="key='view' must name one of the parameters \\['model'\\]"):
        p.jobs.schedule_template(check, "30 * * * *", {"model": "churn"}, key="view")
    moved = p.jobs.schedule_template(check, "30 * * * *", {"model": "churn"}, key="model")
    again = p.jobs.schedule_template(check, "30 * * * *", {"model": "churn"})  # no key: a schedule more
    listed = {s.id: (s.enabled, s.cron, Path(s.notebook).name, s.parameters) for s in p.jobs.schedules()}
    assert listed == {churn: (False, "0 * * * *", check, {"model": "churn"}),
                      fraud: (True, "0 * * * *", check, {"model": "fraud"}),
                      moved: (True, "30 * * * *", check, {"model": "churn"}),
                      again: (True, "30 * * * *", check, {"model": "churn"})}


def test_the_scheduler_runs_each_slot_once_across_restarts(p, tmp_path):
    from datetime import UTC, timedelta

    import sqlalchemy as sa

    from mlplat.jobs.scheduler import Scheduler
    from mlplat.jobs.schedules import schedules_table, slots_of

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

    assert len(Scheduler(p.jobs).tick(later)) == len(expected)  # a scheduler that was down catches up
    assert Scheduler(p.jobs).tick(later) == []  # and a restarted one runs none of them again
    slots = slots_of(p.engine, schedule_id)
    assert [s["slot"] for s in slots] == expected
    assert {s["status"] for s in slots} == {"succeeded"} and len({s["job_id"] for s in slots}) == len(expected)
    assert len(Scheduler(p.jobs).tick(later + timedelta(minutes=10))) == 1  # the next slot, once
    assert len(p.jobs.history(source)) == len(expected) + 1


def test_a_bad_schedule_is_refused(p, tmp_path, driver):
    from mlplat.features.compute import BatchFeatureView
    from mlplat.features.definitions import Field

    source = notebook(tmp_path / "ok.ipynb", "print(x)")
    with pytest.raises(JobError, match="not a cron expression"):
        p.jobs.schedule(source, "every hour")
    with pytest.raises(JobError, match="declares no parameter"):
        p.jobs.schedule(source, "0 * * * *", parameters={"z": 1})
    with pytest.raises(JobError, match=r"'0 0 30 2 \*' never fires"):  # 30 February
        p.jobs.schedule(source, "0 0 30 2 *")
    with pytest.raises(JobError, match="never fires"):
        p.jobs.schedule(source, "0 0 31 4,6,9,11 *")
    for six_or_seven in ("0 * * * * *", "0 0 0 1 1 * 2030"):  # seconds, years
        with pytest.raises(JobError, match="fields, but schedules take five"):
            p.jobs.schedule(source, six_or_seven)
    with pytest.raises(DefinitionError, match=r"schedule '0 0 30 2 \*' never fires"):  # the same check
        BatchFeatureView("daily", entities=[driver], schema=[Field("trips", "int64")], transformation="SELECT 1",
                         sources={"trips": "trips.parquet"}, schedule="0 0 30 2 *")
    assert p.jobs.schedules() == []
    assert p.jobs.schedule(source, "0 0 29 2 *") and p.jobs.schedule(source, "@daily")  # rare, or an alias: fine


def test_a_dying_kernel_is_a_failed_run_recorded_and_retried(p, tmp_path):
    source = notebook(tmp_path / "dies.ipynb", "print('before')", "import os\nos._exit(1)", "print('after')")
    with pytest.raises(JobFailed, match=r"dies.ipynb failed after 2 attempt\(s\): the kernel died while running "
                                        r"cell 3\.") as failed:
        p.jobs.run(source, retries=1, backoff=0.01)
    (run,) = p.jobs.history(source)
    assert (run.id, run.status, run.attempts) == (failed.value.job_id, "failed", 2)
    assert run.error == "the kernel died while running cell 3"
    assert outputs(run.output) == ["before\n"]  # the partial notebook: what ran before the kernel died
    with tracking.session(p.settings) as client:
        tracked = client.get_run(run.mlflow_run_id)
        artifact = client.download_artifacts(run.mlflow_run_id, "notebook/dies.ipynb", str(tmp_path))
    assert (tracked.info.status, tracked.data.tags["mlplat.status"]) == ("FAILED", "failed")
    assert outputs(artifact) == ["before\n"]


def test_a_hung_cell_is_stopped_at_the_timeout_and_fails_its_run(tmp_path, redis_url):
    """A cell that never returns cannot hold a job (and a scheduler's slot) for ever: job_timeout stops it."""
    p = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, online_prefix="hung", job_timeout="2s")
    source = notebook(tmp_path / "hangs.ipynb", "print('before')", "import time\ntime.sleep(3600)", "print('after')")
    began = time.monotonic()
    with pytest.raises(JobFailed, match=r"cell 3 ran longer than the 2 s a cell may run and was stopped"):
        p.jobs.run(source)
    assert time.monotonic() - began < 60
    (run,) = p.jobs.history(source)
    assert (run.status, outputs(run.output)[0]) == ("failed", "before\n")
    with pytest.raises(JobError, match="timeout=0"):
        p.jobs.run(source, timeout=0)
    p.close()


def test_a_kernel_that_cannot_start_is_a_failed_run(p, tmp_path, monkeypatch):
    spec = tmp_path / "kernels" / "kernels" / "broken"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": ["false"], "display_name": "Broken", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kernels"))
    source = notebook(tmp_path / "never.ipynb", "print(x)")
    with pytest.raises(JobFailed, match="never.ipynb failed after 1 attempt\\(s\\): RuntimeError before running any "
                                        "cell: Kernel died before replying to kernel_info"):
        p.jobs.run(source, kernel="broken")
    (run,) = p.jobs.history(source)
    with tracking.session(p.settings) as client:
        assert (run.status, client.get_run(run.mlflow_run_id).info.status) == ("failed", "FAILED")


def test_a_notebook_whose_kernelspec_is_named_python_runs_on_python3(p, tmp_path):
    source = notebook(tmp_path / "plain.ipynb", "print(x + 1)")
    nb = nbformat.read(source, as_version=4)
    nb.metadata["kernelspec"] = {"name": "python", "display_name": "Python", "language": "python"}
    nbformat.write(nb, source)
    run = p.jobs.run(source, parameters={"x": 1})
    assert (run.status, run.kernel, outputs(run.output)) == ("succeeded", "python3", ["2\n"])
    p.jobs.schedule(source, "0 * * * *")
    assert [s.kernel for s in p.jobs.schedules()] == ["python3"]


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

    from mlplat.jobs.scheduler import Scheduler

    source = notebook(tmp_path / "tick.ipynb", "print(x)")
    schedule_id = p.jobs.schedule(source, "0 * * * *", parameters={"x": 3})
    (listed,) = p.jobs.schedules()
    now = datetime.now(UTC)
    assert (listed.id, listed.cron, listed.parameters, listed.enabled) == (schedule_id, "0 * * * *", {"x": 3}, True)
    assert (listed.created_by, listed.team) == ("ana", "pricing")
    assert listed.next_run == (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    p.jobs.pause(schedule_id)
    assert p.jobs.schedules()[0].next_run is None
    assert Scheduler(p.jobs).tick(now + timedelta(hours=3)) == []  # paused: nothing runs
    p.jobs.resume(schedule_id)
    assert Scheduler(p.jobs).due(listed.next_run - timedelta(seconds=1)) == []  # the slots missed while paused are skipped
    assert len(Scheduler(p.jobs).due(listed.next_run + timedelta(minutes=1))) == 1
    with pytest.raises(JobError, match="No schedule 99"):
        p.jobs.pause(99)


def in_an_hour(p):
    """A time by which each schedule made so far (all hourly, or less often) has one slot due."""
    return max(s.next_run for s in p.jobs.schedules()) + timedelta(minutes=1)


def test_a_dying_job_fails_its_slot_alone_and_runs_as_its_schedules_owner(p, tmp_path, redis_url):
    from mlplat.jobs.scheduler import Scheduler
    from mlplat.jobs.schedules import slots_of

    dies = p.jobs.schedule(notebook(tmp_path / "dies.ipynb", "import os\nos._exit(1)"), "0 * * * *")
    source = notebook(tmp_path / "fine.ipynb", "print(x)")
    fine = p.jobs.schedule(source, "0 * * * *", parameters={"x": 5})
    # the scheduler service runs as its own user, for everyone
    service = mlplat.connect(home=str(p.settings.home), online_store=redis_url, online_prefix="jobs", user="svc",
                             team="ops")
    ran = Scheduler(service.jobs).tick(in_an_hour(p))
    service.close()
    (died,), (done,) = slots_of(p.engine, dies), slots_of(p.engine, fine)
    assert (died["status"], done["status"]) == ("failed", "succeeded") and len(ran) == 2
    assert "failed after 1 attempt(s): the kernel died while running cell 2" in died["error"]
    (run,) = p.jobs.history(source)
    assert (run.id, run.status, run.owner, run.team, outputs(run.output)) == (done["job_id"], "succeeded", "ana",
                                                                               "pricing", ["5\n"])
    with tracking.session(p.settings) as client:
        tags = client.get_run(run.mlflow_run_id).data.tags
    assert (tags["mlplat.owner"], tags["mlplat.team"]) == ("ana", "pricing")
    assert [e.who for e in p.audit.entries(kind="job", obj="fine.ipynb")] == ["ana"]


def test_a_schedule_broken_later_is_listed_skipped_and_can_be_fixed_or_unscheduled(p, tmp_path, monkeypatch):
    import sqlalchemy as sa
    from click.testing import CliRunner

    from mlplat.cli import main
    from mlplat.errors import ScheduleNotFound
    from mlplat.jobs.scheduler import Scheduler
    from mlplat.jobs.schedules import schedules_table, slots_of

    good = p.jobs.schedule(notebook(tmp_path / "good.ipynb", "print(x)"), "0 * * * *")
    february = p.jobs.schedule(notebook(tmp_path / "feb.ipynb", "print(x)"), "0 * * * *")
    gone = p.jobs.schedule(notebook(tmp_path / "gone.ipynb", "print(x)"), "0 * * * *")
    due = in_an_hour(p)
    with p.engine.begin() as conn:  # a write past every check
        conn.execute(sa.update(schedules_table).where(schedules_table.c.id == february).values(cron="0 0 30 2 *"))
    (tmp_path / "gone.ipynb").unlink()

    listed = {s.id: s for s in p.jobs.schedules()}
    assert "'0 0 30 2 *' never fires" in listed[february].broken and listed[february].next_run is None
    assert listed[good].broken is None and listed[gone].broken is None  # not known until it runs
    p.jobs.pause(february)
    with pytest.raises(JobError, match="Schedule 2 cannot run: '0 0 30 2 \\*' never fires"):
        p.jobs.resume(february)
    with pytest.raises(JobError, match="Schedule 2 cannot run: '0 0 30 2 \\*' never fires"):
        p.jobs.cronjob(february)  # nor as a Kubernetes CronJob

    Scheduler(p.jobs).tick(due)  # the good one runs; the others fail alone
    assert [s["status"] for s in slots_of(p.engine, good)] == ["succeeded"] and slots_of(p.engine, february) == []
    (lost,) = slots_of(p.engine, gone)
    assert lost["status"] == "failed" and "No notebook at" in lost["error"]
    listed = {s.id: s for s in p.jobs.schedules()}
    assert "No notebook at" in listed[gone].broken and listed[gone].last_error == lost["error"]
    assert [e.action for e in p.audit.entries(kind="schedule", obj="gone.ipynb")] == ["created", "broken"]
    monkeypatch.setenv("MLPLAT_HOME", str(p.settings.home))
    monkeypatch.setenv("MLPLAT_ONLINE_STORE", p.settings.online_store)
    shown = CliRunner().invoke(main, ["jobs", "schedules"]).output
    assert "      broken: '0 0 30 2 *' never fires" in shown and "      broken: No notebook at" in shown
    assert len(Scheduler(p.jobs).tick(due + timedelta(hours=1))) == 1  # broken ones stay skipped

    notebook(tmp_path / "gone.ipynb", "print(x)")  # fixed: resuming checks it again and runs it from then on
    p.jobs.resume(gone)
    assert {s.id: s.broken for s in p.jobs.schedules()}[gone] is None
    p.jobs.unschedule(february)  # or given up
    assert [s.id for s in p.jobs.schedules()] == [good, gone]
    assert [e.action for e in p.audit.entries(kind="schedule", obj="feb.ipynb")] == ["created", "paused", "deleted"]
    with pytest.raises(ScheduleNotFound, match="No schedule 2"):
        p.jobs.unschedule(february)


def test_a_slot_whose_scheduler_died_too_often_fails_saying_so(p, tmp_path):
    from datetime import UTC, datetime

    from mlplat.jobs.scheduler import Scheduler
    from mlplat.jobs.schedules import slots_of, slots_table

    schedule_id = p.jobs.schedule(notebook(tmp_path / "tick.ipynb", "print(x)"), "0 * * * *")
    now = datetime.now(UTC)
    with p.engine.begin() as conn:  # what a third scheduler killed while running the slot leaves behind
        conn.execute(slots_table.insert().values(schedule_id=schedule_id, slot=now.replace(minute=0, second=0),
                                                 status="running", claimed_at=now - timedelta(seconds=5),
                                                 lease_until=now - timedelta(seconds=1), claims=3))
    assert Scheduler(p.jobs, reclaims=2).tick(now) == []
    (slot,) = slots_of(p.engine, schedule_id)
    assert (slot["status"], slot["error"]) == ("failed", "the scheduler running it died 3 times")


def wait_for(condition, what, seconds=90.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def start_scheduler(log):
    return subprocess.Popen([sys.executable, "-m", "mlplat.cli", "scheduler", "--interval", "0.3", "--lease", "2"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_job_whose_scheduler_is_killed_is_run_again_by_the_next_scheduler(kernel_platform, tmp_path):
    import sqlalchemy as sa

    from mlplat.jobs.schedules import schedules_table, slots_of

    p, kernels = kernel_platform, tmp_path / "kernels.txt"
    source = notebook(tmp_path / "slow.ipynb", "import os, time\nfirst = not os.path.exists(KERNELS)\n"
                      "with open(KERNELS, 'a') as f:\n    print(os.getpid(), file=f)\n"
                      "if first:\n    time.sleep(300)  # its scheduler is killed meanwhile", "print('done')",
                      parameters=f"KERNELS = {str(kernels)!r}")
    schedule_id = p.jobs.schedule(source, "0 0 1 1 *")  # yearly
    never = p.jobs.schedule(notebook(tmp_path / "feb.ipynb", "print(x)"), "0 0 1 1 *")
    with p.engine.begin() as conn:  # made a year ago: this year's slot is due; and one broken by a raw write
        conn.execute(sa.update(schedules_table).values(created_at=datetime.now(UTC) - timedelta(days=365)))
        conn.execute(sa.update(schedules_table).where(schedules_table.c.id == never).values(cron="0 0 30 2 *"))

    def slot():
        return slots_of(p.engine, schedule_id)[0]

    with open(tmp_path / "scheduler.log", "ab") as log:
        first = start_scheduler(log)
        try:
            wait_for(lambda: kernels.exists(), "the first scheduler's job to start")
            assert (slot()["status"], slot()["claims"]) == ("running", 1)
            first.kill()  # SIGKILL, mid-job
            first.wait()
            second = start_scheduler(log)
            try:
                wait_for(lambda: slot()["status"] != "running", "the second scheduler to run the slot again")
                assert second.poll() is None  # still serving
            finally:
                second.terminate()
                second.wait(30)
            orphan = int(kernels.read_text().split()[0])  # the killed scheduler's kernel: it exits by itself
            wait_for(lambda: not os.path.exists(f"/proc/{orphan}"), "the killed scheduler's kernel to exit", 30)
        finally:
            first.kill()
            for pid in map(int, kernels.read_text().split()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert (slot()["status"], slot()["claims"], slot()["error"]) == ("succeeded", 2, None)
    (run,) = p.jobs.history(source)  # the killed attempt left no run; the second one ran to the end
    assert (run.id, run.status, outputs(run.output)[-1]) == (slot()["job_id"], "succeeded", "done\n")
    assert len(set(kernels.read_text().split())) == 2
    assert "never fires" in {s.id: s.broken for s in p.jobs.schedules()}[never] and slots_of(p.engine, never) == []


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
    return manifest(cronjob(cluster_settings, schedule_of(p.engine, schedule_id), project))


def test_a_parameter_line_papermill_cannot_read_is_named(p, tmp_path):
    source = notebook(tmp_path / "gate.ipynb", "print(gate)", parameters="gate = None  # None = no gate")
    with pytest.raises(JobError, match="papermill cannot read the line assigning 'gate'.*write it as `gate = value"):
        p.jobs.run(source, parameters={"gate": 0.7})
