"""The ``mlplat`` command: services and the feature registry from a shell.

Other packages add commands through the ``mlplat.commands`` entry-point group (the hub package
adds ``mlplat hub``); each is imported only when it is run or help lists it, so the library
never imports them.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from mlplat.errors import MlplatError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

COMMANDS = "mlplat.commands"  # entry-point group: name = "package.module:click_command"


class _Group(click.Group):
    """Show MlplatError as one line with its fix, not a traceback; add the commands installed under the
    ``mlplat.commands`` entry-point group, each imported when it is asked for."""

    def _plugins(self) -> dict[str, EntryPoint]:
        from importlib.metadata import entry_points  # 20 ms: only when a command is not the library's own

        return {point.name: point for point in entry_points(group=COMMANDS) if point.name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self._plugins()])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)  # the library's own first: they need no look-up
        if command is None and name in (plugins := self._plugins()):
            command = plugins[name].load()
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlplatError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.version_option(package_name="mlplat")
def main() -> None:
    """mlplat: a notebook-centric ML platform."""


def _settings():
    from mlplat.config import load_settings

    return load_settings()


def _platform():
    import mlplat

    return mlplat.connect()


@main.command()
def up() -> None:
    """Start the embedded services, reuse the running ones, restart the unhealthy ones; exit 1 if one fails."""
    from mlplat import services

    failed = False
    for name, outcome in services.up_each(_settings()):
        if isinstance(outcome, Exception):
            failed = True
            click.echo(f"{name:8} FAILED   {outcome}", err=True)
        else:
            click.echo(f"{name:8} running  pid {outcome.pid}  {outcome.where}")
    if failed:
        sys.exit(1)


@main.command()
def down() -> None:
    """Stop the embedded services."""
    from mlplat import services

    stopped = services.down(_settings())
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@main.command()
def status() -> None:
    """Show each embedded service, where it listens and whether it is healthy; exit 1 if one is down or unhealthy."""
    from mlplat import services

    settings = _settings()
    click.echo(f"home     {settings.home}")
    found = services.health(settings)
    for health in found:
        where = f"  pid {health.state.pid}  {health.state.where}" if health.state else ""
        click.echo(f"{health.name:8} {health.summary}{where}")
    if settings.online_store != "embedded":
        from mlplat.features.redis_users import without_password

        click.echo(f"online   external  {without_password(settings.online_store)}")
    if settings.triton_url != "embedded":
        from mlplat.status import external_triton

        click.echo(f"triton   external  {external_triton(settings)}")
    sys.exit(0 if all(h.healthy for h in found) else 1)


@main.command("online-url")
@click.argument("role", default="producer")
def online_url(role: str) -> None:
    """Print the embedded Redis's URL as ROLE's user (admin, reader, producer, consumer, monitor), with its
    password: give ``producer`` to what sends events."""
    from mlplat.errors import ConfigError
    from mlplat.features.redis_service import online_store_url

    settings = _settings()
    if settings.online_store != "embedded":
        raise ConfigError("online-url is for the embedded Redis; an external one's users are its operators' to give.")
    click.echo(online_store_url(settings, role))


@main.command()
@click.option("--host", help="Address to listen on (default: the hub's service URL, else 127.0.0.1).")
@click.option("--port", type=int, help="Port (default: the hub's service URL, else 8585).")
@click.option("--hub-api-url", envvar="JUPYTERHUB_API_URL", help="The hub's API that checks callers' tokens.")
@click.option("--tokens", type=click.Path(dir_okay=False, exists=True),
              help="A YAML file of fixed tokens {token: {name, roles, admin}} for a server without a hub.")
def server(host: str | None, port: int | None, hub_api_url: str | None, tokens: str | None) -> None:
    """Serve the platform to workspaces: the one holder of write credentials and judge of permissions."""
    from mlplat.server.run import address, authenticator, serve

    host, port = address(host, port)
    serve(host, port, authenticator(hub_api_url, tokens))


@main.group("db")
def db_group() -> None:
    """The metadata database: its schema revision, and upgrades after installing a newer mlplat."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Bring the metadata database to this mlplat's schema, keeping its rows (back it up first)."""
    from mlplat import db

    before = db.upgrade(db.create_engine(_settings().registry))
    click.echo(f"at {db.HEAD} already" if before == db.HEAD else f"upgraded from {before or 'before migrations'} "
               f"to {db.HEAD}")


@db_group.command("current")
def db_current() -> None:
    """Show the metadata database's schema revision and whether it is current; exit 1 if it must change."""
    from mlplat import db

    found = db.state(db.create_engine(_settings().registry))
    click.echo(str(found))
    sys.exit(0 if found.status in ("current", "empty") else 1)


@main.group()
def features() -> None:
    """Feature definitions, the registry and materialisation."""


def _store():
    return _platform().features


@features.command("apply")
@click.argument("path", type=click.Path(dir_okay=False))
def features_apply(path: str) -> None:
    """Register the Entity and FeatureView objects defined in PATH (a .py file)."""
    from mlplat.features.definitions import definitions_from_file

    for result in _store().apply(definitions_from_file(path)):
        click.echo(str(result))


@features.command("list")
@click.argument("pattern", required=False)
def features_list(pattern: str | None) -> None:
    """List feature views (latest versions), optionally those whose name contains PATTERN."""
    for view in _store().list_views(pattern):
        if view.kind == "broken":  # listed so it can be fixed: its definition cannot be read
            click.echo(f"{view.name:24} v{view.version:<3} {view.description}")
            continue
        ttl = view.ttl or "none"
        click.echo(f"{view.name:24} v{view.version:<3} {len(view.schema):3} features  ttl {ttl}  owner {view.owner or '-'}")


@features.command("show")
@click.argument("view")
@click.option("--version", type=int, help="A past version (default: latest).")
def features_show(view: str, version: int | None) -> None:
    """Show a feature view's definition as JSON."""
    click.echo(json.dumps(_store().get_view(view, version).to_dict(), indent=2))


@features.command("diff")
@click.argument("view")
@click.argument("old", type=int)
@click.argument("new", type=int, required=False)
def features_diff(view: str, old: int, new: int | None) -> None:
    """Changes of VIEW from version OLD to version NEW (default: latest)."""
    from mlplat.features.registry import describe_change

    store = _store()
    changes = store.diff(view, old) if new is None else store.diff(store.get_view(view, old), store.get_view(view, new))
    for change in changes or [{"change": "no changes", "incompatible": False}]:
        click.echo(describe_change(change))


@features.command("history")
@click.argument("name", required=False)
def features_history(name: str | None) -> None:
    """Who changed what and when (for one entity or view, or all)."""
    for e in _store().registry.history(name):
        version = f" v{e.version}" if e.version else ""
        click.echo(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.who:12} {e.action:12} {e.kind} {e.object}{version}")


@features.command("materialize")
@click.option("--view", "views", multiple=True, help="Only this view (repeatable).")
def features_materialize(views: tuple[str, ...]) -> None:
    """Write the latest feature values online (incrementally)."""
    for result in _store().materialize(views=list(views) or None):
        click.echo(f"{result.view} v{result.version}: read {result.rows_read} rows, {result.entities} entities, wrote {result.written}")


@main.group()
def models() -> None:
    """Registered models: versions, promotion, rollback, audit."""


@models.command("list")
def models_list() -> None:
    """Every registered model with its latest version and aliases."""
    for model in _platform().models.list():
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(model["aliases"].items())) or "-"
        click.echo(f"{model['name']:24} latest v{model['latest']}  {aliases}")


@models.command("versions")
@click.argument("name")
def models_versions(name: str) -> None:
    """Versions of NAME, newest first, with aliases and test metrics."""
    for v in _platform().models.versions(name):
        metrics = "  ".join(f"{k}={val:.4f}" for k, val in sorted(v.metrics.items()))
        flags = ",".join(v.aliases) + (" archived" if v.archived else "")
        click.echo(f"v{v.version:<4} {flags or '-':22} {v.created:%Y-%m-%d %H:%M}  {metrics}")


@models.command("promote")
@click.argument("name")
@click.argument("version", required=False)
@click.option("--margin", type=float, help="How much better than the champion it must be.")
@click.option("--force", is_flag=True, help="Skip the comparison (needs --reason).")
@click.option("--reason", default="", help="Why; recorded in the audit log.")
def models_promote(name: str, version: str | None, margin: float | None, force: bool, reason: str) -> None:
    """Make VERSION (default: the challenger) the champion if it beats the current one."""
    done = _platform().models.promote(name, version, margin=margin, force=force, reason=reason)
    compared = (f" ({done.metric} {done.challenger_score:.4f} vs {done.champion_score:.4f})"
                if done.champion_score is not None else "")
    click.echo(f"{name} v{done.version} is the champion{compared}; previous: {done.previous or 'none'}")


@models.command("rollback")
@click.argument("name")
@click.option("--reason", default="")
def models_rollback(name: str, reason: str) -> None:
    """Give the champion alias back to the previous champion."""
    click.echo(f"{name}: champion is v{_platform().models.rollback(name, reason)} again")


@models.command("archive")
@click.argument("name")
@click.argument("version")
@click.option("--reason", default="")
def models_archive(name: str, version: str, reason: str) -> None:
    """Retire VERSION: it loses its aliases and cannot be promoted."""
    _platform().models.archive(name, version, reason)
    click.echo(f"{name} v{version} archived")


@models.command("history")
@click.argument("name", required=False)
def models_history(name: str | None) -> None:
    """The audit trail: who did what, when and why."""
    click.echo(str(_platform().models.history(name)))


@main.command()
@click.option("--kind", "kinds", multiple=True,
              help="feature_view, entity, model, deployment, job, schedule, experiment, ... (repeatable).")
@click.option("--object", "obj", help="An object's name: a view, a model (and its endpoint), a notebook.")
@click.option("--user", help="Who acted.")
@click.option("--action", "actions", multiple=True, help="e.g. promoted, deployed, ingested (repeatable).")
@click.option("--since", help="An ISO date or time (UTC), e.g. 2024-06-01.")
@click.option("--limit", type=int, default=50, show_default=True, help="The newest N entries; 0 for all.")
def audit(kinds: tuple[str, ...], obj: str | None, user: str | None, actions: tuple[str, ...], since: str | None,
          limit: int) -> None:
    """The audit trail: who did what to which object, when and why (oldest first)."""
    click.echo(str(_platform().audit.entries(kinds or None, obj, user, actions or None, since, limit or None)))


@main.command()
@click.option("--model", help="A registered model.")
@click.option("--version", help="Its version (default: the champion).")
@click.option("--endpoint", help="A deployed model: what Triton serves under this name, back to its sources.")
@click.option("--feature-view", help="Show the model versions that use this view instead.")
def lineage(model: str | None, version: str | None, endpoint: str | None, feature_view: str | None) -> None:
    """Where a model version or an endpoint came from, or which models use a feature view."""
    click.echo(str(_platform().lineage(model=model, version=version, feature_view=feature_view, endpoint=endpoint)))


@main.command()
@click.argument("name")
@click.option("--version", help="A registered version (default: the champion).")
@click.option("--missing", default="flag", show_default=True,
              help="Rows lacking features: flag them, error (refuse them) or impute the training medians.")
def deploy(name: str, version: str | None, missing: str) -> None:
    """Put NAME (the champion, or --version) live on Triton."""
    d = _platform().deploy(name, version, missing=missing)
    click.echo(f"{d.triton_model} v{d.version} {d.status} at {d.endpoint} (gRPC; entity ids: {d.triton_model}_by_id)")


@main.command()
def deployments() -> None:
    """What is live on Triton, at its gRPC and HTTP endpoints."""
    for d in _platform().deployments():
        click.echo(f"{d.triton_model:24} v{d.version:<4} {d.status:12} {d.endpoint}  http {d.http_endpoint}")


@main.command()
@click.argument("name")
def undeploy(name: str) -> None:
    """Take NAME off Triton."""
    _platform().undeploy(name)
    click.echo(f"{name} undeployed")


@main.command()
@click.option("--interval", type=float, default=30.0, help="Seconds between looks for due jobs.")
@click.option("--max-concurrent", type=int, default=2, help="Jobs running at once, at most.")
@click.option("--heartbeat", type=click.Path(dir_okay=False), help="A file touched on every look (health).")
@click.option("--lease", type=float, default=30.0, show_default=True,
              help="Seconds a claimed slot stays this scheduler's without renewal; then another takes it over.")
@click.option("--reclaims", type=int, default=2, show_default=True,
              help="Times a slot whose scheduler died is run again before it fails.")
def scheduler(interval: float, max_concurrent: int, heartbeat: str | None, lease: float, reclaims: int) -> None:
    """Run scheduled notebook jobs as their slots come due (`mlplat up` starts this)."""
    from pathlib import Path

    from mlplat.jobs.scheduler import Scheduler

    Scheduler(_platform().jobs, max_concurrent, lease, reclaims).serve(interval,
                                                                       heartbeat=Path(heartbeat) if heartbeat else None)


@main.group()
def jobs() -> None:
    """Notebook jobs: run, history, rerun, schedule, and CronJob manifests."""


_parameter = click.option("-p", "--parameter", "parameters", multiple=True, metavar="NAME=VALUE",
                          help="A notebook parameter (YAML value); repeatable.")


def _parameters(pairs: tuple[str, ...], as_json: str | None) -> dict[str, Any]:
    from mlplat.config import parse_assignments

    base = json.loads(as_json) if as_json else {}
    return {**base, **parse_assignments(pairs, "parameter")}


@jobs.command("run")
@click.argument("notebook", type=click.Path(dir_okay=False))
@_parameter
@click.option("--parameters", "as_json", help="All parameters as one JSON object (what CronJobs pass).")
@click.option("--kernel", help="A Jupyter kernel name (default: the notebook's).")
@click.option("--retries", type=int, default=0, help="Attempts after a failure, with backoff.")
def jobs_run(notebook: str, parameters: tuple[str, ...], as_json: str | None, kernel: str | None,
             retries: int) -> None:
    """Execute NOTEBOOK with papermill, tracked; exit 1 when it fails."""
    run = _platform().jobs.run(notebook, _parameters(parameters, as_json), kernel, retries=retries)
    click.echo(f"{run.status} in {run.seconds:.1f} s: {run.output} (job {run.id})")


@jobs.command("history")
@click.argument("notebook", required=False)
def jobs_history(notebook: str | None) -> None:
    """Recent runs, newest first."""
    for run in _platform().jobs.history(notebook):
        click.echo(f"{run.id}  {run.status:9}  {run.seconds:7.1f} s  {run.notebook}")


@jobs.command("rerun")
@click.argument("run_id")
def jobs_rerun(run_id: str) -> None:
    """Execute the notebook and parameters of RUN_ID again."""
    run = _platform().jobs.rerun(run_id)
    click.echo(f"{run.status} in {run.seconds:.1f} s: {run.output} (job {run.id})")


@jobs.command("schedule")
@click.argument("notebook", type=click.Path(dir_okay=False))
@click.option("--cron", required=True, help="Five cron fields, e.g. '0 * * * *' (hourly, UTC).")
@_parameter
@click.option("--kernel", help="A Jupyter kernel name (default: the notebook's).")
def jobs_schedule(notebook: str, cron: str, parameters: tuple[str, ...], kernel: str | None) -> None:
    """Run NOTEBOOK on a cron schedule (the scheduler started by `mlplat up` runs it)."""
    schedule_id = _platform().jobs.schedule(notebook, cron, _parameters(parameters, None), kernel)
    click.echo(f"schedule {schedule_id}: {notebook} at '{cron}'")


@jobs.command("schedules")
def jobs_schedules() -> None:
    """Every schedule, with its next run and last status."""
    for s in _platform().jobs.schedules():
        following = s.next_run.isoformat(timespec="minutes") if s.next_run else "broken" if s.broken else "paused"
        click.echo(f"{s.id:4}  {s.cron:15}  next {following:22}  last {s.last_status or '-':9}  {s.notebook}")
        if s.broken:
            click.echo(f"      broken: {s.broken}")


@jobs.command("pause")
@click.argument("schedule_id", type=int)
def jobs_pause(schedule_id: int) -> None:
    """Stop SCHEDULE_ID from running."""
    _platform().jobs.pause(schedule_id)
    click.echo(f"schedule {schedule_id} paused")


@jobs.command("resume")
@click.argument("schedule_id", type=int)
def jobs_resume(schedule_id: int) -> None:
    """Run SCHEDULE_ID again from its next slot."""
    _platform().jobs.resume(schedule_id)
    click.echo(f"schedule {schedule_id} resumed")


@jobs.command("unschedule")
@click.argument("schedule_id", type=int)
def jobs_unschedule(schedule_id: int) -> None:
    """Delete SCHEDULE_ID (its past runs stay in the history)."""
    _platform().jobs.unschedule(schedule_id)
    click.echo(f"schedule {schedule_id} deleted")


@jobs.command("cronjob")
@click.argument("schedule_id", type=int)
@click.option("--project", type=click.Path(file_okay=False), default=".", help="The folder the volume holds.")
@click.option("--retries", type=int, default=0, help="Attempts after a failure, inside one Job.")
def jobs_cronjob(schedule_id: int, project: str, retries: int) -> None:
    """Print SCHEDULE_ID as a Kubernetes CronJob manifest (YAML, for `kubectl apply -f -`)."""
    import yaml

    click.echo(yaml.safe_dump(_platform().jobs.cronjob(schedule_id, project, retries), sort_keys=False), nl=False)


@main.command("install-kernels")
@click.option("--prefix", help="Where to install (default: this Python environment).")
def install_kernels(prefix: str | None) -> None:
    """Install the "Python 3 (mlplat)" and "Python 3 (mlplat, GPU)" Jupyter kernels."""
    from mlplat.kernels import install_kernels as install

    for path in install(prefix):
        click.echo(f"installed {path}")


@main.group()
def monitor() -> None:
    """Prediction log, drift, thresholds, metrics and dashboards of deployed models."""


@monitor.command("serve")
@click.option("--port", type=int, default=9464, show_default=True, help="Port of the Prometheus /metrics endpoint.")
@click.option("--batch", type=int, default=5000, show_default=True, help="Logged requests per Parquet file, at most.")
@click.option("--heartbeat", type=click.Path(dir_okay=False), help="A file touched after each flush (health).")
def monitor_serve(port: int, batch: int, heartbeat: str | None) -> None:
    """Flush the prediction log to Parquet and serve Prometheus metrics (`mlplat up` starts this)."""
    import signal
    import threading
    from pathlib import Path

    from prometheus_client import start_http_server

    from mlplat.monitoring.metrics import registry

    p = _platform()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server, _ = start_http_server(port, "127.0.0.1", registry(p.online.client, p.settings.online_prefix))
    try:
        p.monitor.flusher(batch).serve(stop, Path(heartbeat) if heartbeat else None)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


@monitor.command("check")
@click.argument("model")
@click.option("--version", help="A deployed version (default: the one serving by default).")
def monitor_check(model: str, version: str | None) -> None:
    """Check MODEL's latest window: drift, p99 latency, error rate, stale features; raise alerts. Exit 1 on breach."""
    result = _platform().monitor.check(model, version)
    click.echo(str(result))
    sys.exit(1 if result.breached else 0)


@monitor.command("thresholds")
@click.argument("model")
@click.argument("assignments", nargs=-1)
def monitor_thresholds(model: str, assignments: tuple[str, ...]) -> None:
    """Show MODEL's thresholds, or change some: psi=0.25 p99_ms=20 error_rate=0.01 max_age=2h window=1h."""
    from mlplat.config import parse_assignments

    p = _platform()
    found = p.monitor.set_thresholds(model, **parse_assignments(assignments, "threshold")) if assignments \
        else p.monitor.thresholds(model)
    for name, value in vars(found).items():
        click.echo(f"{name:12} {'off' if value is None else value}")


@monitor.command("dashboard")
@click.argument("model")
def monitor_dashboard(model: str) -> None:
    """Print a Grafana dashboard (JSON) of MODEL: import it in Grafana."""
    click.echo(json.dumps(_platform().monitor.dashboard(model), indent=2))


@monitor.command("scrape-config")
def monitor_scrape_config() -> None:
    """Print a prometheus.yml scraping the platform's metrics and Triton's."""
    click.echo(_platform().monitor.scrape_config(), nl=False)


@main.command()
@click.option("--status", type=click.Choice(["firing", "resolved"]), help="Only these.")
@click.option("--model", help="Only this model's.")
def alerts(status: str | None, model: str | None) -> None:
    """Alerts raised by monitoring checks, newest first."""
    click.echo(str(_platform().alerts(status, model)))



@main.command()
@click.option("--view", "views", multiple=True, help="Only this stream view (repeatable; default: every one).")
@click.option("--batch", type=int, default=20_000, show_default=True, help="Entries read and applied at a time.")
@click.option("--consumer", "name", help="This consumer's name in the groups (default: the host name); keep it "
                                         "the same across restarts, different for each consumer sharing a stream.")
@click.option("--claim-idle", type=float, default=60.0, show_default=True,
              help="Take over entries another consumer has held unapplied for this many seconds.")
@click.option("--heartbeat", type=click.Path(dir_okay=False),
              help="A file touched after each batch applied or wait with nothing to apply (health).")
def stream(views: tuple[str, ...], batch: int, name: str | None, claim_idle: float, heartbeat: str | None) -> None:
    """Keep stream feature views fresh from their streams (`mlplat up` starts this); stop with Ctrl-C or SIGTERM."""
    import logging
    import signal
    import threading
    from pathlib import Path

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer = _platform().streams.consumer(list(views) or None, batch, name, claim_idle)
    consumer.refresh()  # an unknown --view fails here, at once
    try:
        consumer.serve(stop, heartbeat=Path(heartbeat) if heartbeat else None)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
