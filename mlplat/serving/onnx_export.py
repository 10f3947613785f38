"""Export a trained model to ONNX and prove the export predicts what the model predicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlplat.errors import MissingDependency, OnnxExportError

INPUT = "input"


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX export: its bytes, the tensor names Triton uses, and its width."""

    data: bytes
    output: str  # "probabilities" for classifiers, "variable" for regressors
    n_features: int


def export(model: Any, family: str, kind: str, n_features: int) -> OnnxModel:
    """ONNX bytes for a scikit-learn, XGBoost or LightGBM model taking float32 rows."""
    try:
        import onnxmltools
        import skl2onnx
        from onnxmltools.convert.common.data_types import FloatTensorType as BoosterFloats
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError:
        raise MissingDependency("Deploying needs skl2onnx and onnxmltools: pip install 'mlplat[serving]'.") from None
    try:
        if family == "xgboost":
            model.get_booster().feature_names = None  # the converter wants f0, f1, ...; inputs are positional
            proto = onnxmltools.convert_xgboost(model, initial_types=[(INPUT, BoosterFloats([None, n_features]))])
        elif family == "lightgbm":
            proto = onnxmltools.convert_lightgbm(model, initial_types=[(INPUT, BoosterFloats([None, n_features]))],
                                                 zipmap=False)
        else:
            options = {id(model): {"zipmap": False}} if kind == "classifier" else None
            proto = skl2onnx.convert_sklearn(model, initial_types=[(INPUT, FloatTensorType([None, n_features]))],
                                             options=options)
    except Exception as exc:  # converters raise many kinds for models they cannot express
        raise OnnxExportError(
            f"{type(model).__name__} cannot be expressed in ONNX ({type(exc).__name__}: {exc}). "
            "Use a model type skl2onnx/onnxmltools support (trees, linear models, XGBoost, LightGBM)."
        ) from None
    outputs = [o.name for o in proto.graph.output]
    output = "probabilities" if kind == "classifier" else outputs[0]
    if output not in outputs:
        raise OnnxExportError(f"The ONNX export of {type(model).__name__} has outputs {outputs}, not {output!r}.")
    return OnnxModel(proto.SerializeToString(), output, n_features)


def run(onnx: OnnxModel, rows: np.ndarray) -> np.ndarray:
    """The export's output for ``rows`` (in-process onnxruntime)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx.data, providers=["CPUExecutionProvider"])
    return session.run([onnx.output], {INPUT: np.ascontiguousarray(rows, dtype=np.float32)})[0]


def check_parity(onnx: OnnxModel, model: Any, kind: str, rows: Any, tolerance: float = 1e-4) -> float:
    """Largest difference between the export and the native model on ``rows``; refuse above ``tolerance``.

    ``rows`` go to the native model as given (a DataFrame keeps its feature names)
    and to the export as float32, as Triton receives them.
    """
    native = model.predict_proba(rows) if kind == "classifier" else model.predict(rows)
    exported = run(onnx, np.asarray(rows, dtype=np.float32)).reshape(np.shape(native))
    worst = float(np.nanmax(np.abs(exported.astype(np.float64) - native))) if len(rows) else 0.0
    if not worst <= tolerance:
        raise OnnxExportError(
            f"The ONNX export differs from the model by up to {worst:.3g} (allowed {tolerance:g}) on "
            f"{len(rows)} sample rows; refusing to deploy. Missing values are the usual cause (ONNX tree "
            "ensembles send NaN down a fixed branch): impute them in the features, or use XGBoost/LightGBM."
        )
    return worst
