"""An ONNX export made where the model was trained, logged beside it, and read back without the native model.

``p.models.log`` (and ``p.train`` for PyTorch models) export the model in the caller's own process, check the
export against the native model on sample rows there, and log ``mlplat/model.onnx`` with ``mlplat/onnx.json``:
the output name, width, class labels, the sample rows and the native model's outputs on them. The registry pins
both files by digest (:data:`DIGEST_TAG` on the version); deploy and scoring use the export, never the native
model, and check it again against the recorded outputs. A model that ONNX cannot express is logged without an
export and served through its MLflow pyfunc instead (:data:`RUNTIME_TAG` says which: :data:`ONNX` or
:data:`PYFUNC`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlplat.config import Settings
from mlplat.errors import ArtifactIntegrityError, OnnxExportError

ONNX_ARTIFACT = "mlplat/model.onnx"
INFO_ARTIFACT = "mlplat/onnx.json"
DIGEST_TAG = "mlplat.onnx_sha256"  # on the version: sha256 of the export and its description
RUNTIME_TAG = "mlplat.runtime"  # on the run and the version: how it is served
ONNX, PYFUNC = "onnx", "pyfunc"
INPUT = "input"  # the float32 tensor every export takes its numbers in (mlplat.serving.onnx_export too)
SAMPLE_ROWS = 64


@dataclass(frozen=True)
class LoggedOnnx:
    """A logged export with what serving needs to know about it."""

    data: bytes | None  # None: ONNX cannot express the model, which is served through its pyfunc
    output: str  # "probabilities" for classifiers, "variable" for regressors
    n_features: int
    width: int
    kind: str
    classes: list[Any] | None
    rows: np.ndarray  # float32 sample rows ...
    native: np.ndarray  # ... and the native model's outputs on them, as computed where it was trained

    @property
    def info(self) -> dict[str, Any]:
        return {"output": self.output, "n_features": self.n_features, "width": self.width, "kind": self.kind,
                "classes": self.classes, "rows": self.rows.tolist(), "native": self.native.tolist()}


def outputs(data: bytes, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The export's ``output`` for the input tensors ``feeds`` (in-process onnxruntime)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run([output], feeds)[0]


def run(data: bytes, output: str, rows: Any) -> np.ndarray:
    """The export's output for ``rows`` (float32 in as Triton sends them)."""
    return outputs(data, output, {INPUT: np.ascontiguousarray(rows, dtype=np.float32)})


def difference(exported: np.ndarray, native: Any) -> float:
    """Largest difference between an export's outputs and the native model's (as many rows, same shape)."""
    return float(np.nanmax(np.abs(exported.astype(np.float64) - native))) if len(native) else 0.0


def parity(data: bytes, output: str, rows: np.ndarray, native: np.ndarray, tolerance: float, what: str) -> float:
    """Largest difference between the export and ``native`` outputs on ``rows``; OnnxExportError above
    ``tolerance``."""
    native = np.asarray(native, dtype=np.float64)
    worst = difference(run(data, output, rows).reshape(native.shape), native)
    if not worst <= tolerance:
        raise OnnxExportError(f"The ONNX export of {what} differs from the native model by up to {worst:.3g} "
                              f"(allowed {tolerance:g}) on {len(rows)} sample rows.")
    return worst


def log(logged: LoggedOnnx) -> None:
    """Log the export and its description to the active MLflow run."""
    import mlflow

    if logged.data is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(ONNX_ARTIFACT).name
            path.write_bytes(logged.data)
            mlflow.log_artifact(str(path), str(Path(ONNX_ARTIFACT).parent))
    mlflow.log_dict(logged.info, INFO_ARTIFACT)


def digest(data: bytes | None, info: bytes) -> str:
    """What :data:`DIGEST_TAG` holds: the sha256 of the files' sha256s (the description alone without export)."""
    lines = "" if data is None else f"{hashlib.sha256(data).hexdigest()}  {ONNX_ARTIFACT}\n"
    return hashlib.sha256(f"{lines}{hashlib.sha256(info).hexdigest()}  {INFO_ARTIFACT}\n".encode()).hexdigest()


def _files(settings: Settings, run_id: str) -> tuple[bytes | None, bytes] | None:
    """``(export or None, description)`` as the run logged them; None when it logged no description."""
    import mlflow

    from mlplat.registry.tracking import session

    found = []
    with session(settings), tempfile.TemporaryDirectory() as folder:
        for name in (INFO_ARTIFACT, ONNX_ARTIFACT):
            try:
                path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{name}", dst_path=folder)
            except Exception:  # MLflow raises several kinds for a missing artifact
                found.append(None)
                continue
            found.append(Path(path).read_bytes())
    return None if found[0] is None else (found[1], found[0])


def pin(settings: Settings, run_id: str) -> dict[str, str]:
    """The version tags that pin run ``run_id``'s export (none when it logged none)."""
    found = _files(settings, run_id)
    return {DIGEST_TAG: digest(*found)} if found else {}


def load(settings: Settings, run_id: str, tags: dict[str, str], what: str) -> LoggedOnnx | None:
    """The export a version's run logged, checked against the version's pin; None for a version without one."""
    pinned = tags.get(DIGEST_TAG)
    if not pinned:
        return None
    found = _files(settings, run_id)
    if found is None or digest(*found) != pinned:
        raise ArtifactIntegrityError(f"{what}: its ONNX export ({ONNX_ARTIFACT}, {INFO_ARTIFACT}) is "
                                     f"{'missing' if found is None else 'changed'} since it was registered. Do not "
                                     "serve it: log the model again (p.models.log), or ask an admin to check it.")
    info = json.loads(found[1])
    return LoggedOnnx(found[0], info["output"], int(info["n_features"]), int(info["width"]), info["kind"],
                      info["classes"], np.asarray(info["rows"], dtype=np.float32),
                      np.asarray(info["native"], dtype=np.float64))


class OnnxPredictor:
    """A version's logged export, used where the registry scores it (promotion, ``p.models.score``): the native
    model of a PyTorch or bring-your-own version is never loaded by the platform."""

    def __init__(self, logged: LoggedOnnx):
        self.logged = logged
        self.classes_ = np.asarray(logged.classes) if logged.classes is not None else None

    def _run(self, X: Any) -> np.ndarray:
        return run(self.logged.data, self.logged.output, np.asarray(X, dtype=np.float32)).astype(np.float64)

    def predict_proba(self, X: Any) -> np.ndarray:
        return self._run(X).reshape(len(X), -1)

    def predict(self, X: Any) -> np.ndarray:
        if self.logged.kind == "classifier":
            return self.classes_[self.predict_proba(X).argmax(axis=1)]
        return self._run(X).reshape(len(X))
