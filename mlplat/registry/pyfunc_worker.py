"""The worker that runs a pyfunc-fallback model: loads an MLflow model and answers batches of rows.

Started by the Triton python model (:mod:`mlplat.serving.backend.pyfunc`) with the platform's own interpreter
(``python -m mlplat.registry.pyfunc_worker <model folder> <kind>``), because Triton's environment cannot import
MLflow or the model's libraries; and by the registry (:class:`WorkerPredictor`) to score such a version
(promotion's shared holdout, ``p.models.score``). Loading a pyfunc runs its author's code: it happens here, in
this process of its own, never in the platform's or Triton's. Frames on stdin/stdout are an 8-byte little-endian length and an
``.npy`` array: float32 rows in; float32 outputs (one column per class, or one value) out, or a 0-d string array
saying what failed. The first frame out is the worker's pid, once the model is loaded.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import weakref
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def read_frame(stream: BinaryIO) -> np.ndarray | None:
    """The next array on ``stream``; None at its end."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return np.load(io.BytesIO(body), allow_pickle=False)


def write_frame(stream: BinaryIO, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    stream.write(struct.pack("<Q", buffer.tell()) + buffer.getvalue())
    stream.flush()


def outputs(model: Any, rows: np.ndarray, kind: str, columns: list[str] | None) -> np.ndarray:
    """What the model serves for ``rows``: class probabilities (a classifier), or one value per row.

    A model whose signature names its columns gets a DataFrame (float64); one taking a tensor (PyTorch) the rows."""
    import pandas as pd

    frame = rows if columns is None else pd.DataFrame(rows.astype(np.float64), columns=columns)
    result = np.asarray(model.predict(frame), dtype=np.float32)
    if kind == "classifier" and result.ndim == 1:  # a pyfunc returning labels: ask its model for probabilities
        result = np.asarray(model.get_raw_model().predict_proba(frame), dtype=np.float32)
    return np.ascontiguousarray(result.reshape(len(rows), -1))


class WorkerPredictor:
    """A pyfunc-fallback version with scikit-learn's ``predict``/``predict_proba``, run by a worker of its own."""

    def __init__(self, folder: Path, kind: str, classes: list[Any] | None):
        import subprocess

        self.kind = kind
        self.classes_ = None if classes is None else np.asarray(classes)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.worker = subprocess.Popen([sys.executable, "-m", __spec__.name, str(folder), kind],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        if read_frame(self.worker.stdout) is None:  # its pid, once the model is loaded
            self.close()
            raise RuntimeError(f"the pyfunc worker stopped while loading the model (exit status "
                               f"{self.worker.returncode}; its standard error says why)")
        weakref.finalize(self, _stop, self.worker)

    def _outputs(self, X: Any) -> np.ndarray:
        write_frame(self.worker.stdin, np.ascontiguousarray(np.asarray(X, dtype=np.float32)))
        result = read_frame(self.worker.stdout)
        if result is None or result.dtype.kind == "U":
            raise RuntimeError(f"the pyfunc worker failed: {'it stopped' if result is None else result}")
        return result.astype(np.float64)

    def predict_proba(self, X: Any) -> np.ndarray:
        return self._outputs(X)

    def predict(self, X: Any) -> np.ndarray:
        if self.kind == "classifier":
            return self.classes_[self._outputs(X).argmax(axis=1)]
        return self._outputs(X).reshape(len(X))

    def close(self) -> None:
        _stop(self.worker)


def _stop(worker: Any) -> None:
    if worker.poll() is None:
        worker.stdin.close()
        try:
            worker.wait(timeout=5)
        except Exception:  # subprocess.TimeoutExpired: it is killed
            worker.kill()
            worker.wait()


def main(argv: list[str]) -> int:
    folder, kind = argv[1], argv[2]
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the model prints goes to the log, not into the answers
    import mlflow

    model = mlflow.pyfunc.load_model(folder)
    schema = model.metadata.get_input_schema()
    columns = schema.input_names() if schema is not None and schema.has_input_names() else None
    write_frame(out, np.array(os.getpid(), dtype=np.int64))
    while (rows := read_frame(sys.stdin.buffer)) is not None:
        try:
            result = outputs(model, rows, kind, columns)
        except Exception as exc:  # the model's own failure goes back to the caller of this request
            result = np.array(f"{type(exc).__name__}: {exc}")
        write_frame(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
