"""``p.jobs``: run a notebook as a parameterised, tracked, reproducible job (papermill).

Each run keeps a copy of the notebook it ran and the executed output under
``$MLPLAT_HOME/jobs/<run id>/``, records its parameters, input hash, kernel,
code version, status and duration in the metadata database and in MLflow (the
output notebook as an artifact), and retries failed attempts with backoff.
Everything that can be checked (the notebook, its declared parameters, the
kernel) is checked before anything runs; whatever fails once it runs (a cell, a
kernel that dies or does not start) ends as a failed run, recorded, with the
partial output notebook.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mlplat.audit import Audit
from mlplat.config import Settings
from mlplat.cron import check_cron
from mlplat.db import metadata
from mlplat.errors import InvalidArgument, JobError, JobFailed
from mlplat.files import private_umask
from mlplat.jobs import schedules as schedule_store
from mlplat.jobs import templates
from mlplat.jobs.notebooks import check_notebook
from mlplat.registry import tracking
from mlplat.times import as_utc
from mlplat.training.fingerprint import environment

job_runs = sa.Table(
    "job_runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("notebook", sa.Text, nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("kernel", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("seconds", sa.Float),
    sa.Column("input_sha256", sa.String(64), nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("mlflow_run_id", sa.String(64)),
    sa.Column("error", sa.Text),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("team", sa.String(200)),
    sa.Column("rerun_of", sa.String(32)),
    sa.Column("host", sa.String(200)),  # "local", or the Dask worker that ran it
)


@dataclass(frozen=True)
class JobRun:
    """One execution of a notebook."""

    id: str
    notebook: str
    parameters: dict[str, Any]
    kernel: str
    status: str  # "succeeded" or "failed"
    attempts: int
    seconds: float
    output: str  # the executed notebook
    error: str | None
    mlflow_run_id: str | None
    host: str  # "local", or the address of the Dask worker that ran it
    started_at: datetime
    owner: str  # who ran it
    team: str

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.status == "succeeded" else "#cf222e"
        return (f"<div><b>{escape(Path(self.notebook).name)}</b> run {self.id[:8]}: "
                f"<b style='color:{colour}'>{self.status}</b> in {self.seconds:.1f} s ({self.attempts} attempt(s)) on {escape(self.host)}"
                f"<br>parameters: {escape(json.dumps(self.parameters))}<br>output: {escape(self.output)}"
                + (f"<pre>{escape(self.error)}</pre>" if self.error else "") + "</div>")


class Jobs:
    """Run notebooks as jobs, see their history, rerun them, schedule them.

    Runs and schedules are recorded in the metadata database behind ``engine`` and in the ``audit``
    trail; ``settings`` give the tracking store, where runs keep their files, and the cell timeout.
    """

    def __init__(self, settings: Settings, engine: sa.Engine, audit: Audit):
        self.settings = settings
        self.engine = engine
        self.audit = audit
        self.root = settings.home / "jobs"

    def run(self, notebook: str | Path, parameters: dict[str, Any] | None = None, kernel: str | None = None,
            retries: int = 0, backoff: float = 1.0, client: Any = None, *, timeout: float | None = None,
            owner: tuple[str, str] | None = None) -> JobRun:
        """Execute ``notebook`` with ``parameters``; raise JobFailed (saying where it failed) if every attempt fails.

        A cell that runs longer than ``timeout`` seconds (default: the ``job_timeout`` setting, 6 h) is
        stopped and fails its attempt, so a hung notebook cannot hold a scheduler's slot for ever.

        With a Dask ``client`` (``p.compute().client``) the notebook executes on a worker, which must see
        the notebook's folder and this platform's services (true on a LocalCluster; on Kubernetes mount a
        shared volume and use server URLs). Without one it executes here. ``owner`` is the (user, team)
        the run is recorded for (the scheduler runs a schedule for whoever made it); by default, this
        platform's user and team.
        """
        source = Path(notebook).resolve()
        parameters = dict(parameters or {})
        kernel = check_notebook(source, parameters, kernel)
        attempts = Attempts(retries, backoff, self._timeout(timeout))
        run_id = uuid.uuid4().hex
        folder = self.root / run_id
        with private_umask():  # the run's folder, notebooks and artifacts: 0700/0600 whatever the original's mode
            folder.mkdir(parents=True)
            shutil.copyfile(source, folder / "input.ipynb")  # what ran, for reruns, whatever happens to the original
            return self._execute(run_id, source, folder, parameters, kernel, attempts, None, client, owner)

    def rerun(self, run_id: str, client: Any = None) -> JobRun:
        """Execute the very notebook and parameters of an earlier run again (on a Dask worker with ``client``)."""
        earlier = self._row(run_id)
        new_id = uuid.uuid4().hex
        folder = self.root / new_id
        with private_umask():
            folder.mkdir(parents=True)
            shutil.copyfile(self.root / run_id / "input.ipynb", folder / "input.ipynb")
            return self._execute(new_id, Path(earlier["notebook"]), folder, json.loads(earlier["parameters"]),
                                 earlier["kernel"], Attempts(timeout=self._timeout(None)), run_id, client, None)

    def schedule(self, notebook: str | Path, cron: str, parameters: dict[str, Any] | None = None,
                 kernel: str | None = None) -> int:
        """Run ``notebook`` on a cron schedule (``mlplat scheduler``, started by ``mlplat up``, runs it)."""
        return schedule_store.schedule(self.engine, self.audit, notebook, cron, parameters, kernel)

    def schedule_template(self, template: str, cron: str, parameters: dict[str, Any], *,
                          key: str | None = None) -> int:
        """Run the notebook template ``templates/<template>`` with ``parameters`` on ``cron``; return the
        schedule's id (see :class:`mlplat.scheduling.TemplateScheduler`).

        With ``key`` (the name of one of ``parameters``) the template keeps one live schedule per value of
        that parameter: the enabled one with the same cron and parameters is returned; one with others is
        paused and a new one made.
        """
        if key is not None and key not in parameters:
            raise InvalidArgument(f"key={key!r} must name one of the parameters {sorted(parameters)}.")
        notebook = templates.template(template)
        check_cron(cron)  # before an old schedule is paused for it
        if key is not None:
            for existing in self.schedules():
                if existing.enabled and Path(existing.notebook) == notebook and \
                        existing.parameters.get(key) == parameters[key]:
                    if existing.cron == cron and existing.parameters == parameters:
                        return existing.id
                    self.pause(existing.id)
        return self.schedule(notebook, cron, parameters)

    def schedules(self) -> list[schedule_store.Schedule]:
        """Every schedule (:class:`mlplat.jobs.schedules.Schedule`) with its next run and last status."""
        return schedule_store.schedules(self.engine)

    def pause(self, schedule_id: int) -> None:
        """Stop a schedule from running until :meth:`resume`."""
        schedule_store.set_enabled(self.engine, self.audit, schedule_id, False)

    def resume(self, schedule_id: int) -> None:
        """Run a paused (or broken, once fixed: it is checked again) schedule again."""
        schedule_store.set_enabled(self.engine, self.audit, schedule_id, True)

    def unschedule(self, schedule_id: int) -> None:
        """Delete a schedule for good (its past runs stay in :meth:`history`)."""
        schedule_store.unschedule(self.engine, self.audit, schedule_id)

    def cronjob(self, schedule_id: int, project: str | Path = ".", retries: int = 0) -> dict[str, Any]:
        """The schedule as a Kubernetes CronJob manifest; ``project`` is the folder ``kubernetes.volume`` holds."""
        from mlplat.jobs.kubernetes import cronjob, manifest

        found = schedule_store.schedule_of(self.engine, schedule_id)
        if found.broken:
            raise JobError(f"Schedule {schedule_id} cannot run: {found.broken} Fix it and resume it first.")
        return manifest(cronjob(self.settings, found, project, retries))

    def history(self, notebook: str | Path | None = None, limit: int | None = None) -> list[JobRun]:
        """Runs, newest first (of one notebook, when given; the ``limit`` newest, when given)."""
        query = sa.select(job_runs).order_by(job_runs.c.started_at.desc()).limit(limit)
        if notebook is not None:
            query = query.where(job_runs.c.notebook == str(Path(notebook).resolve()))
        with self.engine.connect() as conn:
            return [_job(row._asdict()) for row in conn.execute(query)]

    # -- internals ---------------------------------------------------------------
    def _timeout(self, seconds: float | None) -> float | None:
        """``seconds`` checked, or the ``job_timeout`` setting; None for no limit."""
        if seconds is None:
            return self.settings.job_timeout.total_seconds() or None
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
            raise JobError(f"timeout={seconds!r}: give the seconds a cell may run, a positive number "
                           "(or leave it out for the job_timeout setting).")
        return float(seconds)

    def _execute(self, run_id: str, source: Path, folder: Path, parameters: dict[str, Any], kernel: str,
                 attempts: Attempts, rerun_of: str | None, client: Any, owner: tuple[str, str] | None) -> JobRun:
        settings = self.settings
        owner = owner or (self.audit.user, self.audit.team)
        # An explicit client, not MLflow's process-wide fluent state: the scheduler runs jobs in threads.
        tracker = tracking.client(settings)
        experiment = tracking.experiment_id(tracker, settings, f"jobs-{source.stem}")
        snapshot, output = folder / "input.ipynb", folder / source.name
        run = tracker.create_run(experiment, run_name=f"{source.stem}-{run_id[:8]}", tags={
            "mlplat.job_id": run_id, "mlplat.notebook": str(source), "mlplat.input_sha256": _sha256(snapshot),
            "mlplat.rerun_of": rerun_of or "", "mlplat.owner": owner[0], "mlplat.team": owner[1]})
        mlflow_run_id, outcome = run.info.run_id, "FAILED"  # unless all below completes
        try:
            for key, value in {**{f"param.{k}": v for k, v in parameters.items()}, "kernel": kernel}.items():
                tracker.log_param(mlflow_run_id, key, value)
            tracker.log_dict(mlflow_run_id, {"environment": environment()}, "mlplat/provenance.json")
            from jupyter_client.kernelspec import KernelSpecManager

            from mlplat.jobs.owners import papermill_options

            language = KernelSpecManager().get_kernel_spec(kernel).language
            execute = functools.partial(execute_notebook, input_path=str(snapshot), output_path=str(output),
                                        parameters=parameters, kernel_name=kernel, language=language,
                                        cwd=str(source.parent), progress_bar=False,
                                        execution_timeout=attempts.timeout,
                                        **papermill_options(settings, owner[0], snapshot, attempts.timeout))
            started_at, started = datetime.now(UTC), time.perf_counter()
            tried, error, host = attempts.run(execute, client, output)
            if output.exists():  # also a failed attempt's: the cells that ran, and what they printed
                tracker.log_artifact(mlflow_run_id, str(output), "notebook")
            tracker.set_tag(mlflow_run_id, "mlplat.host", host)
            tracker.set_tag(mlflow_run_id, "mlplat.status", "failed" if error else "succeeded")
            outcome = "FAILED" if error else "FINISHED"
        finally:
            tracker.set_terminated(mlflow_run_id, outcome)
        job = JobRun(run_id, str(source), parameters, kernel, "failed" if error else "succeeded", tried,
                     time.perf_counter() - started, str(output), error, mlflow_run_id, host, started_at, *owner)
        self._record(job, _sha256(snapshot), rerun_of)
        if error:
            raise JobFailed(f"{source.name} failed after {tried} attempt(s): {error}. The executed notebook, "
                            f"with what ran before the failure, is {output} (job {run_id}).", job_id=run_id)
        return job

    def _record(self, job: JobRun, sha: str, rerun_of: str | None) -> None:
        from mlplat.audit import Audit

        audit = self.audit if (job.owner, job.team) == (self.audit.user, self.audit.team) else \
            Audit(self.engine, job.owner, job.team)  # a scheduled run is its schedule owner's action
        with self.engine.begin() as conn:
            conn.execute(job_runs.insert().values(
                id=job.id, notebook=job.notebook, parameters=json.dumps(job.parameters, default=str),
                kernel=job.kernel, status=job.status, attempts=job.attempts, started_at=job.started_at,
                seconds=job.seconds, input_sha256=sha, output=job.output, mlflow_run_id=job.mlflow_run_id,
                error=job.error, who=job.owner, team=job.team, rerun_of=rerun_of, host=job.host))
            audit.write(conn, "job", Path(job.notebook).name, "reran" if rerun_of else "ran", run_id=job.id,
                        status=job.status, rerun_of=rerun_of, notebook=job.notebook, parameters=job.parameters)

    def _row(self, run_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(job_runs).where(job_runs.c.id == run_id)).first()
        if row is None:
            raise JobError(f"No job run {run_id!r}; see p.jobs.history() for run ids.")
        return row._asdict()


def _job(row: dict[str, Any]) -> JobRun:
    return JobRun(row["id"], row["notebook"], json.loads(row["parameters"]), row["kernel"], row["status"],
                  row["attempts"], row["seconds"], row["output"], row["error"], row["mlflow_run_id"],
                  row["host"] or "local", as_utc(row["started_at"]), row["who"], row["team"] or "")


@dataclass(frozen=True)
class Attempts:
    """How a job's attempts run: ``retries`` more after a failure, ``backoff`` seconds (doubled each time)
    between them, and ``timeout`` seconds a cell may run (None: no limit)."""

    retries: int = 0
    backoff: float = 1.0
    timeout: float | None = None

    def run(self, execute: Callable[[], str], client: Any, output: Path) -> tuple[int, str | None, str]:
        """Run ``execute`` (on a Dask worker with ``client``) until it succeeds or every attempt failed; return
        (attempts, last error or None, host)."""
        attempts, host = 0, "local"
        while True:
            attempts += 1
            try:
                host = execute() if client is None else client.submit(execute, pure=False).result()
                return attempts, None, host
            except Exception as exc:  # whatever ends an attempt (a cell, a dead kernel, a lost worker) fails it
                error = self.failure(exc, output)
            if attempts > self.retries:
                return attempts, error, host
            time.sleep(self.backoff * 2 ** (attempts - 1))

    def failure(self, exc: Exception, output: Path) -> str:
        """Why an attempt failed, in words, naming the cell where known: ``the kernel died while running cell 4``."""
        from nbclient.exceptions import CellTimeoutError, DeadKernelError
        from papermill.exceptions import PapermillExecutionError

        if isinstance(exc, PapermillExecutionError):
            return f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"
        cell = _last_started_cell(output)
        during = f" while running cell {cell}" if cell else " before running any cell"
        if isinstance(exc, CellTimeoutError):
            return (f"cell {cell} ran longer than the {self.timeout:g} s a cell may run and was stopped (pass "
                    "timeout= or raise the job_timeout setting if it needs longer)")
        if isinstance(exc, DeadKernelError):
            return f"the kernel died{during}"
        return f"{type(exc).__name__}{during}: {exc}"


def _last_started_cell(output: Path) -> int | None:
    """The number (as execution counts go) of the last cell that started, from the notebook papermill saves
    as it goes; None when none did."""
    import nbformat

    try:
        cells = nbformat.read(output, as_version=4).cells
    except (OSError, ValueError):  # not written, or cut short
        return None
    # A dying kernel may not have sent the cell's execution count; papermill stamps every cell it starts.
    # Blank cells are not sent to the kernel, so they take no number.
    started = [c for c in cells if c.cell_type == "code" and c.source.strip()
               and c.metadata.get("papermill", {}).get("start_time")]
    return len(started) or None


def execute_notebook(**papermill_options: Any) -> str:
    """``papermill.execute_notebook``; return where it ran: "local", or the Dask worker's address."""
    import papermill

    papermill.execute_notebook(**papermill_options)
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # not on a worker
        return "local"



def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
