"""String features end to end: trained through a scikit-learn pipeline or a booster's native categorical support,
exported to ONNX with a string input, served by Triton, and predicted as the native model predicts, unseen
categories included."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from platforms import triton_platform
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from mlplat.errors import ServingError, TrainingError
from mlplat.registry.artifacts import load_model
from mlplat.registry.tracking import session

FEATURES = ["driver_stats:rating", "customer_profile:membership", "customer_profile:avg_fare"]
ROWS = [{"driver_id": d, "customer_id": c} for d, c in [(1, 5), (2, 7), (3, 9), (4, 999)]]  # 999: never seen


@pytest.fixture(scope="module")
def platform(tmp_path_factory, redis_url):
    yield from triton_platform(tmp_path_factory.mktemp("categorical"), redis_url,
                               drivers=60, customers=40, days=8, trips=1500, seed=5)


def one_hot_pipeline():
    """One-hot membership (an unseen category: all zeros), impute the numbers (a driver without a rating)."""
    encode = ColumnTransformer([("membership", OneHotEncoder(handle_unknown="ignore"), ["membership"]),
                                ("numbers", SimpleImputer(strategy="median"), ["rating", "avg_fare"])])
    return Pipeline([("encode", encode), ("model", LogisticRegression(max_iter=500))])


def native_rows(p, rows):
    """The rows' features as the model was trained on them (strings, "" where missing), read independently."""
    online = p.features.get_online_features(FEATURES, rows).to_dict()
    frame = pd.DataFrame({"rating": online["rating"], "membership": online["membership"],
                          "avg_fare": online["avg_fare"]})
    return frame.assign(rating=frame.rating.astype("float64"), avg_fare=frame.avg_fare.astype("float64"),
                        membership=frame.membership.fillna("").astype(object))


def grpc_by_id(p, name, rows):
    client = grpcclient.InferenceServerClient(p.serving_target.ensure().grpc)
    inputs = []
    for key in ("driver_id", "customer_id"):
        ids = np.array([[str(r[key]).encode()] for r in rows], dtype=object)
        inputs.append(grpcclient.InferInput(key, list(ids.shape), "BYTES"))
        inputs[-1].set_data_from_numpy(ids)
    return client.infer(f"{name}_by_id", inputs).as_numpy("probabilities")


def test_a_pipeline_with_a_one_hot_string_and_an_imputed_number_serves_what_it_predicts(platform):
    trained = platform.train(one_hot_pipeline(), features=FEATURES, entity_df=platform.labels, target="completed",
                             name="cat_pipeline")
    assert trained.version and 0 <= trained.metrics["roc_auc"] <= 1
    platform.models.promote("cat_pipeline")
    deployment = platform.deploy("cat_pipeline")
    assert deployment.status == "READY"
    config = (platform.serving_target.models / "cat_pipeline" / "config.pbtxt").read_text()
    assert 'name: "input_text" data_type: TYPE_STRING dims: [ 1 ]' in config
    assert 'name: "input" data_type: TYPE_FP32 dims: [ 2 ]' in config

    model = load_model(platform.settings, "cat_pipeline", trained.version, "sklearn")
    expected = model.predict_proba(native_rows(platform, ROWS)[["rating", "membership", "avg_fare"]])
    served = platform.predict("cat_pipeline", ROWS)
    np.testing.assert_allclose(served.outputs, expected, atol=1e-5)
    assert served.missing == {3: ["customer_profile@1:membership", "customer_profile@1:avg_fare"]}
    np.testing.assert_allclose(grpc_by_id(platform, "cat_pipeline", ROWS), expected, atol=1e-5)

    # Rows sent by the caller: an unseen category is all zeros in the one-hot encoding, as in scikit-learn.
    rows = [[4.5, "platinum", 20.0], [4.5, "premium", 20.0], [np.nan, "", 12.5], [3.0, None, np.nan]]
    frame = pd.DataFrame(rows, columns=["rating", "membership", "avg_fare"]).fillna({"membership": ""})
    np.testing.assert_allclose(platform.predict("cat_pipeline", features=rows).outputs,
                               model.predict_proba(frame), atol=1e-5)
    with pytest.raises(ServingError, match="membership is a string feature, got 3"):
        platform.predict("cat_pipeline", features=[[4.5, 3, 20.0]])
    with pytest.raises(ServingError, match="without NUL"):
        platform.predict("cat_pipeline", features=[[4.5, "plus\0", 20.0]])
    with pytest.raises(ServingError, match="not text"):
        platform.predict("cat_pipeline", features=[[4.5, "\ud800", 20.0]])

    # The prediction log holds each string as its category's index (NaN: missing or unseen); the monitor's check
    # runs on the model's numbers.
    platform.serving.log.flush()
    logged = platform.monitor.predictions("cat_pipeline").tail(4)  # the rows the caller sent, above
    assert logged["membership"].iloc[1] == 2.0  # "premium", of ["basic", "plus", "premium"]
    assert logged["membership"].iloc[[0, 2, 3]].isna().all()  # "platinum" (unseen), "", None
    assert logged["avg_fare"].tolist()[:3] == [20.0, 20.0, 12.5]
    platform.monitor.check("cat_pipeline")


@pytest.mark.parametrize("estimator", ["lightgbm.LGBMClassifier", "xgboost.XGBClassifier"])
def test_a_booster_takes_strings_as_native_categoricals_and_serves_them(platform, estimator):
    name = f"cat_{estimator.split('.')[0]}"
    trained = platform.train(estimator, features=FEATURES, entity_df=platform.labels, target="completed",
                             name=name, params={"n_estimators": 30})
    family = estimator.split(".")[0]
    model = load_model(platform.settings, name, trained.version, family)
    with session(platform.settings):
        spec = mlflow.artifacts.load_dict(f"runs:/{trained.run_id}/mlplat/train_spec.json")
    assert spec["categories"] == {"membership": ["basic", "plus", "premium"]}
    platform.models.promote(name)
    assert platform.deploy(name).status == "READY"

    rows = [[4.5, "premium", 20.0], [4.5, "basic", 20.0], [4.5, "platinum", 20.0], [4.5, "", 20.0],
            [np.nan, "plus", np.nan]]
    as_trained = pd.DataFrame(rows, columns=["rating", "membership", "avg_fare"])
    as_trained["membership"] = pd.Categorical(as_trained.membership.replace("", None),
                                              categories=["basic", "plus", "premium"])
    expected = model.predict_proba(as_trained)
    served = platform.predict(name, features=rows).outputs
    np.testing.assert_allclose(served, expected, atol=1e-5)
    # An unseen category is missing to the booster, as an absent one is.
    np.testing.assert_allclose(served[2], served[3], atol=1e-6)
    np.testing.assert_allclose(grpc_by_id(platform, name, ROWS),
                               platform.predict(name, ROWS).outputs, atol=1e-5)


def test_the_pyfunc_of_a_booster_takes_text_and_returns_probabilities(platform):
    trained = platform.train("lightgbm.LGBMClassifier", features=FEATURES, entity_df=platform.labels,
                             target="completed", name="cat_pyfunc", params={"n_estimators": 20})
    with session(platform.settings):
        loaded = mlflow.pyfunc.load_model("models:/cat_pyfunc/" + trained.version)
        info = mlflow.models.get_model_info("models:/cat_pyfunc/" + trained.version)
    assert info.metadata["mlplat"]["classes"] == [0, 1]
    rows = pd.DataFrame({"rating": [4.5, 4.5], "membership": ["premium", "platinum"], "avg_fare": [20.0, 20.0]})
    native = load_model(platform.settings, "cat_pyfunc", trained.version, "lightgbm")
    expected = native.predict_proba(rows.assign(membership=pd.Categorical(rows.membership,
                                                                          categories=["basic", "plus", "premium"])))
    np.testing.assert_allclose(loaded.predict(rows), expected, atol=1e-9)


def test_a_plain_estimator_given_strings_says_how_to_encode_them(platform):
    with pytest.raises(TrainingError, match="OneHotEncoder"):
        platform.train("logistic_regression", features=FEATURES, entity_df=platform.labels, target="completed",
                       name="cat_plain")
    assert platform.models.list() == [] or "cat_plain" not in [m["name"] for m in platform.models.list()]


def imputed_forest():
    return Pipeline([("impute", SimpleImputer()), ("forest", RandomForestClassifier(n_estimators=15))])


@pytest.mark.parametrize("name, estimator, params", [
    ("classes_lightgbm", "lightgbm.LGBMClassifier", {"n_estimators": 15}),
    ("classes_xgboost", "xgboost.XGBClassifier", {"n_estimators": 15}),
    ("classes_forest", imputed_forest(), None)])
def test_a_multi_class_model_answers_probabilities_alike_from_pyfunc_triton_and_predict(platform, name, estimator,
                                                                                         params):
    labels = platform.labels.assign(segment=platform.labels.driver_id % 3)  # three classes
    numbers = ["driver_stats:rating", "driver_stats:acceptance_rate"]
    trained = platform.train(estimator, features=numbers, entity_df=labels.drop(columns="completed"),
                             target="segment", name=name, params=params)
    platform.models.promote(name)
    platform.deploy(name)
    rows = [[4.6, 0.9], [4.1, 0.5], [np.nan, 0.7]]
    frame = pd.DataFrame(rows, columns=["rating", "acceptance_rate"])
    with session(platform.settings):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{trained.version}").predict(frame)
        info = mlflow.models.get_model_info(f"models:/{name}/{trained.version}")
    served = platform.predict(name, features=rows).outputs
    assert served.shape == (3, 3) and info.metadata["mlplat"]["classes"] == [0, 1, 2]
    np.testing.assert_allclose(np.asarray(pyfunc), served, atol=1e-5)
    np.testing.assert_allclose(served.sum(axis=1), 1, atol=1e-5)
    assert tuple(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3)


def test_a_regressors_pyfunc_returns_its_values(platform):
    labels = platform.labels.assign(fare=platform.labels.driver_id * 1.5)
    trained = platform.train("xgboost.XGBRegressor", features=["driver_stats:rating"],
                             entity_df=labels.drop(columns="completed"), target="fare", name="values",
                             params={"n_estimators": 10})
    frame = pd.DataFrame({"rating": [4.6, 4.1]})
    native = load_model(platform.settings, "values", trained.version, "xgboost").predict(frame)
    with session(platform.settings):
        pyfunc = mlflow.pyfunc.load_model(f"models:/values/{trained.version}").predict(frame)
    np.testing.assert_allclose(np.asarray(pyfunc).ravel(), native, atol=1e-6)


def test_a_pipeline_run_is_reproduced_from_its_record(platform):
    trained = platform.train(one_hot_pipeline(), features=FEATURES, entity_df=platform.labels.tail(600),
                             target="completed", name="cat_again")
    again = platform.reproduce(trained.run_id)
    assert again.identical, again.metrics


def test_tuning_a_booster_on_strings_trains_its_best_as_categoricals(platform):
    tuned = platform.tune("lightgbm.LGBMClassifier", {"num_leaves": [4, 8]}, features=FEATURES,
                          entity_df=platform.labels, target="completed", name="cat_tuned",
                          params={"n_estimators": 10})
    with session(platform.settings):
        spec = mlflow.artifacts.load_dict(f"runs:/{tuned.result.run_id}/mlplat/train_spec.json")
    assert spec["categories"]["membership"] == ["basic", "plus", "premium"]
