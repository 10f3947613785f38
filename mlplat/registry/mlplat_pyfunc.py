"""The MLflow pyfunc of mlplat's XGBoost and LightGBM models, shipped inside each such model as its code.

``mlflow.pyfunc.load_model(uri).predict(rows)`` returns what Triton and ``p.predict`` return: a classifier's
class probabilities (its classes are in the model's metadata, ``mlplat.classes``), a regressor's values. String
features come in as text and are taken as the categories the model was trained with (a value never seen, or
``""``, is missing), as the model's ONNX export takes them. It imports only MLflow, pandas, PyYAML and the
booster's own library, so the model loads wherever those are installed, mlplat or not.
"""

import importlib
import os

import pandas as pd
import yaml


def _load_pyfunc(path):
    """Called by ``mlflow.pyfunc.load_model`` with the model's data path."""
    folder = path if os.path.isfile(os.path.join(path, "MLmodel")) else os.path.dirname(path)
    with open(os.path.join(folder, "MLmodel")) as handle:
        about = (yaml.safe_load(handle).get("metadata") or {})["mlplat"]
    native = importlib.import_module(f"mlflow.{about['family']}")._load_pyfunc(path).get_raw_model()
    return _Model(native, about)


class _Model:
    def __init__(self, model, about):
        self.model = model
        self.kind = about["kind"]
        self.columns = about["columns"]
        self.categories = about.get("categories") or {}

    def get_raw_model(self):
        """The booster itself (``predict_proba`` and the rest)."""
        return self.model

    def predict(self, rows, params=None):
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=self.columns)
        frame = frame.assign(**{c: pd.Categorical(frame[c].where(frame[c].isin(found), None), categories=found)
                                for c, found in self.categories.items() if c in frame.columns})
        return self.model.predict_proba(frame) if self.kind == "classifier" else self.model.predict(frame)
