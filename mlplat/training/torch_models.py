"""PyTorch models on platform features: fit (skorch), predict, export to ONNX and log where the model lives.

A :class:`TorchModel` is what the platform handles: the fitted ``torch.nn.Module``, the function that turns its
outputs into what is served (softmax for a classifier that returns logits, nothing otherwise), its kind and its
class labels. :func:`logged_export` exports it with ``torch.onnx`` in the caller's own process and checks the
export there against the module on sample rows; the registry pins that export and serving uses it, so nobody
else ever unpickles the module (:mod:`mlplat.registry.logged_onnx`).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd

from mlplat.errors import InvalidArgument, MissingDependency, OnnxExportError, TrainingError
from mlplat.registry.logged_onnx import INPUT, SAMPLE_ROWS, LoggedOnnx, parity
from mlplat.training.fingerprint import requirements

OUTPUTS = {"classifier": "probabilities", "regressor": "variable"}


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependency("PyTorch models need torch: pip install 'mlplat[torch]'.") from None
    return torch


def is_module(model: Any) -> bool:
    """Whether ``model`` is a ``torch.nn.Module`` (without importing torch when it was never imported)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def is_net(model: Any) -> bool:
    """Whether ``model`` is a fitted skorch net (a module inside a scikit-learn estimator)."""
    return type(model).__module__.split(".")[0] == "skorch" and is_module(getattr(model, "module_", None))


class TorchModel:
    """A fitted module with scikit-learn's ``predict``/``predict_proba`` on feature rows (float32 in)."""

    def __init__(self, module: Any, kind: str, classes: Any = None, nonlinearity: Any = None):
        self.module = module.eval()
        self.kind = kind
        self.classes_ = None if classes is None else np.asarray(classes)
        self.nonlinearity = nonlinearity

    def serving_module(self) -> Any:
        """The module and its output function as one module: what is exported and logged."""
        _torch()
        from mlplat.training.torch_served import Served

        return Served(self.module, self.nonlinearity).eval()

    def _outputs(self, X: Any) -> np.ndarray:
        torch = _torch()
        with torch.no_grad():
            out = self.serving_module()(torch.as_tensor(np.asarray(X, dtype=np.float32)))
        return out.detach().cpu().numpy().astype(np.float64)

    def predict_proba(self, X: Any) -> np.ndarray:
        return self._outputs(X).reshape(len(X), -1)

    def predict(self, X: Any) -> np.ndarray:
        if self.kind == "classifier":
            return self.classes_[self.predict_proba(X).argmax(axis=1)]
        return self._outputs(X).reshape(len(X))


def from_module(module: Any, kind: str | None, X: pd.DataFrame, y: pd.Series) -> TorchModel:
    """A module trained by its user: a classifier (``kind`` None and more than one output) gets softmax applied
    unless its outputs already are probabilities; its classes are the target's values, sorted."""
    torch = _torch()
    if any(p.device.type != "cpu" for p in module.parameters()):  # trained on a GPU: a CPU copy is logged
        module = copy.deepcopy(module).cpu()
    try:
        with torch.no_grad():
            out = module.eval()(torch.as_tensor(np.asarray(X.head(SAMPLE_ROWS), dtype=np.float32)))
    except Exception as exc:  # a module raises whatever its forward raises
        raise InvalidArgument(f"{type(module).__name__} cannot take the {X.shape[1]} feature columns "
                              f"{list(X.columns)} as a float32 tensor ({type(exc).__name__}: {exc}).") from None
    width = out.shape[1] if out.ndim == 2 else 1
    kind = kind or ("classifier" if width > 1 else "regressor")
    if kind == "regressor":
        return TorchModel(module, kind)
    classes = np.unique(y.to_numpy())
    if len(classes) != width:
        raise InvalidArgument(f"{type(module).__name__} returns {width} outputs per row, but the target has "
                              f"{len(classes)} classes ({list(classes)[:10]}); a classifier returns one per class.")
    values = out.detach().numpy()
    probabilities = bool(np.all(values >= 0) and np.allclose(values.sum(axis=1), 1, atol=1e-5))
    return TorchModel(module, kind, classes, None if probabilities else _softmax())


def from_net(net: Any, kind: str | None) -> TorchModel:
    """A skorch net its user fitted: its module and skorch's own output function (softmax for CrossEntropyLoss)."""
    from sklearn.base import ClassifierMixin

    kind = kind or ("classifier" if isinstance(net, ClassifierMixin) else "regressor")
    classes = getattr(net, "classes_", None) if kind == "classifier" else None
    if kind == "classifier" and classes is None:
        raise InvalidArgument(f"{type(net).__name__} has no classes_: is it fitted?")
    return TorchModel(net.module_, kind, classes, net._get_predict_nonlinearity())


def _softmax():
    from functools import partial

    return partial(_torch().softmax, dim=-1)


def fit(net: Any, X: pd.DataFrame, y: pd.Series, kind: str, seed: int) -> TorchModel:
    """Fit a skorch net on feature rows (float32) and the target (class codes for a classifier)."""
    torch = _torch()
    torch.manual_seed(seed)
    rows = np.asarray(X, dtype=np.float32)
    if kind == "classifier":
        classes, codes = np.unique(y.to_numpy(), return_inverse=True)
        net.fit(rows, codes.astype(np.int64))
        return TorchModel(net.module_, kind, classes, net._get_predict_nonlinearity())
    net.fit(rows, np.asarray(y, dtype=np.float32).reshape(-1, 1))
    return TorchModel(net.module_, kind, None, net._get_predict_nonlinearity())


def export(model: TorchModel, n_features: int) -> bytes:
    """ONNX bytes of the served module, taking float32 rows (any number of them) as ``input``."""
    torch = _torch()
    try:
        program = torch.onnx.export(model.serving_module(), (torch.zeros(2, n_features, dtype=torch.float32),),
                                    dynamo=True, input_names=[INPUT], output_names=[OUTPUTS[model.kind]],
                                    dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), verbose=False)
        return program.model_proto.SerializeToString()
    except Exception as exc:  # the exporter raises many kinds for what it cannot trace
        raise OnnxExportError(f"torch.onnx cannot export {type(model.module).__name__} "
                              f"({type(exc).__name__}: {exc}).") from None


def logged_export(model: TorchModel, X: pd.DataFrame, tolerance: float = 1e-4) -> LoggedOnnx:
    """The module's export with sample rows and the module's outputs on them, checked to agree."""
    found = _described(model, X, export(model, X.shape[1]))
    what = type(model.module).__name__
    parity(found.data, found.output, found.rows, found.native, tolerance, what)
    parity(found.data, found.output, found.rows[:1], found.native[:1], tolerance, what)  # batch 1
    return found


def export_or_describe(model: TorchModel, X: pd.DataFrame, tolerance: float = 1e-4) -> tuple[LoggedOnnx, str | None]:
    """:func:`logged_export`; for a module ``torch.onnx`` cannot export (or whose export disagrees with it), the
    description alone (no ``data``: it is served by its pyfunc) and why."""
    try:
        return logged_export(model, X, tolerance), None
    except OnnxExportError as exc:
        return _described(model, X, None), str(exc)


def _described(model: TorchModel, X: pd.DataFrame, data: bytes | None) -> LoggedOnnx:
    """The export ``data`` (None: none) with its sample rows of ``X`` and the module's outputs on them."""
    rows = np.asarray(X.head(SAMPLE_ROWS), dtype=np.float32)
    native = model.predict_proba(rows) if model.kind == "classifier" else model.predict(rows).reshape(-1, 1)
    classes = None if model.classes_ is None else model.classes_.tolist()
    return LoggedOnnx(data, OUTPUTS[model.kind], X.shape[1], native.shape[1], model.kind, classes, rows, native)


def log_model(model: TorchModel, X_sample: pd.DataFrame, output: Any) -> Any:
    """Log the served module with MLflow's PyTorch flavour (its pyfunc returns what is served: probabilities for
    a classifier). Recorded for lineage and for the pyfunc fallback; mlplat serves the logged ONNX export.

    MLflow saves it as a traced program (``pt2``: no pickle, no need of the module's class to load); a module that
    cannot be traced is pickled instead, with the file defining its class beside it, so the fallback's worker can
    import it."""
    import inspect

    import mlflow
    from mlflow.models import infer_signature

    X_sample = X_sample.astype("float32")
    common = {"name": "model", "pip_requirements": [*requirements("torch"), *requirements("numpy")],
              "signature": infer_signature(X_sample.to_numpy(), np.asarray(output, dtype=np.float32)),
              "input_example": X_sample.to_numpy()[:3]}
    try:
        return mlflow.pytorch.log_model(model.serving_module(), **common)
    except Exception as exc:  # torch.export refuses data-dependent control flow and more
        traced = exc
    cls = type(model.module)
    if cls.__module__ == "__main__":
        raise TrainingError(f"{cls.__name__} cannot be traced ({type(traced).__name__}: {str(traced)[:300]}), and its "
                            "class is defined in the notebook, where no other process can import it to serve it. "
                            "Move the class into a .py file beside the notebook and import it from there.") from None
    try:
        return mlflow.pytorch.log_model(model.serving_module(), serialization_format="pickle",
                                        code_paths=[inspect.getfile(cls)], **common)
    except Exception as exc:  # pickling a module defined in odd places fails in many ways
        raise TrainingError(f"MLflow could not save {cls.__name__} ({type(exc).__name__}: {exc}); define the "
                            "module's class in an importable .py file.") from None
