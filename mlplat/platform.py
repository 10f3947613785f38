"""The ``Platform`` handle returned by :func:`mlplat.connect`."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property, partial
from typing import Any

from mlplat.clock import SYSTEM_CLOCK, Clock
from mlplat.config import Settings, load_settings
from mlplat.errors import InvalidArgument
from mlplat.files import private_inside
from mlplat.scheduling import TemplateScheduler


class Platform:
    """A thin handle on one configured platform: ``p.features``, ``p.settings``.

    Each part is built on first use; ``close()`` (or ``with``) releases connections. ``clock`` is what
    the parts that stamp and window by wall time (the prediction log, monitoring) take as now.
    """

    def __init__(self, settings: Settings, clock: Clock = SYSTEM_CLOCK):
        self.settings = settings
        self.clock = clock

    @classmethod
    def open(cls, clock: Clock = SYSTEM_CLOCK, **overrides: Any) -> Platform:
        """Load settings and start the embedded services they ask for."""
        from mlplat import services

        platform = cls(load_settings(**overrides), clock)
        services.up(platform.settings, only=("redis",))  # the MLflow UI is for people: `mlplat up`
        return platform

    @cached_property
    def engine(self):
        """The SQLAlchemy engine of the metadata database (:mod:`mlplat.db`), its schema checked once.

        A new empty database gets the newest schema; an older or newer one is refused with the command that fixes it.
        """
        from mlplat import db

        return db.open_database(self.settings.registry)

    @cached_property
    def audit(self):
        """Who did what to which object, when and why (:class:`mlplat.audit.Audit`): ``p.audit.entries(user="ana")``."""
        from mlplat.audit import Audit

        return Audit(self.engine, self.settings.user, self.settings.team)

    @cached_property
    def online(self):
        """The online store (:class:`mlplat.features.online.RedisOnlineStore`); ``p.online.client`` is its Redis."""
        from mlplat.config import EMBEDDED
        from mlplat.features.online import RedisOnlineStore
        from mlplat.features.redis_service import online_store_url

        # The embedded Redis is found again (started again if it died) whenever a connection is remade.
        locate = partial(online_store_url, self.settings) if self.settings.online_store == EMBEDDED else None
        return RedisOnlineStore(online_store_url(self.settings), self.settings.online_prefix, locate)

    @cached_property
    def features(self):
        """The feature store (:class:`mlplat.features.store.FeatureStore`)."""
        from mlplat.features.offline import OfflineStore
        from mlplat.features.registry import Registry
        from mlplat.features.store import FeatureStore

        return FeatureStore(Registry(self.engine, self.audit), OfflineStore(self.settings.offline_store), self.online,
                            scheduler=_OnFirstUse(lambda: self.jobs), max_clock_skew=self.settings.max_clock_skew)

    @cached_property
    def models(self):
        """The model registry (:class:`mlplat.registry.models.ModelRegistry`)."""
        from mlplat.registry.models import ModelRegistry

        return ModelRegistry(self.settings, self.audit, self.features, logger=self._log_model)

    def _log_model(self, model: Any, name: str, **options: Any):
        """``p.models.log`` (see :meth:`mlplat.registry.models.ModelRegistry.log`)."""
        from mlplat.byo import log
        from mlplat.options import check_options

        return log(self._training(), model, name, **check_options(log, options, "models.log", given=3))

    def compute(self, kind: str | None = None, **overrides: Any):
        """A Dask cluster: ``kind`` "local" or "kubernetes" (default: Kubernetes when configured, else local)."""
        from mlplat.training.cluster import compute

        return compute(self.settings, kind, **overrides)

    def train(self, estimator: Any, **options: Any):
        """Train on a point-in-time training set, track it in MLflow, gate it, register it.

        >>> result = p.train("xgboost.XGBClassifier", features=["driver_stats:*"], entity_df=labels,
        ...                  target="completed", name="churn", validation={"metric": "roc_auc", "min": 0.7})

        Options: ``features``, ``entity_df``, ``target``, ``name`` (required); ``params``,
        ``validation``, ``split`` (``{"by": "time"|"random", "test_size": 0.2}``),
        ``timestamp_field``, ``seed``, ``client`` (a Dask client: distributed fit),
        ``register``. Returns a :class:`mlplat.training.run.TrainResult`.
        """
        from mlplat.options import check_options
        from mlplat.training.run import train

        return train(self._training(), estimator, **check_options(train, options, "train", given=2))

    def tune(self, estimator: Any, space: dict[str, Any], **options: Any):
        """Search hyperparameters on the cluster; every trial is a nested MLflow run, the best is registered."""
        from mlplat.options import check_options
        from mlplat.training.tune import tune

        return tune(self._training(), estimator, space, **check_options(tune, options, "tune", given=3))

    def reproduce(self, run_id: str, client: Any = None):
        """Retrain a run from its recorded inputs and compare the metrics."""
        from mlplat.training.run import reproduce

        return reproduce(self._training(), run_id, client)

    def _training(self):
        from mlplat.training.run import Training

        return Training(self.settings, self.features, self.audit, self.models)

    def lineage(self, model: str | None = None, version: str | int | None = None, feature_view: str | None = None,
                endpoint: str | None = None):
        """Where a model version, or what a Triton endpoint serves, came from; or which model versions use a view."""
        from mlplat.lineage import Tracer

        tracer = Tracer(self.settings, self.features, self.models, self.audit, self.serving_target)
        if endpoint is not None:
            return tracer.of_endpoint(endpoint)
        if feature_view is not None:
            return tracer.of_feature_view(feature_view)
        if model is None:
            raise InvalidArgument("Pass model= (and version=), endpoint= or feature_view=.")
        return tracer.of_model(model, version)

    def deploy(self, name: str, version: str | int | None = None, alias: str = "champion", **options: Any):
        """Put a registered version (default: the champion) live on Triton; returns a Deployment.

        Options: ``missing`` (``"flag"``, ``"error"`` or ``"impute"``: what serving does with rows that lack
        features, see :mod:`mlplat.serving.missing`), ``keep``, ``default``, ``max_batch_size``, ``instances``,
        ``queue_delay_us``, ``tolerance`` (see :meth:`mlplat.serving.deploy.Deployer.deploy`).
        """
        from mlplat.options import check_options

        deploy = self._deployer.deploy
        with private_inside(self.settings.home, self.serving_target.models):  # the home's model repository: 0600
            deployment = deploy(name, version, alias, **check_options(deploy, options, "deploy", given=3))
        self._forget_deployment(name)
        return deployment

    def undeploy(self, name: str) -> None:
        """Take a model off Triton."""
        with private_inside(self.settings.home, self.serving_target.models):
            self._deployer.undeploy(name)
        self._forget_deployment(name)

    def _forget_deployment(self, name: str) -> None:
        """The gRPC client looks ``name`` up again (after a deploy or undeploy changed it)."""
        if "serving" in self.__dict__:
            self.serving.forget(name)

    def deployments(self):
        """What is live on Triton."""
        return self._deployer.deployments()

    @cached_property
    def serving_target(self):
        """Where models are served (:class:`mlplat.serving.target.ServingTarget`): the embedded Triton, or the
        one ``triton_url`` names."""
        from mlplat.serving.external import ExternalTriton
        from mlplat.serving.triton import EmbeddedTriton

        targets = {"embedded": EmbeddedTriton, "grpc": ExternalTriton}
        return targets[self.settings.triton_url.partition(":")[0]](self.settings)

    @cached_property
    def _deployer(self):
        from mlplat.serving.deploy import Deployer

        return Deployer(self.serving_target, self.models, self.features, self.audit, self.settings)

    @cached_property
    def serving(self):
        """The gRPC client of this platform's Triton (:class:`mlplat.serving.client.Client`)."""
        from mlplat.monitoring.predlog import PredictionLogger
        from mlplat.serving.client import Client

        settings = self.settings

        def prediction_log() -> PredictionLogger:
            return PredictionLogger(self.online.client, settings.online_prefix, settings.prediction_sample_rate,
                                    clock=self.clock)

        return Client(self.serving_target, self.features, prediction_log)

    @cached_property
    def jobs(self):
        """Notebook jobs (:class:`mlplat.jobs.runs.Jobs`): run, history, rerun."""
        from mlplat.jobs.runs import Jobs

        return Jobs(self.settings, self.engine, self.audit)

    @cached_property
    def experiments(self):
        """A/B tests, canaries and shadow tests (:class:`mlplat.serving.experiments.Experiments`)."""
        from mlplat.serving.experiments import Experiments

        return Experiments(self.engine, self.audit, self.models, self.serving, self.deploy)

    @cached_property
    def streams(self):
        """Stream feature views (:class:`mlplat.streaming.streams.Streams`): send, process, dead letters, backfill."""
        from mlplat.streaming.log import EventLog
        from mlplat.streaming.streams import Streams

        features = self.features
        return Streams(features.registry, features.offline, self.online, EventLog(features.offline),
                       self.settings.max_clock_skew)

    @cached_property
    def monitor(self):
        """Drift, latency, errors and feature freshness of deployed models (:class:`mlplat.monitoring.monitor.Monitor`)."""
        from mlplat.monitoring.monitor import Monitor

        return Monitor(self.settings, self.engine, self.audit, self.online.client, self.models,
                       _OnFirstUse(lambda: self.jobs), self._deployed_version, self._serving_metrics_url, self.clock)

    def _deployed_version(self, name: str) -> str:
        return str(self.serving_target.serving_info(name)["default"])

    def _serving_metrics_url(self) -> str | None:
        running = self.serving_target.where()
        return running.metrics if running else None

    def alerts(self, status: str | None = None, model: str | None = None):
        """Alerts raised by monitoring checks, newest first (``status`` "firing" or "resolved")."""
        return self.monitor.alerts.list(status, model)

    def predict(self, name: str, entity_rows: Any = None, features: Any = None, version: str | None = None):
        """Predict with a deployed model over gRPC: entity rows (features looked up online) or a feature matrix.

        ``Prediction.missing`` says which rows lacked which features (served per the deployment's policy).
        """
        return self.serving.predict(name, entity_rows, features, version)

    async def apredict(self, name: str, entity_rows: Any = None, features: Any = None, version: str | None = None):
        """:meth:`predict` for asyncio code; concurrent calls for one model go out together as batches
        (see :meth:`mlplat.serving.client.Client.apredict`)."""
        return await self.serving.apredict(name, entity_rows, features, version)

    def rollback(self, name: str, reason: str = ""):
        """In one call: give ``champion`` back to the previous champion and serve it on Triton."""
        self.models.rollback(name, reason)
        return self.deploy(name)

    def status(self):
        """Services, endpoints and versions (:class:`mlplat.status.Status`)."""
        from mlplat.status import status

        return status(self.settings)

    def close(self) -> None:
        """Close connections; embedded services keep running for other sessions (`mlplat down` stops them)."""
        self.__dict__.pop("features", None)
        if "online" in self.__dict__:
            self.__dict__.pop("online").close()
        if "engine" in self.__dict__:
            self.engine.dispose()
            del self.__dict__["engine"]
        self.__dict__.pop("models", None)
        self.__dict__.pop("_deployer", None)
        self.__dict__.pop("audit", None)
        self.__dict__.pop("experiments", None)
        self.__dict__.pop("jobs", None)
        self.__dict__.pop("monitor", None)
        self.__dict__.pop("streams", None)
        if "serving" in self.__dict__:
            self.__dict__.pop("serving").close()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mlplat.Platform home={str(self.settings.home)!r} online={self.settings.online_store!r}>"


class _OnFirstUse:
    """A TemplateScheduler made when first asked to schedule: building ``p.jobs`` (its tables, MLflow's
    helpers) is not worth it for the many sessions that use features without scheduling anything."""

    def __init__(self, make: Callable[[], TemplateScheduler]):
        self._make = make

    def schedule_template(self, template: str, cron: str, parameters: dict[str, Any], *,
                          key: str | None = None) -> int:
        return self._make().schedule_template(template, cron, parameters, key=key)
