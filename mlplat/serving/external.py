"""A Triton the platform did not start, given by URL (``triton_url: grpc://host:8001``).

The platform never starts, stops or restarts it. Models reach it one of two ways:

- ``triton_repository`` names a model repository that Triton serves too (a shared folder): deploy writes
  there and asks Triton to load the model by name;
- otherwise each model is sent over Triton's model-repository gRPC API (``load_model`` with its config and
  files, which explicit model control accepts), and ``$MLPLAT_HOME/triton/external`` keeps this platform's
  record of what it deployed.

When that Triton restricts model control (``--grpc-restricted-protocol=model-repository:mlplat-triton-control=
<secret>``), ``triton_control_secret`` holds the secret, sent with every model-control call.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlplat.config import Settings
from mlplat.errors import ServingError
from mlplat.serving.target import GRPC_CONTROL_HEADER, SERVING_INFO, Endpoints, ServingTarget, answers

CONFIG = "config.pbtxt"


class ExternalTriton(ServingTarget):
    """The serving target of a Triton at ``settings.triton_url`` (with explicit model control)."""

    def __init__(self, settings: Settings):
        self.url = settings.triton_url
        self.endpoints = Endpoints(_host_port(settings.triton_url), _host_port(settings.triton_http_url),
                                   settings.triton_metrics_url)
        self.shared = bool(settings.triton_repository)
        self.models = Path(settings.triton_repository) if self.shared else settings.home / "triton" / "external"
        self._secret = settings.triton_control_secret

    def ensure(self, patience: float | None = None) -> Endpoints:
        deadline = time.monotonic() + (patience or 0.0)
        while not answers(self.endpoints.grpc):
            if time.monotonic() >= deadline:
                raise ServingError(f"The Triton at triton_url={self.url!r} does not answer. Start it (or wait for it "
                                   "to be ready), or point triton_url at one that runs.")
            time.sleep(0.2)
        return self.endpoints

    def where(self) -> Endpoints:
        return self.endpoints

    def recover(self, late: bool) -> bool:
        """Send a request that found the server gone once more, on a new connection; one that was late is not
        sent again: this Triton is not the platform's to restart."""
        return not late

    def control_headers(self) -> dict[str, str]:
        return {GRPC_CONTROL_HEADER: self._secret} if self._secret else {}

    def load_arguments(self, name: str) -> dict[str, Any]:
        """The model's config (as JSON) and files, sent with ``load_model`` unless Triton reads a shared folder."""
        return {} if self.shared else model_upload(self.models / name)


def model_upload(folder: Path) -> dict[str, Any]:
    """``load_model`` arguments that carry the model in ``folder``: its config as JSON and every version's files."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((folder / CONFIG).read_text(), model_config_pb2.ModelConfig())
    files = {f"file:{path.relative_to(folder).as_posix()}": path.read_bytes()
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name not in (CONFIG, SERVING_INFO)}
    return {"config": json_format.MessageToJson(config, preserving_proto_field_name=True), "files": files}


def _host_port(url: str) -> str:
    """``grpc://host:8001`` -> ``host:8001`` (what Triton's clients take); empty for an empty URL."""
    return urlsplit(url).netloc if url else ""
