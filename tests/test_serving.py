"""Serving on a real Triton: deploy, predict over gRPC with online features, survive a crash, refuse bad input."""

import os
import signal

import numpy as np
import pytest

import mlplat
from mlplat.demo import customer, customer_profile, driver, driver_stats, make_dataset
from mlplat.errors import ModelNotFound, OnnxExportError, ServingError
from mlplat.serving.triton import TritonService, triton_installed
from mlplat.training.run import load_model

FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate", "customer_profile:avg_fare"]
DRIVER_FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate"]
ROWS = [{"driver_id": d, "customer_id": c} for d, c in [(1, 5), (2, 7), (3, 9), (999, 1)]]  # 999: never seen


def complete_rows(p):
    """Trips late enough that every driver has features (no missing values)."""
    first = p.features.get_training_set(p.labels, DRIVER_FEATURES)
    return p.labels[first[DRIVER_FEATURES[0].split(":")[1]].notna().to_numpy() & first["acceptance_rate"].notna().to_numpy()]


@pytest.fixture(scope="module")
def platform(tmp_path_factory, redis_url):
    p = mlplat.connect(home=str(tmp_path_factory.mktemp("serving")), online_store=redis_url, online_prefix="serving")
    if not triton_installed(p.settings):
        pytest.skip(f"no Triton in {p.settings.triton_env}: `make triton` creates it")
    stats, profiles, labels = make_dataset(drivers=100, customers=50, days=5, trips=2000, seed=11)
    p.features.apply([driver, customer, driver_stats, customer_profile])
    p.features.ingest("driver_stats", stats)
    p.features.ingest("customer_profile", profiles)
    p.features.materialize()
    p.labels = labels
    yield p
    p.close()
    TritonService(p.settings).stop()


def native_outputs(p, deployment, family, rows=ROWS):
    online = p.features.get_online_features(deployment.features, rows).to_dict()
    X = np.array([v for k, v in online.items() if k not in rows[0]], dtype=np.float32).T
    return load_model(p.settings, deployment.name, deployment.version, family).predict_proba(X)


@pytest.mark.parametrize("estimator, family, features", [
    ("xgboost.XGBClassifier", "xgboost", FEATURES), ("lightgbm.LGBMClassifier", "lightgbm", FEATURES),
    ("sklearn.ensemble.RandomForestClassifier", "sklearn", DRIVER_FEATURES)])
def test_deploy_and_predict_match_the_native_model(platform, estimator, family, features):
    name = f"serve_{family}"
    labels = platform.labels if features is FEATURES else complete_rows(platform)
    trained = platform.train(estimator, features=features, entity_df=labels, target="completed", name=name,
                             params={"n_estimators": 20})
    platform.models.promote(name)
    deployment = platform.deploy(name)
    assert (deployment.status, deployment.version, deployment.triton_model) == ("READY", trained.version, name)
    assert deployment.endpoint.startswith("127.0.0.1:")
    prediction = platform.predict(name, ROWS)
    assert prediction.version == trained.version and prediction.outputs.shape == (4, 2)
    # unknown entities (NaN features) follow ONNX's missing-value rule, which scikit-learn trees do not share
    known = slice(None) if family != "sklearn" else slice(0, 3)
    np.testing.assert_allclose(prediction.outputs[known], native_outputs(platform, deployment, family)[known], atol=1e-5)
    assert name in [d.name for d in platform.deployments()]


def test_an_export_that_predicts_differently_is_refused(platform):
    # scikit-learn forests learn where missing values go; ONNX tree ensembles cannot say so
    platform.train("sklearn.ensemble.RandomForestClassifier", features=FEATURES, entity_df=platform.labels,
                   target="completed", name="with_gaps", params={"n_estimators": 20})
    with pytest.raises(OnnxExportError, match="refusing to deploy. Missing values"):
        platform.deploy("with_gaps", alias="challenger")
    assert "with_gaps" not in [d.name for d in platform.deployments()]


def test_raw_features_and_column_input(platform):
    name = "serve_xgboost"
    by_columns = platform.predict(name, {"driver_id": [1, 2], "customer_id": [5, 7]})
    raw = platform.predict(name, features=[[4.5, 0.9, 12.0], [3.0, 0.2, 40.0]])
    assert by_columns.outputs.shape == raw.outputs.shape == (2, 2)
    np.testing.assert_allclose(by_columns.outputs, platform.predict(name, ROWS[:2]).outputs)


def test_triton_killed_comes_back_and_predictions_resume(platform):
    before = platform.predict("serve_xgboost", ROWS).outputs
    os.kill(TritonService(platform.settings).status().pid, signal.SIGKILL)
    after = platform.predict("serve_xgboost", ROWS)
    np.testing.assert_allclose(after.outputs, before)
    assert {d.name: d.status for d in platform.deployments()}["serve_xgboost"] == "READY"


def test_undeploy(platform):
    trained = platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=platform.labels,
                             target="completed", name="short_lived", params={"n_estimators": 5})
    platform.deploy("short_lived", version=trained.version)
    platform.undeploy("short_lived")
    assert "short_lived" not in [d.name for d in platform.deployments()]
    with pytest.raises(ServingError, match="not deployed"):
        platform.predict("short_lived", ROWS)


def test_bad_requests_are_explained(platform):
    with pytest.raises(ModelNotFound, match="not a registered model"):
        platform.deploy("nope")
    with pytest.raises(ServingError, match="takes rows of 3 features"):
        platform.predict("serve_xgboost", features=[[1.0, 2.0]])
    with pytest.raises(ServingError, match="not deployed"):
        platform.undeploy("nope")
    with pytest.raises(OnnxExportError, match="refusing to deploy"):
        platform.deploy("serve_xgboost", tolerance=-1)  # no export can meet a negative tolerance


def test_a_model_onnx_cannot_express_is_refused(platform):
    platform.train("sklearn.semi_supervised.LabelPropagation", features=DRIVER_FEATURES,
                   entity_df=complete_rows(platform), target="completed", name="exotic")
    with pytest.raises(OnnxExportError, match="LabelPropagation cannot be expressed in ONNX"):
        platform.deploy("exotic", alias="challenger")
