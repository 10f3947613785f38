"""Export a trained model to ONNX and prove the export predicts what the model predicts.

A model's feature columns reach it as at most two tensors: ``input`` (FP32, its numeric features) and
``input_text`` (STRING, its string features), each in the model's column order (:class:`Inputs`). An export
whose converter wants other inputs (skl2onnx wants one per column of a ``ColumnTransformer`` on strings;
XGBoost and LightGBM want category codes) gets a few nodes in front that take its columns from those two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlplat.errors import MissingDependency, OnnxExportError
from mlplat.registry.logged_onnx import INPUT, difference, outputs

TEXT_INPUT = "input_text"
_ML_DOMAIN = "ai.onnx.ml"
_CODES = "codes"


@dataclass(frozen=True)
class Inputs:
    """Which of a model's columns (by position) are numbers and which are strings."""

    numbers: list[int]
    texts: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, columns: list[str], texts: list[str] | tuple[str, ...] = ()) -> Inputs:
        return cls([i for i, c in enumerate(columns) if c not in texts], [i for i, c in enumerate(columns) if c in texts])

    @property
    def n_features(self) -> int:
        return len(self.numbers) + len(self.texts)

    def tensors(self) -> list[tuple[str, str, int]]:
        """(name, Triton data type, width) of each input tensor the model takes."""
        found = [(INPUT, "TYPE_FP32", len(self.numbers))] if self.numbers or not self.texts else []
        return found + ([(TEXT_INPUT, "TYPE_STRING", len(self.texts))] if self.texts else [])

    def feeds(self, rows: Any) -> dict[str, np.ndarray]:
        """The input tensors for ``rows`` (a DataFrame or an array of the model's columns, strings ``""`` or NaN
        where missing): float32 numbers and ``str`` objects, as onnxruntime takes them."""
        if not self.texts:
            return {INPUT: np.ascontiguousarray(np.asarray(rows, dtype=np.float32))}
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(np.asarray(rows, dtype=object))
        found = {}
        if self.numbers:
            found[INPUT] = np.ascontiguousarray(frame.iloc[:, self.numbers].to_numpy(np.float32, na_value=np.nan))
        if self.texts:
            texts = frame.iloc[:, self.texts].astype(object)
            found[TEXT_INPUT] = texts.where(texts.notna(), "").to_numpy(object).astype(str).astype(object)
        return found


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX export: its bytes, the tensor names Triton uses, and its inputs."""

    data: bytes
    output: str  # "probabilities" for classifiers, "variable" for regressors
    inputs: Inputs

    @property
    def n_features(self) -> int:
        return self.inputs.n_features


def export(model: Any, family: str, kind: str, columns: list[str], texts: list[str] | tuple[str, ...] = (),
           categories: dict[str, list[str]] | None = None) -> OnnxModel:
    """ONNX bytes for a scikit-learn, XGBoost or LightGBM model taking ``columns`` (``texts`` of them strings).

    XGBoost and LightGBM take their string features as codes of ``categories`` (see
    :func:`mlplat.registry.artifacts.model_inputs`): the export looks each string up, an unseen one being
    missing, as in training.
    """
    try:
        import onnxmltools
        import skl2onnx
        from onnxmltools.convert.common.data_types import FloatTensorType as BoosterFloats
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    except ImportError:
        raise MissingDependency("Deploying needs skl2onnx and onnxmltools: pip install 'mlplat[serving]'.") from None
    inputs = Inputs.of(columns, texts)
    width = len(columns)
    coded = (_CODES if texts else INPUT, BoosterFloats([None, width]))  # a booster's one input: codes for strings
    try:
        if family == "xgboost":
            model.get_booster().feature_names = None  # the converter wants f0, f1, ...; inputs are positional
            proto = onnxmltools.convert_xgboost(model, initial_types=[coded])
        elif family == "lightgbm":
            proto = onnxmltools.convert_lightgbm(model, initial_types=[coded], zipmap=False)
        else:
            options = {id(model): {"zipmap": False}} if kind == "classifier" else None
            types = ([(c, StringTensorType([None, 1]) if c in texts else FloatTensorType([None, 1])) for c in columns]
                     if texts else [(INPUT, FloatTensorType([None, width]))])
            proto = skl2onnx.convert_sklearn(model, initial_types=types, options=options)
        if texts:
            proto = (_per_column(proto, columns, inputs) if family not in ("xgboost", "lightgbm")
                     else _coded(proto, columns, inputs, categories or {}))
    except Exception as exc:  # converters raise many kinds for models they cannot express
        raise OnnxExportError(
            f"{type(model).__name__} cannot be expressed in ONNX ({type(exc).__name__}: {exc}). "
            "Use a model type skl2onnx/onnxmltools support (trees, linear models, XGBoost, LightGBM)."
        ) from None
    outputs = [o.name for o in proto.graph.output]
    output = "probabilities" if kind == "classifier" else outputs[0]
    if output not in outputs:
        raise OnnxExportError(f"The ONNX export of {type(model).__name__} has outputs {outputs}, not {output!r}.")
    return OnnxModel(proto.SerializeToString(), output, inputs)


def _column(nodes: list, source: str, position: int, name: str) -> None:
    """Nodes taking column ``position`` of ``source`` (rows x k) as ``name`` (rows x 1)."""
    from onnx import helper, numpy_helper

    index = f"{name}__at"
    nodes.append(helper.make_node("Constant", [], [index], value=numpy_helper.from_array(np.array([position]))))
    nodes.append(helper.make_node("Gather", [source, index], [name], axis=1))


def _fronted(proto: Any, replaced: list[str], nodes: list, inputs: Inputs) -> Any:
    """``proto`` with its inputs ``replaced`` by :class:`Inputs`' tensors, ``nodes`` computing them first."""
    from onnx import TensorProto, helper

    graph = proto.graph
    kept = [i for i in graph.input if i.name not in replaced]
    types = {"TYPE_FP32": TensorProto.FLOAT, "TYPE_STRING": TensorProto.STRING}
    new = [helper.make_tensor_value_info(name, types[kind], [None, width]) for name, kind, width in inputs.tensors()]
    del graph.input[:]
    graph.input.extend(new + kept)
    front = list(nodes) + list(graph.node)
    del graph.node[:]
    graph.node.extend(front)
    return proto


def _per_column(proto: Any, columns: list[str], inputs: Inputs) -> Any:
    """An export with one input per column (skl2onnx's, for a ColumnTransformer on strings) fed from the two."""
    nodes: list = []
    for k, position in enumerate(inputs.numbers):
        _column(nodes, INPUT, k, columns[position])
    for k, position in enumerate(inputs.texts):
        _column(nodes, TEXT_INPUT, k, columns[position])
    return _fronted(proto, list(columns), nodes, inputs)


def _coded(proto: Any, columns: list[str], inputs: Inputs, categories: dict[str, list[str]]) -> Any:
    """A booster's export (one float input of every column, strings as category codes) fed from the two: each
    string is looked up among its column's categories, an unseen one becoming NaN (missing)."""
    from onnx import helper

    nodes: list = []
    parts = {}
    for k, position in enumerate(inputs.numbers):
        parts[position] = f"{INPUT}__{k}"
        _column(nodes, INPUT, k, parts[position])
    for k, position in enumerate(inputs.texts):
        name = columns[position]
        _column(nodes, TEXT_INPUT, k, f"{TEXT_INPUT}__{k}")
        parts[position] = f"{TEXT_INPUT}__{k}__code"
        known = categories.get(name, [])
        nodes.append(helper.make_node("LabelEncoder", [f"{TEXT_INPUT}__{k}"], [parts[position]], domain=_ML_DOMAIN,
                                      keys_strings=known or [""], values_floats=[float(i) for i in range(len(known))]
                                      or [float("nan")], default_float=float("nan")))
    booster_input = proto.graph.input[0].name
    nodes.append(helper.make_node("Concat", [parts[p] for p in range(len(columns))], [booster_input], axis=1))
    for opset in proto.opset_import:
        if opset.domain == _ML_DOMAIN and opset.version < 2:
            opset.version = 2  # LabelEncoder with float values
    return _fronted(proto, [booster_input], nodes, inputs)


def run(onnx: OnnxModel, rows: Any) -> np.ndarray:
    """The export's output for ``rows`` (in-process onnxruntime)."""
    return outputs(onnx.data, onnx.output, onnx.inputs.feeds(rows))


def check_parity(onnx: OnnxModel, model: Any, kind: str, rows: Any, tolerance: float = 1e-4) -> float:
    """Largest difference between the export and the native model on ``rows``; refuse above ``tolerance``.

    ``rows`` go to the native model as given (a DataFrame keeps its feature names and categoricals)
    and to the export as Triton receives them: float32 numbers and strings.
    """
    native = model.predict_proba(rows) if kind == "classifier" else model.predict(rows)
    try:
        exported = run(onnx, rows).reshape(np.shape(native))
    except Exception as exc:  # onnxruntime's own kinds: an export that does not compute what the model does
        raise OnnxExportError(f"The ONNX export of {type(model).__name__} fails on {len(rows)} sample rows "
                              f"({exc}); refusing to deploy.") from None
    worst = difference(exported, native)
    if not worst <= tolerance:
        raise OnnxExportError(
            f"The ONNX export differs from the model by up to {worst:.3g} (allowed {tolerance:g}) on "
            f"{len(rows)} sample rows; refusing to deploy. Missing values are the usual cause (ONNX tree "
            "ensembles send NaN down a fixed branch): impute them in the features, or use XGBoost/LightGBM."
        )
    return worst
