"""The ``Platform`` handle returned by :func:`mlplat.connect`."""

from __future__ import annotations

from functools import cached_property, partial
from typing import Any

from mlplat.config import Settings, load_settings
from mlplat.errors import InvalidArgument


class Platform:
    """A thin handle on one configured platform: ``p.features``, ``p.settings``.

    Each part is built on first use; ``close()`` (or ``with``) releases connections.
    """

    def __init__(self, settings: Settings):
        self.settings = settings

    @classmethod
    def open(cls, **overrides: Any) -> Platform:
        """Load settings and start the embedded services they ask for."""
        from mlplat import services

        platform = cls(load_settings(**overrides))
        services.up(platform.settings, only=("redis",))  # the MLflow UI is for people: `mlplat up`
        return platform

    @cached_property
    def engine(self):
        """The SQLAlchemy engine of the metadata database (feature registry, audit)."""
        from mlplat.features.registry import create_registry_engine

        return create_registry_engine(self.settings.registry)

    @cached_property
    def audit(self):
        """Who did what to which object, when and why (:class:`mlplat.audit.Audit`): ``p.audit.entries(user="ana")``."""
        from mlplat.audit import Audit

        return Audit(self.engine, self.settings.user, self.settings.team)

    @cached_property
    def features(self):
        """The feature store (:class:`mlplat.features.store.FeatureStore`)."""
        from mlplat.config import EMBEDDED
        from mlplat.features.offline import OfflineStore
        from mlplat.features.online import RedisOnlineStore
        from mlplat.features.redis_service import online_store_url
        from mlplat.features.registry import Registry
        from mlplat.features.store import FeatureStore

        # The embedded Redis is found again (started again if it died) whenever a connection is remade.
        locate = partial(online_store_url, self.settings) if self.settings.online_store == EMBEDDED else None
        online = RedisOnlineStore(online_store_url(self.settings), self.settings.online_prefix, locate)
        return FeatureStore(Registry(self.engine, self.audit), OfflineStore(self.settings.offline_store), online,
                            platform=self, max_clock_skew=self.settings.max_clock_skew)

    @cached_property
    def models(self):
        """The model registry (:class:`mlplat.registry.models.ModelRegistry`)."""
        from mlplat.registry.models import ModelRegistry

        return ModelRegistry(self)

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

        return train(self, estimator, **check_options(train, options, "train", given=2))

    def tune(self, estimator: Any, space: dict[str, Any], **options: Any):
        """Search hyperparameters on the cluster; every trial is a nested MLflow run, the best is registered."""
        from mlplat.options import check_options
        from mlplat.training.tune import tune

        return tune(self, estimator, space, **check_options(tune, options, "tune", given=3))

    def reproduce(self, run_id: str, client: Any = None):
        """Retrain a run from its recorded inputs and compare the metrics."""
        from mlplat.training.run import reproduce

        return reproduce(self, run_id, client)

    def lineage(self, model: str | None = None, version: str | int | None = None, feature_view: str | None = None,
                endpoint: str | None = None):
        """Where a model version, or what a Triton endpoint serves, came from; or which model versions use a view."""
        from mlplat import lineage

        if endpoint is not None:
            return lineage.of_endpoint(self, endpoint)
        if feature_view is not None:
            return lineage.of_feature_view(self, feature_view)
        if model is None:
            raise InvalidArgument("Pass model= (and version=), endpoint= or feature_view=.")
        return lineage.of_model(self, model, version)

    def deploy(self, name: str, version: str | int | None = None, alias: str = "champion", **options: Any):
        """Put a registered version (default: the champion) live on Triton; returns a Deployment.

        Options: ``missing`` (``"flag"``, ``"error"`` or ``"impute"``: what serving does with rows that lack
        features, see :mod:`mlplat.serving.missing`), ``keep``, ``default``, ``max_batch_size``, ``instances``,
        ``tolerance`` (see :func:`mlplat.serving.deploy.deploy`).
        """
        from mlplat.options import check_options

        deploy = self._deployer.deploy
        deployment = deploy(name, version, alias, **check_options(deploy, options, "deploy", given=3))
        if "serving" in self.__dict__:
            self.serving.forget(name)
        return deployment

    def undeploy(self, name: str) -> None:
        """Take a model off Triton."""
        self._deployer.undeploy(name)
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
            return PredictionLogger(self.features.online.client, settings.online_prefix,
                                    settings.prediction_sample_rate)

        return Client(self.serving_target, self.features, prediction_log)

    @cached_property
    def jobs(self):
        """Notebook jobs (:class:`mlplat.jobs.runs.Jobs`): run, history, rerun."""
        from mlplat.jobs.runs import Jobs

        return Jobs(self)

    @cached_property
    def experiments(self):
        """A/B tests, canaries and shadow tests (:class:`mlplat.serving.experiments.Experiments`)."""
        from mlplat.serving.experiments import Experiments

        return Experiments(self.engine, self.audit, self.models, self.serving, self.deploy, self.settings.user)

    @cached_property
    def streams(self):
        """Stream feature views (:class:`mlplat.streaming.streams.Streams`): send, process, dead letters, backfill."""
        from mlplat.streaming.streams import Streams

        return Streams(self)

    @cached_property
    def monitor(self):
        """Drift, latency, errors and feature freshness of deployed models (:class:`mlplat.monitoring.monitor.Monitor`)."""
        from mlplat.monitoring.monitor import Monitor

        return Monitor(self)

    def alerts(self, status: str | None = None, model: str | None = None):
        """Alerts raised by monitoring checks, newest first (``status`` "firing" or "resolved")."""
        return self.monitor.alerts.list(status, model)

    def predict(self, name: str, entity_rows: Any = None, features: Any = None, version: str | None = None):
        """Predict with a deployed model over gRPC: entity rows (features looked up online) or a feature matrix.

        ``Prediction.missing`` says which rows lacked which features (served per the deployment's policy).
        """
        return self.serving.predict(name, entity_rows, features, version)

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
        if "features" in self.__dict__:
            self.features.online.close()
            del self.__dict__["features"]
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
