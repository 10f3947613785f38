"""``mlplat.connect()`` in server mode: the same ``Platform`` API, its writes and metadata sent to the server.

Set ``server_url`` (``MLPLAT_SERVER_URL``; the hub sets it in every workspace) and the SDK holds no write
credential: mutations, the feature registry, the model registry, jobs, monitoring, experiments and the audit
trail are calls to ``mlplat server`` with the user's JupyterHub token. What stays here is what reads data:
online features straight from Redis (as the read-only user whose URL the server hands out), predictions over
Triton's gRPC, and training itself, which logs to the server's MLflow. The offline store is the server's alone:
training sets are joined there, and come back as Arrow IPC.
"""

from __future__ import annotations

import dataclasses
import os
from functools import cached_property
from typing import Any

from mlplat.clock import SYSTEM_CLOCK, Clock
from mlplat.config import EMBEDDED, Settings, load_settings
from mlplat.errors import ConfigError, InvalidArgument, JobError
from mlplat.features.store import FeatureStore
from mlplat.platform import Platform
from mlplat.registry.models import ModelRegistry
from mlplat.remote.client import RemotePart, ServerClient, sends, token_from_env


class ServerOffline:
    """Where the offline store would be: in server mode only the platform server opens it."""

    def __getattr__(self, name: str) -> Any:
        raise ConfigError("In server mode the offline store belongs to the platform server: read it through "
                          "p.features (get_training_set, stats, freshness, quarantine); stream feature views are "
                          "kept fresh by the platform's `mlplat stream` service, not from a workspace.")


@sends("features", "apply", "ingest", "push", "materialize", "schedule_compute", "transfer", "freshness", "stats",
       "quarantine", "partitions", "key_kinds")
class ServerFeatureStore(FeatureStore):
    """Features whose definitions and offline rows live on the server; online reads stay local."""

    def get_training_set(self, entity_df: Any, features: Any, *, timestamp_field: str = "event_timestamp",
                         client: Any = None) -> Any:
        """As in embedded mode, but the stored views are joined by the server (``client`` is not used: the join
        runs where the offline store is); on-demand features are computed here, from what it sends back."""
        if type(entity_df).__module__.startswith("dask"):
            raise InvalidArgument("In server mode a training set is joined by the platform server, which takes a "
                                  "pandas DataFrame of entity rows: compute() the dask DataFrame, or send it in "
                                  "parts.")
        return super().get_training_set(entity_df, features, timestamp_field=timestamp_field)

    def _join(self, entity_df: Any, requests: list[Any], timestamp_field: str, client: Any) -> Any:
        from mlplat.features.retrieval import with_features

        reads = [(r.view.name, r.view.version, r.features, r.columns) for r in requests]
        needed = list(dict.fromkeys([timestamp_field, *(k for r in requests for k in r.view.join_keys)]))
        present = set(getattr(entity_df, "columns", ()))
        rows = entity_df[needed] if set(needed) <= present else entity_df  # only what the join reads; else refused
        table = self._server.call("features.join", rows, reads, timestamp_field=timestamp_field)
        return with_features(entity_df, table)

    def compute(self, view: Any, *args: Any, **kwargs: Any) -> Any:
        raise InvalidArgument("In server mode a batch view is computed by its schedule, as a job of the platform's "
                              "scheduler: p.features.schedule_compute(view, cron) (or a schedule= in its definition); "
                              "to try a transformation, run it on a DataFrame here and p.features.ingest the result.")


@sends("models", "list", "versions", "get", "trained_in", "history", "team", "private", "register", "promote",
       "rollback", "archive", "transfer", "set_private", "pin")
class ServerModelRegistry(ModelRegistry):
    """The model registry through the server; loading and scoring a version run here."""


@sends("audit", "entries", "record")
class ServerAudit:
    """The audit trail, written by the server alone: ``entries()`` shows what the caller may see."""

    def __init__(self, server: ServerClient, user: str, team: str):
        self._server, self.user, self.team = server, user, team


@sends("features.registry", "get_view", "view_names", "list_views", "usable_views", "list_entities", "versions",
       "history", "watermark")
class ServerRegistry:
    """The feature registry's reads, answered by the server."""

    def __init__(self, server: ServerClient, audit: ServerAudit):
        self._server, self.audit = server, audit


class ServerJobs(RemotePart):
    """Notebook jobs in server mode: schedules and history on the server; a run is scheduled, not run here."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise JobError("In server mode a notebook job runs through the platform's scheduler: "
                       "p.jobs.schedule(notebook, cron) (it runs as you, recorded in p.jobs.history()); to run a "
                       "notebook now in this workspace, use papermill directly.")

    rerun = run


class ServerStreams(RemotePart):
    """Stream feature views in server mode: events are sent, and dead letters, lag and logged events read, through
    the server; the platform's stream service (``mlplat stream``) applies them."""

    def process(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidArgument("In server mode the platform's stream service (`mlplat stream`) applies events: send "
                              "them with p.streams.send(view, events), and watch p.streams.lag(view).")

    consumer = process


class ServerModePlatform(Platform):
    """A :class:`~mlplat.platform.Platform` in a workspace of a shared install (see the module's doc)."""

    def __init__(self, settings: Settings, server: ServerClient, clock: Clock = SYSTEM_CLOCK):
        super().__init__(settings, clock)
        self.server = server

    @classmethod
    def open(cls, clock: Clock = SYSTEM_CLOCK, token: str | None = None, **overrides: Any) -> ServerModePlatform:
        """Connect to the server that ``server_url`` names, as the owner of ``token`` (default: the environment's)."""
        settings = load_settings(**overrides)
        token = token or token_from_env()
        server = ServerClient(settings.server_url, token)
        me = server.whoami()  # who we are is the server's answer, not an environment variable's
        tracking = f"{server.url}/mlflow"  # MLflow behind the server, as this user (see mlplat.server.mlflow_proxy)
        if os.environ.get("MLFLOW_TRACKING_URI", tracking) in ("", tracking):  # unless the user pointed it elsewhere
            os.environ.update(MLFLOW_TRACKING_URI=tracking, MLFLOW_TRACKING_TOKEN=token)  # mlflow's own API follows
        settings = dataclasses.replace(settings, user=me["name"], team=me["team"], tracking=tracking)
        if settings.online_store == EMBEDDED:  # the install's Redis, as its read-only user (a pod has that URL)
            online = server.online_store()
            settings = dataclasses.replace(settings, online_store=online["url"], online_prefix=online["prefix"])
        return cls(settings, server, clock)

    @property
    def engine(self):
        raise ConfigError("In server mode the metadata database belongs to the platform server; use the "
                          "platform's API (p.features, p.models, p.jobs, p.audit ...).")

    @cached_property
    def audit(self):
        return ServerAudit(self.server, self.settings.user, self.settings.team)

    @cached_property
    def features(self):
        store = ServerFeatureStore(ServerRegistry(self.server, self.audit), ServerOffline(), self.online,
                                   max_clock_skew=self.settings.max_clock_skew)
        store._server = self.server
        return store

    @cached_property
    def models(self):
        registry = ServerModelRegistry(self.settings, self.audit, self.features)
        registry._server = self.server
        return registry

    @cached_property
    def jobs(self):
        return ServerJobs(self.server, "jobs", "Notebook jobs, scheduled through the platform server.")

    @cached_property
    def monitor(self):
        return RemotePart(self.server, "monitor", "Drift, latency, errors and thresholds, kept by the server.")

    @cached_property
    def streams(self):
        return ServerStreams(self.server, "streams", ServerStreams.__doc__ or "")

    @cached_property
    def experiments(self):
        return RemotePart(self.server, "experiments", "A/B tests, canaries and shadow tests, run by the server.")

    def deploy(self, name: str, version: str | int | None = None, alias: str = "champion", **options: Any):
        deployment = self.server.call("platform.deploy", name, version, alias, **options)
        self._forget_deployment(name)
        return deployment

    def undeploy(self, name: str) -> None:
        self.server.call("platform.undeploy", name)
        self._forget_deployment(name)

    def deployments(self):
        return self.server.call("platform.deployments")

    def rollback(self, name: str, reason: str = ""):
        return self.server.call("platform.rollback", name, reason)

    def lineage(self, model: str | None = None, version: str | int | None = None, feature_view: str | None = None,
                endpoint: str | None = None):
        return self.server.call("platform.lineage", model, version, feature_view, endpoint)

    def alerts(self, status: str | None = None, model: str | None = None):
        return self.server.call("platform.alerts", status, model)

    def close(self) -> None:
        super().close()
        for part in ("jobs", "monitor", "experiments", "streams"):
            self.__dict__.pop(part, None)

    def __repr__(self) -> str:
        return f"<mlplat.Platform server={self.server.url!r} user={self.settings.user!r}>"
