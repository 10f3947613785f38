"""Every error a user of mlplat can see.

Each message says what was wrong and what to do about it. Catch ``MlplatError``
to handle them all; adapters (magics, CLI, REST) turn it into one readable line.
"""

from __future__ import annotations


class MlplatError(Exception):
    """Base class of every user-facing mlplat error."""


def one_line(exc: BaseException) -> str:
    """``RuntimeError: source outage``: the first line of any error, for a status, a log line or a dead letter;
    mlplat's own messages say enough without their class."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, MlplatError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class InvalidArgument(MlplatError):
    """An argument has the wrong type or an impossible value."""


class ConfigError(MlplatError):
    """A setting is missing, mistyped or malformed."""


class MissingDependency(MlplatError):
    """An optional package is needed; the message names the extra to install."""


class ServiceError(MlplatError):
    """An embedded service could not be started, reached or stopped."""


class ServiceBinaryNotFound(ServiceError):
    """The executable of an embedded service is not installed."""


class OnlineStoreUnavailable(ServiceError):
    """The online store (Redis) cannot be reached."""


class DefinitionError(MlplatError):
    """An Entity, Field or FeatureView definition is invalid."""


class BrokenDefinition(DefinitionError):
    """A registered view cannot be used: its stored definition cannot be read, or its function cannot be loaded.

    Only that view is affected (listing, searching and every other view go on working); applying a fixed
    definition of it repairs it.
    """


class RegistryError(MlplatError):
    """The feature registry refused an operation."""


class SchemaOutdated(MlplatError):
    """The metadata database's schema is older than this mlplat's: back it up, then run ``mlplat db upgrade``."""


class SchemaTooNew(MlplatError):
    """The metadata database's schema is newer than this mlplat knows: upgrade mlplat."""


class FeatureViewNotFound(RegistryError):
    """A feature view name is not registered."""


class FeatureNotFound(RegistryError):
    """A ``view:feature`` reference names no feature of that view."""


class SchemaError(MlplatError):
    """Data does not match a feature view's schema."""


class MissingColumnError(SchemaError):
    """A required column (entity key, timestamp, feature) is absent."""


class DtypeMismatch(SchemaError):
    """A column's dtype cannot be stored as the declared feature type."""


class FutureEventError(SchemaError):
    """Rows are dated later than now plus the allowed clock skew (the ``max_clock_skew`` setting)."""


class EntityKeyError(SchemaError):
    """An entity key is not a value of its join key's type (an int64 key given 1.5, NaN, "7" or None)."""


class EntityDataFrameError(MlplatError):
    """The entity DataFrame given to ``get_training_set`` is unusable."""


class TrainingError(MlplatError):
    """A training run cannot go on: bad target, bad split, a failed fit."""


class GateFailed(TrainingError):
    """A model did not pass its validation gate (raised by ``TrainResult.check()``)."""


class TrackingUnavailable(ServiceError):
    """The MLflow tracking store cannot be reached."""


class ModelNotFound(MlplatError):
    """A registered model, version or alias does not exist."""


class ArtifactIntegrityError(MlplatError):
    """A model version's files do not match the digest pinned when it was registered, it has no pin, or its
    files would load through pickle: nothing of it was deserialised."""


class PromotionRefused(MlplatError):
    """A promotion gate refused a model version."""


class OnnxExportError(MlplatError):
    """A model cannot be exported to ONNX, or its export does not predict what the model does."""


class ServingError(MlplatError):
    """Triton refused a deployment or a request."""


class MissingFeatures(ServingError):
    """A model deployed with ``missing="error"`` was asked to predict rows that lack feature values.

    ``missing`` maps each such row (its position in the request) to the features it lacks.
    """

    def __init__(self, message: str, missing: dict[int, list[str]] | None = None):
        super().__init__(message)
        self.missing = dict(missing or {})


class JobError(MlplatError):
    """A notebook job cannot run: missing notebook, undeclared parameter, unknown kernel, bad schedule."""


class ScheduleNotFound(JobError):
    """No notebook schedule has that id."""


class JobFailed(MlplatError):
    """A notebook job ran and failed (a cell raised, the kernel died or did not start); the message says where.

    ``job_id`` is the failed run's id in ``p.jobs.history()``.
    """

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__(message)
        self.job_id = job_id


class HubError(ServiceError):
    """The workspace hub (JupyterHub) could not be configured, started or reached."""


class DataQualityError(MlplatError):
    """Rows break a feature view's expectations; ``report`` (a QualityReport) says which rows and why."""

    def __init__(self, message: str, report: object = None):
        super().__init__(message)
        self.report = report


class TransformationError(MlplatError):
    """A batch feature view's computation failed: its transformation raised, or returned rows that do not fit
    the view (missing or extra columns, wrong dtypes, event times outside the partition).

    ``failed`` maps each failed partition (``"2024-01-03"``) to why; the partitions that succeeded stay stored,
    and computing the same range again resumes with the failed ones.
    """

    def __init__(self, message: str, failed: dict[str, str] | None = None):
        super().__init__(message)
        self.failed = dict(failed or {})


class OnDemandFeatureError(MlplatError):
    """An on-demand view's function failed at read time: it raised, or returned the wrong columns, row count or
    dtypes. The message names the view and function, what was expected and what came back."""


class StreamError(MlplatError):
    """A stream feature view cannot be fed or read: not a stream view, a bad event batch, a consumer conflict."""


class NotAuthenticated(MlplatError):
    """The platform server did not accept the caller's credentials (no token, a wrong or an expired one)."""


class PermissionDenied(MlplatError):
    """The caller may not do that: the message names the action, the object, its team and the role needed.

    ``action``, ``kind``, ``obj``, ``team`` and ``role`` say the same as fields (the REST API answers 403).
    """

    def __init__(self, message: str, action: str = "", kind: str = "", obj: str = "", team: str = "",
                 role: str = ""):
        super().__init__(message)
        self.action, self.kind, self.obj, self.team, self.role = action, kind, obj, team, role


class ServerUnavailable(ServiceError):
    """The platform server (``mlplat server``) cannot be reached or answered something that is not its protocol."""
