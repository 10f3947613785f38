"""Exports of models that take strings compute what the models compute, for any text a caller sends."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lightgbm import LGBMClassifier
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder
from xgboost import XGBClassifier

from mlplat.registry.artifacts import categories_of, model_inputs
from mlplat.serving.onnx_export import Inputs, export, run

COLUMNS = ["rating", "membership", "city"]
KINDS = ["basic", "plus", "premium"]


def training_rows(n=600, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"rating": rng.normal(4.5, 0.3, n), "membership": rng.choice([*KINDS, None], n),
                          "city": rng.choice(["Paris", "Lyon", "Zürich"], n)})
    frame.loc[rng.random(n) < 0.1, "rating"] = np.nan
    label = ((frame.rating.fillna(4.5) > 4.5) ^ (frame.membership == "premium") ^ (frame.city == "Lyon")).astype(int)
    return model_inputs(frame, COLUMNS), label


def pipeline():
    encode = ColumnTransformer([("one_hot", OneHotEncoder(handle_unknown="ignore"), ["membership"]),
                                ("ordinal", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                                 ["city"]),
                                ("numbers", SimpleImputer(strategy="median"), ["rating"])])
    return Pipeline([("encode", encode), ("model", LogisticRegression())])


X, y = training_rows()
CATEGORIES = categories_of(X)
FITTED = {"sklearn": pipeline().fit(X, y),
          "lightgbm": LGBMClassifier(n_estimators=20, verbose=-1).fit(model_inputs(X, COLUMNS, CATEGORIES), y),
          "xgboost": XGBClassifier(n_estimators=20, enable_categorical=True).fit(model_inputs(X, COLUMNS, CATEGORIES), y)}
EXPORTS = {family: export(model, family, "classifier", COLUMNS, ["membership", "city"],
                          CATEGORIES if family != "sklearn" else None) for family, model in FITTED.items()}

# Any text but NUL, which ends a string inside ONNX, and lone surrogates, which are not UTF-8: p.predict refuses both.
texts = st.one_of(st.sampled_from([*KINDS, "", "Paris", "Lyon", "Zürich"]),
                  st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12))
row = st.tuples(st.one_of(st.floats(1, 5), st.just(float("nan"))), texts, texts)


@pytest.mark.parametrize("family", list(FITTED))
@settings(max_examples=40, deadline=None)
@given(rows=st.lists(row, min_size=1, max_size=20))
def test_the_export_predicts_as_the_model_for_any_text(family, rows):
    frame = pd.DataFrame(rows, columns=COLUMNS).astype({"membership": object, "city": object})
    native_rows = model_inputs(frame, COLUMNS, CATEGORIES if family != "sklearn" else None)
    expected = FITTED[family].predict_proba(native_rows)
    np.testing.assert_allclose(run(EXPORTS[family], frame), expected, atol=1e-5)


def test_the_export_takes_numbers_and_strings_as_two_tensors():
    onnx = EXPORTS["lightgbm"]
    assert onnx.inputs == Inputs([0], [1, 2])
    assert onnx.inputs.tensors() == [("input", "TYPE_FP32", 1), ("input_text", "TYPE_STRING", 2)]
