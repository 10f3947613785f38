"""A shared install's scheduled jobs run as their owners: a real ``mlplat server``, a real scheduler tick, real
kernels. alice schedules a notebook through the server; the scheduler (set with ``job_server_url``) runs it in
a kernel whose only way in is a job token naming alice, so it may do what alice may and nothing more."""

from __future__ import annotations

from datetime import timedelta

import pytest
from servers import running_server
from test_jobs import notebook, outputs

import mlplat
from mlplat.identity import Identity
from mlplat.job_tokens import JobTokens
from mlplat.jobs.scheduler import Scheduler
from mlplat.jobs.schedules import slots_of
from mlplat.remote.platform import ServerModePlatform
from mlplat.server.authentication import JobTokenAuthenticator, LocalAuthenticator

PEOPLE = {"alice-token": Identity("alice", {"a": "editor"}), "bob-token": Identity("bob", {"b": "editor"})}
YEARLY = "0 0 1 1 *"  # never due in these tests' hour

JOB = """import os, mlplat
p = mlplat.connect()
print(p.settings.user, p.settings.team, sorted(k for k in os.environ if k.startswith(("MLPLAT_", "JUPYTERHUB_"))))
print(len(p.jobs.schedules()))"""


@pytest.fixture
def install(tmp_path, redis_url, monkeypatch):
    """``(server's platform, its URL, the scheduler's platform)`` of one install, on one ``MLPLAT_HOME``."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # what a job's kernel keeps of the scheduler's environment
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"):  # server-mode connects point MLflow there
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    stores = {"home": str(tmp_path / "h"), "online_store": redis_url, "online_prefix": "owners"}
    backend = mlplat.connect(**stores, online_reader=redis_url, server_url="")
    auth = JobTokenAuthenticator(LocalAuthenticator(PEOPLE), JobTokens(backend.settings.run_dir))
    with running_server(backend, auth) as url:
        scheduler = mlplat.connect(**stores, user="svc", team="ops", job_server_url=url)
        yield backend, url, scheduler
        scheduler.close()
    backend.close()


def test_alices_scheduled_notebook_runs_as_alice_and_cannot_change_bobs_team(install, tmp_path):
    backend, url, scheduler = install
    alice, bob = (ServerModePlatform.open(token=f"{who}-token", server_url=url, home=str(tmp_path / who))
                  for who in ("alice", "bob"))
    bobs = bob.jobs.schedule(notebook(tmp_path / "bobs.ipynb", "print(x)"), YEARLY)
    mine = alice.jobs.schedule(notebook(tmp_path / "later.ipynb", "print(x)"), YEARLY)
    source = notebook(tmp_path / "job.ipynb", JOB, "p.jobs.pause(mine)", "p.jobs.pause(bobs)",
                      parameters="mine = 0\nbobs = 0")
    job = alice.jobs.schedule(source, "0 * * * *", parameters={"mine": mine, "bobs": bobs})
    due = next(s.next_run for s in backend.jobs.schedules() if s.id == job) + timedelta(minutes=1)

    (ran,) = Scheduler(scheduler.jobs).tick(due)

    (slot,) = slots_of(backend.engine, job)
    assert slot["status"] == "failed" and slot["job_id"] == ran
    assert "PermissionDenied: alice may not pause schedule" in slot["error"] and "'b'" in slot["error"]
    (run,) = backend.jobs.history(source)
    assert (run.status, run.owner, run.team) == ("failed", "alice", "a")
    # alice's identity, her reads, and nothing of the scheduler's environment: no MLPLAT_HOME, no hub token
    assert outputs(run.output)[0] == "alice a ['MLPLAT_SERVER_TOKEN', 'MLPLAT_SERVER_URL']\n3\n"
    enabled = {s.id: s.enabled for s in backend.jobs.schedules()}
    assert (enabled[mine], enabled[bobs]) == (False, True)  # her own change went through, bob's team's did not
    assert [(e.who, e.object) for e in backend.audit.entries(kind="schedule", action="paused")] == [("alice", "later.ipynb")]
    for p in (alice, bob):
        p.close()


def test_a_job_whose_owner_has_no_os_account_fails_saying_so(install, tmp_path):
    backend, url, _ = install
    alice = ServerModePlatform.open(token="alice-token", server_url=url, home=str(tmp_path / "alice"))
    source = notebook(tmp_path / "job.ipynb", "print(x)")
    job = alice.jobs.schedule(source, "0 * * * *")
    scheduler = mlplat.connect(home=str(backend.settings.home), online_store=backend.settings.online_store,
                               online_prefix="owners", job_server_url=url, job_account="mlplat-nobody-{username}")
    Scheduler(scheduler.jobs).tick(next(s.next_run for s in backend.jobs.schedules()) + timedelta(minutes=1))
    (slot,) = slots_of(backend.engine, job)
    assert slot["status"] == "failed" and "alice has no OS account 'mlplat-nobody-alice'" in slot["error"]
    (run,) = backend.jobs.history(source)
    assert (run.status, run.owner) == ("failed", "alice")
    for p in (alice, scheduler):
        p.close()
