"""Where deployed models are served: a Triton, reached over gRPC, that the platform runs or one it was given.

Deploy writes each model into the target's ``models`` folder, a standard Triton model repository
(``<name>/config.pbtxt``, ``<name>/<version>/model.onnx``, and ``<name>/mlplat.json``: what predict needs),
then asks the target's Triton to load it by name (explicit model control). Two targets implement
:class:`ServingTarget`: the embedded Triton (:class:`mlplat.serving.triton.EmbeddedTriton`, which serves that
folder itself) and a Triton given by URL (:class:`mlplat.serving.external.ExternalTriton`).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlplat.errors import ServingError
from mlplat.registry.names import check_model_name

SERVING_INFO = "mlplat.json"  # what predict needs: the pinned features, in column order
# The header that Triton's model-repository API (load, unload, repository index) requires; its value is a secret
# only the platform holds. Inference, health, metadata and statistics stay open to any client.
# A Triton started with ``--grpc-restricted-protocol=model-repository:mlplat-triton-control=<secret>`` (and
# ``--http-restricted-api=...`` alike) expects it over HTTP as is and over gRPC with Triton's prefix.
CONTROL_HEADER = "mlplat-triton-control"
GRPC_CONTROL_HEADER = f"triton-grpc-protocol-{CONTROL_HEADER}"
BY_ID = "_by_id"  # suffix of the model that reads its features from Redis inside Triton


@dataclass(frozen=True)
class Endpoints:
    """Where a Triton listens."""

    grpc: str  # host:port of its gRPC API
    http: str = ""  # host:port of its HTTP (KServe v2) API; empty when not known
    metrics: str = ""  # URL of its Prometheus metrics; empty when not known


class ServingTarget(abc.ABC):
    """A Triton that deployed models are loaded into, with the model repository that records them."""

    models: Path  # the model repository deploy writes into; what is deployed is read from here
    # The python file this Triton's ``onnxruntime`` backend runs, where it is mlplat's (the embedded Triton):
    # ``<model>_by_id`` then loads it and runs an ONNX model in its own process, a hop shorter. None where the
    # backend is Triton's native one (a GPU Triton): ``<model>_by_id`` calls the model through Triton.
    onnx_runner: Path | None = None

    @abc.abstractmethod
    def ensure(self, patience: float | None = None) -> Endpoints:
        """Where Triton serves, ready for requests: the embedded one is started, or repaired, first
        (``patience``: how long a server that stopped answering gets to recover); ServingError if none answers."""

    @abc.abstractmethod
    def where(self) -> Endpoints | None:
        """Where Triton serves, starting nothing; None when the embedded one is not running."""

    @abc.abstractmethod
    def recover(self, late: bool) -> bool:
        """After a request found Triton gone (``late``: past the request's deadline), bring it back if this
        target can; True when the request is worth sending again."""

    def session(self) -> TritonSession:
        """A connection to Triton for model control (``with target.session() as triton: triton.load(name)``)."""
        return TritonSession(self.ensure(), self.load_arguments, self.control_headers())

    def control_headers(self) -> dict[str, str]:
        """The gRPC headers that Triton's model control needs from the platform (none when it is not restricted)."""
        return {}

    def load_arguments(self, name: str) -> dict[str, Any]:
        """What Triton's ``load_model`` needs besides ``name`` (none: it reads the model from its repository)."""
        return {}

    def deployed(self) -> list[str]:
        """The names of the deployed models (their ``_by_id`` models aside)."""
        return deployed_in(self.models)

    def serving_info(self, name: str) -> dict[str, Any]:
        """What predict needs to know about a deployed model; ServingError if it is not deployed."""
        path = self.models / check_model_name(name) / SERVING_INFO
        if not path.is_file():
            raise ServingError(f"{name!r} is not deployed; deploy it first with p.deploy({name!r}).")
        return json.loads(path.read_text())


class TritonSession:
    """One gRPC connection to a target's Triton for a few model-control calls; closed on leaving ``with``."""

    def __init__(self, endpoints: Endpoints, load_arguments: Callable[[str], dict[str, Any]] = lambda name: {},
                 headers: dict[str, str] | None = None):
        import tritonclient.grpc as grpcclient

        self.endpoints = endpoints
        self._arguments = load_arguments
        self._headers = headers or None  # sent with every model-control call: Triton refuses them without
        self._client = grpcclient.InferenceServerClient(endpoints.grpc)

    def load(self, name: str) -> None:
        """Load (or reload) the model ``name``; ServingError, with Triton's reason, if it refuses."""
        _call(self._client.load_model, name, headers=self._headers, **self._arguments(name))

    def unload(self, name: str) -> None:
        _call(self._client.unload_model, name, headers=self._headers)

    def ready(self, name: str, version: str) -> bool:
        return bool(self._client.is_model_ready(name, version))

    def __enter__(self) -> TritonSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()


def answers(grpc: str, timeout: float = 1.0) -> bool:
    """True when the Triton at ``grpc`` (host:port) says it is ready within ``timeout`` seconds."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        client = grpcclient.InferenceServerClient(grpc)
        try:
            return bool(client.is_server_ready(client_timeout=timeout))
        finally:
            client.close()
    except InferenceServerException:
        return False


def deployed_in(models: Path) -> list[str]:
    """The models deployed in the repository ``models``."""
    return sorted(p.name for p in models.iterdir() if (p / SERVING_INFO).is_file()) if models.exists() else []


def load_deployed(triton: TritonSession, models: Path) -> dict[str, str]:
    """Load every model deployed in the repository ``models`` (a Triton starts empty in explicit mode); return
    those that failed and why. One that fails does not keep the others from loading."""
    failed = {}
    for name in deployed_in(models):
        for model in (name, f"{name}{BY_ID}"):  # the model first: its _by_id model calls it
            if model == name or (models / model).exists():
                try:
                    triton.load(model)
                except ServingError as exc:
                    failed[model] = str(exc)
                    break
    return failed


def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    from tritonclient.utils import InferenceServerException

    try:
        return method(*args, **kwargs)
    except InferenceServerException as exc:
        hint = (" (its model control is restricted to its secret: for an external Triton, set triton_control_secret; "
                "the embedded one's is run/triton.secret, and if that file was removed, `mlplat down` then "
                "`mlplat up` restart Triton with a new one)") if "restricted" in (exc.message() or "") else ""
        raise ServingError(f"Triton refused {method.__name__}: {exc.message()}{hint}") from None
