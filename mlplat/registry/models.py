"""``p.models``: registered models on the MLflow Model Registry.

New versions get the ``challenger`` alias; ``promote`` moves ``champion`` to a
version only when it beats the current champion on a shared holdout by a
margin (or when forced, with a reason); ``rollback`` gives ``champion`` back
to the version that held it before. Every action lands in the platform's audit
trail (``p.audit``, kind ``"model"``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlplat.audit import Audit, AuditTrail
from mlplat.config import Settings
from mlplat.errors import ArtifactIntegrityError, InvalidArgument, ModelNotFound, PromotionRefused
from mlplat.features.definitions import check_text
from mlplat.registry import integrity, logged_onnx, scoring, tracking
from mlplat.registry.artifacts import REFERENCE_ARTIFACT, load_spec
from mlplat.registry.evaluate import LOWER_IS_BETTER, Split, score, split_rows
from mlplat.registry.names import check_model_name
from mlplat.registry.scoring import FeatureSource

CHAMPION, CHALLENGER = "champion", "challenger"
ARCHIVED_TAG = "mlplat.archived"
TEAM_TAG = "mlplat.team"  # on the registered model: the team that owns it (and on each version: who made it)
PRIVATE_TAG = "mlplat.private"  # "true" on a registered model its team keeps to itself (server mode)
@dataclass(frozen=True)
class ModelVersion:
    """One registered version with what people look at first."""

    name: str
    version: str
    run_id: str
    aliases: list[str]
    metrics: dict[str, float]
    features: list[str]
    archived: bool
    created: pd.Timestamp
    owner: str  # who registered it
    team: str


@dataclass(frozen=True)
class Promotion:
    """The outcome of ``promote``: the comparison made on the shared holdout."""

    name: str
    version: str
    previous: str | None
    metric: str
    challenger_score: float | None
    champion_score: float | None
    forced: bool


class ModelRegistry:
    """List, register, promote, roll back and archive model versions.

    ``settings`` name the MLflow store; every action is recorded in ``audit``; versions are scored
    (promotion, batch scoring, evaluation) on inputs built from ``features``.
    """

    def __init__(self, settings: Settings, audit: Audit, features: FeatureSource, margin: float = 0.0,
                 logger: Callable[..., Any] | None = None):
        self.settings = settings
        self.audit = audit
        self.features = features
        self.margin = margin
        self._logger = logger  # what p.models.log runs (mlplat.byo.log, wired by the platform)

    def log(self, model: Any, name: str, **options: Any) -> Any:
        """Register a model trained anywhere, with the lineage, gate and pins of ``p.train``.

        >>> p.models.log(model, "churn", features=["driver_stats:rating", ...], entity_df=labels,
        ...              target="completed", validation={"metric": "roc_auc", "min": 0.7})

        ``model``: a fitted scikit-learn-compatible estimator, XGBoost/LightGBM model or ``torch.nn.Module``
        (a classifier module returns one logit, or probability, per class). Its rows: ``entity_df`` (entity keys,
        times, target: the platform rebuilds the features) or ``training_set`` (those rows with the feature
        columns, checked against the store). Options: ``metrics`` (yours, beside those computed on the holdout of
        the rows, the split p.train makes), ``validation``, ``split``, ``kind``, ``timestamp_field``, ``seed``,
        ``register``, ``tolerance`` (of the ONNX export's check). The model is exported to ONNX here; one that
        ONNX cannot express is served through its MLflow pyfunc (slower). Returns a TrainResult.
        """
        if self._logger is None:
            raise InvalidArgument("p.models.log registers a model from the process it lives in; this platform "
                                  "connection cannot (server mode does not take logged models yet): train it "
                                  "with p.train, or log it on an embedded platform.")
        return self._logger(model, name, **options)

    def _client(self):
        return tracking.session(self.settings)

    # -- reading -----------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """Every registered model: name, latest version, aliases."""
        with self._client() as client:
            models = _call(self.settings, client.search_registered_models)
            return [{"name": m.name, "latest": max((int(v.version) for v in m.latest_versions), default=None),
                     "aliases": {a: str(v) for a, v in (m.aliases or {}).items()}} for m in models]

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, newest first, with its run's metrics."""
        check_model_name(name)
        with self._client() as client:
            found = _call(self.settings, client.search_model_versions, f"name='{name}'")
            if not found:
                raise self._unknown(client, name)
            aliases = self._aliases(client, name)
            return [self._describe(client, v, aliases) for v in sorted(found, key=lambda v: -int(v.version))]

    def get(self, name: str, version: str | int | None = None, alias: str | None = None) -> ModelVersion:
        """One version, by number or alias (default: the champion)."""
        check_model_name(name)
        if alias is not None and not isinstance(alias, str):
            raise InvalidArgument(f"alias={alias!r}: an alias is a name such as 'champion' or 'challenger'.")
        with self._client() as client:
            aliases = self._aliases(client, name)
            if version is None:
                alias = alias or CHAMPION
                if alias not in aliases:
                    raise ModelNotFound(f"Model {name!r} has no {alias!r} alias; it has {sorted(aliases) or 'none'}. "
                                        "Promote a version first, or pass version=.")
                version = aliases[alias]
            try:
                found = client.get_model_version(name, str(version))
            except Exception:
                raise ModelNotFound(f"Model {name!r} has no version {version}.") from None
            return self._describe(client, found, aliases)

    def trained_in(self, notebook: str | Path) -> ModelVersion:
        """The newest registered, unarchived version whose training run recorded ``notebook`` as its code.

        Runs record the notebook (or script) that called ``p.train``, so a notebook's Deploy
        button can find what it trained: ``p.models.trained_in("churn.ipynb").version``.
        """
        path = str(Path(notebook).resolve())
        with self._client() as client:
            found = _call(self.settings, client.search_model_versions)
            for version in sorted(found, key=lambda v: (-v.creation_timestamp, -int(v.version))):
                if version.tags.get(ARCHIVED_TAG) != "true" and \
                        client.get_run(version.run_id).data.tags.get("mlplat.code_path") == path:
                    return self._describe(client, version, self._aliases(client, version.name))
        raise ModelNotFound(f"No registered model version was trained in {path}; run its training cell "
                            "(p.train or %train) first, or choose a registered model by name.")

    def load(self, name: str, version: str | int | None = None, alias: str | None = None) -> Any:
        """A version (default: the champion) as an ``mlflow.pyfunc`` model, ready to ``predict``."""
        import mlflow

        from mlplat.registry.integrity import verified_copy

        found = self.get(name, version, alias)
        with self._client() as client:
            tags = dict(client.get_model_version(name, found.version).tags or {})
        if logged_onnx.RUNTIME_TAG in tags:  # logged with p.models.log (or a PyTorch run): recorded, never loaded
            raise ArtifactIntegrityError(
                f"{name} version {found.version} was logged from its author's process (runtime "
                f"{tags[logged_onnx.RUNTIME_TAG]}); loading it would run that code, so mlplat serves its export or "
                "its pyfunc worker instead. Use p.models.score or p.predict, or load it in your own process with "
                f"mlflow.pyfunc.load_model('models:/{name}/{found.version}') if you trust its author.")
        with verified_copy(self.settings, name, found.version, tags) as (folder, _):
            return mlflow.pyfunc.load_model(str(folder))

    def _describe(self, client, version, aliases: dict[str, str]) -> ModelVersion:
        run = client.get_run(version.run_id)
        number = str(version.version)
        return ModelVersion(version.name, number, version.run_id,
                            sorted(a for a, v in aliases.items() if v == number), dict(run.data.metrics),
                            json.loads(version.tags.get("mlplat.features", "[]")),
                            version.tags.get(ARCHIVED_TAG) == "true",
                            pd.Timestamp(version.creation_timestamp, unit="ms", tz="UTC"),
                            version.tags.get("mlplat.owner", ""), version.tags.get("mlplat.team", ""))

    def _aliases(self, client, name: str) -> dict[str, str]:
        try:
            return {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
        except Exception:
            raise self._unknown(client, name) from None

    def _unknown(self, client, name: str) -> ModelNotFound:
        names = sorted(m.name for m in client.search_registered_models())
        return ModelNotFound(f"{name!r} is not a registered model; registered: {', '.join(names) or 'none yet'}.")

    def team(self, name: str) -> str:
        """The team that owns model ``name`` (one registered before teams: its first version's team)."""
        check_model_name(name)
        with self._client() as client:
            try:
                model = client.get_registered_model(name)
            except Exception:
                raise self._unknown(client, name) from None
            if TEAM_TAG in (model.tags or {}):
                return model.tags[TEAM_TAG]
            found = _call(self.settings, client.search_model_versions, f"name='{name}'")
            first = min(found, key=lambda v: int(v.version), default=None)
            return (first.tags or {}).get(TEAM_TAG, "") if first else ""

    def private(self, name: str) -> bool:
        """Whether model ``name`` is kept to its team (in server mode others neither list nor read it)."""
        check_model_name(name)
        with self._client() as client:
            try:
                return (client.get_registered_model(name).tags or {}).get(PRIVATE_TAG) == "true"
            except Exception:
                raise self._unknown(client, name) from None

    # -- writing -----------------------------------------------------------------
    def set_private(self, name: str, private: bool = True, reason: str = "") -> None:
        """Keep model ``name`` to its team (``private=False``: let every user read it again)."""
        if not isinstance(private, bool):
            raise InvalidArgument(f"private={private!r}: pass True or False.")
        self.team(name)  # an unknown model fails here, with the names there are
        with self._client() as client:
            client.set_registered_model_tag(name, PRIVATE_TAG, str(private).lower())
        self.audit.record("model", name, "made_private" if private else "made_public", None, reason)

    def transfer(self, name: str, team: str, reason: str = "") -> None:
        """Give model ``name`` (every version, its deployment and thresholds) to ``team``."""
        check_text("team", team)
        previous = self.team(name)
        with self._client() as client:
            client.set_registered_model_tag(name, TEAM_TAG, team)
        self.audit.record("model", name, "transferred", None, reason, team=team, previous=previous)

    def register(self, name: str, model_uri: str, run_id: str, features: list[str], fingerprint: str,
                 recorded: bool = False, runtime: str | None = None) -> str:
        """Register a logged model as a new version of ``name`` and make it the challenger.

        ``recorded=True``: a model the platform records but never loads (a PyTorch module, a pyfunc fallback; see
        :func:`mlplat.registry.integrity.check_recorded`). Its run's ONNX export, if it logged one, is pinned too;
        ``runtime`` (``"onnx"`` or ``"pyfunc"``) says how it is served.
        """
        check_model_name(name)
        with self._client() as client:
            if not _call(self.settings, client.search_registered_models, f"name='{name}'"):
                client.create_registered_model(name, tags={TEAM_TAG: self.audit.team})
            tags = {"mlplat.features": json.dumps(features), "mlplat.training_set_fingerprint": fingerprint,
                    "mlplat.feature_views": json.dumps(sorted({f.split(":")[0].split("@")[0] for f in features})),
                    "mlplat.owner": self.audit.user, TEAM_TAG: self.audit.team}
            with integrity.downloaded(self.settings, model_uri) as folder:  # pinned: loads check these files
                check = integrity.check_recorded if recorded else integrity.check_flavour
                check(folder, f"The model at {model_uri}")
                tags.update(integrity.pin_tags(folder))
            if runtime:  # a model logged with its export (or its pyfunc's description): pinned as well
                tags.update(logged_onnx.pin(self.settings, run_id))
                tags[logged_onnx.RUNTIME_TAG] = runtime
            # A models:/ URI names a logged model, which an MLflow server wants named as model_id too.
            model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else None
            version = str(client.create_model_version(name, model_uri, run_id=run_id, tags=tags,
                                                      model_id=model_id).version)
            client.set_registered_model_alias(name, CHALLENGER, version)
        self.audit.record("model", name, "registered", version, run_id=run_id, features=features)
        return version

    def pin(self, name: str, version: str | int, reason: str = "") -> str:
        """Pin the files of a version registered before mlplat pinned model artifacts, as they are now.

        For an admin who has checked those files (pin on first use): later loads refuse any other files. A version
        already pinned keeps its pin. Returns the digest.
        """
        if not reason:
            raise InvalidArgument("Pinning a model version's files needs a reason, e.g. reason='checked by alice'.")
        found = self.get(name, version)
        with self._client() as client:
            tags = dict(client.get_model_version(name, found.version).tags or {})
        if tags.get(integrity.DIGEST_TAG):
            raise InvalidArgument(f"{name} version {found.version} is already pinned; a pin is never replaced.")
        with integrity.downloaded(self.settings, f"models:/{name}/{found.version}") as folder:
            integrity.check_flavour(folder, f"Model {name!r} version {found.version}")
            pinned = integrity.pin_tags(folder)
        with self._client() as client:
            for key, value in pinned.items():
                client.set_model_version_tag(name, found.version, key, value)
        self.audit.record("model", name, "pinned", found.version, reason, digest=pinned[integrity.DIGEST_TAG])
        return pinned[integrity.DIGEST_TAG]

    def promote(self, name: str, version: str | int | None = None, *, metric: str | None = None,
                margin: float | None = None, force: bool = False, reason: str = "") -> Promotion:
        """Make ``version`` (default: the challenger) the champion if it beats the champion.

        Both are scored on the challenger's holdout rows, each with its own
        features as of each row's time; the challenger must be better by
        ``margin``. ``force=True`` skips the comparison but needs a ``reason``.
        """
        if force and not reason:
            raise InvalidArgument("A forced promotion needs a reason, e.g. reason='hotfix for the Q3 incident'.")
        candidate = self.get(name, version, alias=CHALLENGER if version is None else None)
        if candidate.archived:
            raise PromotionRefused(f"{name} version {candidate.version} is archived; archived versions cannot be promoted.")
        with self._client() as client:
            champion = self._aliases(client, name).get(CHAMPION)
        metric = metric or _default_metric(candidate.metrics)
        margin = self.margin if margin is None else margin
        scores: tuple[float | None, float | None] = (None, None)
        if champion and champion != candidate.version and not force:
            scores = self._shared_holdout(name, candidate.version, champion, metric)
            better = _improvement(metric, scores[0], scores[1])
            if better < margin:
                self.audit.record("model", name, "promotion_refused", candidate.version, reason, metric=metric,
                                  challenger=scores[0], champion=scores[1], champion_version=champion, margin=margin)
                raise PromotionRefused(
                    f"{name} version {candidate.version} scores {metric}={scores[0]:.4f} on the shared holdout, "
                    f"champion version {champion} scores {scores[1]:.4f}; it must be better by {margin}. "
                    "Keep the champion, or promote with force=True and a reason."
                )
        with self._client() as client:
            client.set_registered_model_alias(name, CHAMPION, candidate.version)
            if self._aliases(client, name).get(CHALLENGER) == candidate.version:
                client.delete_registered_model_alias(name, CHALLENGER)
        self.audit.record("model", name, "promoted", candidate.version, reason, previous=champion, forced=force,
                          metric=metric, challenger=scores[0], champion=scores[1])
        return Promotion(name, candidate.version, champion, metric, scores[0], scores[1], force)

    def rollback(self, name: str, reason: str = "") -> str:
        """Give ``champion`` back to the version that held it before the last promotion; return it."""
        check_model_name(name)
        with self._client() as client:
            current = self._aliases(client, name).get(CHAMPION)
        last = self.audit.entries("model", name, action=("promoted", "rolled_back"), limit=1)
        if not last or current is None:
            raise ModelNotFound(f"Model {name!r} has no earlier champion to roll back to.")
        previous = last[0].detail.get("previous")
        if previous is None:
            raise ModelNotFound(f"Version {current} of {name!r} was its first champion; there is nothing to roll back to.")
        with self._client() as client:
            client.set_registered_model_alias(name, CHAMPION, previous)
        self.audit.record("model", name, "rolled_back", previous, reason, previous=current)
        return previous

    def archive(self, name: str, version: str | int, reason: str = "") -> None:
        """Retire a version: it loses its aliases and cannot be promoted again."""
        if version is None:  # get() would pick the champion: retiring one must be asked for by number
            raise InvalidArgument(f"archive({name!r}) needs the version to retire, e.g. archive({name!r}, 3).")
        found = self.get(name, version)
        with self._client() as client:
            for alias in found.aliases:
                client.delete_registered_model_alias(name, alias)
            client.set_model_version_tag(name, found.version, ARCHIVED_TAG, "true")
        self.audit.record("model", name, "archived", found.version, reason, aliases=found.aliases)

    def score(self, name: str, entity_df: pd.DataFrame, version: str | int | None = None,
              alias: str | None = None) -> pd.DataFrame:
        """Batch scoring: ``entity_df`` with the version's predictions, from its features as of each row's time."""
        scoring.check_rows(entity_df)
        return scoring.predictions(self._inputs(self.get(name, version, alias), entity_df))

    def evaluate(self, name: str, entity_df: pd.DataFrame, version: str | int | None = None,
                 alias: str | None = None) -> scoring.Evaluation:
        """Metrics and plots of a version (default: the champion) on labelled entity rows."""
        scoring.check_rows(entity_df)
        found = self.get(name, version, alias)
        return scoring.evaluate(self._inputs(found, entity_df), name, found.version)

    def drift(self, name: str, current: pd.DataFrame, version: str | int | None = None, alias: str | None = None,
              psi_threshold: float = 0.2, p_threshold: float = 0.01, ks_threshold: float = 0.1) -> Any:
        """Drift of ``current`` rows (features, and ``prediction`` when present) from a version's training.

        Every column of the version's reference that ``current`` has is compared (PSI and KS; see
        :mod:`mlplat.monitoring.drift`); a :class:`~mlplat.monitoring.drift.DriftReport` comes back.
        """
        from mlplat.monitoring.drift import drift

        if not isinstance(current, pd.DataFrame):
            raise InvalidArgument(f"drift() compares a DataFrame of current rows, not {type(current).__name__}.")
        for threshold, value in (("psi_threshold", psi_threshold), ("p_threshold", p_threshold),
                                 ("ks_threshold", ks_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgument(f"{threshold}={value!r} must be a number.")
        found = self.get(name, version, alias)
        ref = self.reference(name, found.version)
        shared = [c for c in ref.columns if c in current.columns]
        if not shared:
            raise InvalidArgument(f"The rows share no column with {name} version {found.version}'s reference "
                                  f"({', '.join(ref.columns)}); pass its feature columns and/or 'prediction'.")
        return drift(ref, current, psi_threshold, p_threshold, ks_threshold, columns=shared)

    def reference(self, name: str, version: str | int | None = None, alias: str | None = None) -> Any:
        """The drift :class:`~mlplat.monitoring.drift.Reference` recorded when a version was trained."""
        import mlflow

        from mlplat.monitoring.drift import Reference

        found = self.get(name, version, alias)
        with self._client():
            try:
                return Reference.from_dict(mlflow.artifacts.load_dict(f"runs:/{found.run_id}/{REFERENCE_ARTIFACT}"))
            except Exception:  # MLflow raises several kinds for a missing artifact
                raise ModelNotFound(f"{name} version {found.version} has no drift reference (trained before "
                                    "mlplat recorded one); retrain it to monitor drift.") from None

    def history(self, name: str | None = None) -> AuditTrail:
        """The audit trail of models and their deployments (of ``name``, when given): who did what, when and why."""
        return self.audit.entries(kind=("model", "deployment"), obj=name)

    # -- the shared holdout --------------------------------------------------------
    def _shared_holdout(self, name: str, challenger: str, champion: str, metric: str) -> tuple[float, float]:
        spec, entity_df = load_spec(self.settings, self.get(name, challenger).run_id)
        frame_times = entity_df.reset_index(drop=True)
        _, test = split_rows(frame_times, Split(**spec.split), spec.timestamp_field, spec.seed)
        holdout = frame_times.iloc[test]
        return self._score(name, challenger, holdout, metric), self._score(name, champion, holdout, metric)

    def _score(self, name: str, version: str, holdout: pd.DataFrame, metric: str) -> float:
        found = self._inputs(self.get(name, version), holdout)
        return score(found.model, found.X, found.frame[found.spec.target], found.spec.kind)[metric]

    def _inputs(self, found: ModelVersion, entity_df: pd.DataFrame) -> scoring.Inputs:
        return scoring.inputs(self.settings, self.features, found.name, found.version, found.run_id, entity_df)


def _default_metric(metrics: dict[str, float]) -> str:
    return "roc_auc" if "roc_auc" in metrics else "rmse"


def _improvement(metric: str, challenger: float, champion: float) -> float:
    return champion - challenger if metric in LOWER_IS_BETTER else challenger - champion


def _call(settings, method, *args):
    try:
        return method(*args)
    except Exception as exc:  # an unreachable store surfaces as many exception types
        raise tracking.unavailable(settings, exc) from None
