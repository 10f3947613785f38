"""Training runs: tracked, gated, registered, reproducible, and clear when something is wrong."""

import hashlib
import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import mlplat
from mlplat.demo import customer, customer_profile, driver, driver_stats, make_dataset
from mlplat.errors import GateFailed, InvalidArgument, MissingColumnError, TrackingUnavailable, TrainingError
from mlplat.registry import tracking
from mlplat.services import free_port
from mlplat.training import device

FEATURES = ["driver_stats:*", "customer_profile:avg_fare"]


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(drivers=150, customers=100, days=10, trips=3000, seed=3)


@pytest.fixture(scope="module")
def platform(tmp_path_factory, redis_url, dataset):
    """One platform (and one MLflow store) for the module; tests use their own model names."""
    p = mlplat.connect(home=str(tmp_path_factory.mktemp("training")), online_store=redis_url,
                       online_prefix="training", user="ana", team="pricing")
    stats, profiles, _ = dataset
    p.features.apply([driver, customer, driver_stats, customer_profile])
    p.features.ingest("driver_stats", stats)
    p.features.ingest("customer_profile", profiles)
    yield p
    p.close()


@pytest.fixture
def labels(dataset):
    return dataset[2]


def run_of(p, run_id):
    with tracking.session(p.settings) as client:
        return client.get_run(run_id), client.list_artifacts(run_id, "plots")


def test_a_passing_model_is_tracked_registered_and_loads_back(platform, labels, monkeypatch, tmp_path):
    monkeypatch.setenv("MLPLAT_PROFILE", "gpu-x1")  # what a workspace's profile sets
    notebook = tmp_path / "pricing.ipynb"
    notebook.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    monkeypatch.setenv("MLPLAT_NOTEBOOK", str(notebook))  # the notebook the run comes from, as a kernel is told
    result = platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed",
                            name="passes", params={"n_estimators": 30, "max_depth": 3},
                            validation={"metric": "roc_auc", "min": 0.55})
    assert result.version is not None and result.rejected is None
    assert set(result.metrics) == {"roc_auc", "pr_auc", "accuracy", "f1", "log_loss"}
    run, plots = run_of(platform, result.run_id)
    assert run.info.status == "FINISHED"
    # The estimator's parameters under its own names (as MLflow's autolog), mlplat's own under "mlplat."
    assert run.data.params["max_depth"] == "3" and run.data.params["n_estimators"] == "30"
    assert run.data.params["mlplat.seed"] == "0" and run.data.params["mlplat.estimator"] == "xgboost.XGBClassifier"
    assert not any(key.startswith("param.") for key in run.data.params)
    assert json.loads(run.data.tags["mlplat.features"]) == [
        "driver_stats@1:rating", "driver_stats@1:trips_today", "driver_stats@1:acceptance_rate",
        "driver_stats@1:avg_speed_kmh", "customer_profile@1:avg_fare"]
    assert run.data.tags["mlplat.code_path"] == str(notebook.resolve())
    assert run.data.tags["mlplat.code_sha256"] == hashlib.sha256(notebook.read_bytes()).hexdigest()
    assert [run.data.tags[f"mlplat.{k}"] for k in ("user", "team", "profile")] == ["ana", "pricing", "gpu-x1"]
    assert (run.data.tags["mlplat.device"], run.data.tags["mlplat.device_reason"]) == ("cpu", "a CPU workspace")
    assert {a.path for a in plots} == {"plots/roc_pr.png", "plots/feature_importance.png"}
    registered = platform.models.get("passes", alias="challenger")
    assert (registered.version, registered.owner, registered.team) == (result.version, "ana", "pricing")
    model = platform.models.load("passes", result.version)
    with tracking.session(platform.settings):
        provenance = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/mlplat/provenance.json")
    frame = platform.features.get_training_set(labels.head(50), FEATURES)
    inputs = frame[["rating", "trips_today", "acceptance_rate", "avg_speed_kmh", "avg_fare"]].astype("float64")
    assert len(model.predict(inputs)) == 50
    assert any(line.startswith("mlflow==") for line in provenance["environment"])


def test_a_gpu_workspace_without_a_visible_gpu_fits_on_the_cpu_and_records_why(platform, labels, monkeypatch):
    monkeypatch.setenv("MLPLAT_DEVICE", "gpu:0")  # what the GPU profile and kernel set
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(device, "_NVIDIA_CONTROL", Path("/nonexistent/nvidiactl"))  # no driver, even on a GPU host
    result = platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed",
                            name="gpu-asked", params={"n_estimators": 5, "max_depth": 2})
    run, _ = run_of(platform, result.run_id)
    assert run.data.tags["mlplat.device"] == "cpu"
    assert run.data.tags["mlplat.device_reason"] == "gpu:0 was asked for, but no NVIDIA GPU is visible here"
    assert "device" not in run.data.params  # the estimator's parameters stay the user's


def test_metrics_are_those_of_the_later_rows(platform, labels):
    result = platform.train("sklearn.ensemble.RandomForestClassifier", features=["customer_profile:avg_fare"],
                            entity_df=labels, target="completed", name="later_rows", split={"test_size": 0.25},
                            params={"n_estimators": 10, "max_depth": 3})
    # independently: the latest quarter of rows by time, scored by the registered model
    cut = labels["event_timestamp"].sort_values().iloc[int(len(labels) * 0.75)]
    later = labels[labels["event_timestamp"] >= cut]
    assert later["event_timestamp"].min() > labels[labels["event_timestamp"] < cut]["event_timestamp"].max()
    frame = platform.features.get_training_set(later, ["customer_profile:avg_fare"])
    with tracking.session(platform.settings):
        model = mlflow.sklearn.load_model(f"models:/later_rows/{result.version}")
    scores = model.predict_proba(frame[["avg_fare"]].astype("float64"))[:, 1]
    assert result.metrics["roc_auc"] == pytest.approx(roc_auc_score(later["completed"], scores), abs=1e-12)


def test_a_failing_gate_registers_nothing(platform, labels):
    result = platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed",
                            name="refused", params={"n_estimators": 5}, validation={"metric": "roc_auc", "min": 0.999})
    assert result.version is None and "below the required minimum 0.999" in result.rejected
    run, _ = run_of(platform, result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlplat.gate"].startswith("refused")
    assert "refused" not in [m["name"] for m in platform.models.list()]
    with pytest.raises(GateFailed, match="not registered: roc_auc"):
        result.check()


def test_a_failed_fit_marks_the_run_failed(platform, labels):
    with pytest.raises(TrainingError, match="fit failed"):
        platform.train("sklearn.linear_model.LogisticRegression", features=FEATURES, entity_df=labels,
                       target="completed", name="broken", params={"C": -1.0})
    with tracking.session(platform.settings) as client:
        experiment = client.get_experiment_by_name("broken")
        (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert "broken" not in [m["name"] for m in platform.models.list()]


def test_estimator_instances_lightgbm_and_regressors(platform, labels):
    from sklearn.ensemble import RandomForestClassifier

    forest = platform.train(RandomForestClassifier(n_estimators=20, max_depth=4), features=FEATURES,
                            entity_df=labels, target="completed", name="forms")
    light = platform.train("lightgbm.LGBMClassifier", features=FEATURES, entity_df=labels, target="completed",
                           name="forms", params={"n_estimators": 20, "verbose": -1})
    fares = labels.assign(fare=labels["trip_id"] % 7 + 3.0)
    regression = platform.train("xgboost.XGBRegressor", features=FEATURES, entity_df=fares, target="fare",
                                name="fare", params={"n_estimators": 10})
    assert forest.version and light.version and regression.version
    assert set(regression.metrics) == {"rmse", "mae", "r2"}
    with tracking.session(platform.settings):
        assert mlflow.sklearn.load_model(f"models:/forms/{forest.version}").n_estimators == 20


@pytest.mark.parametrize("change, error, message", [
    (dict(estimator="xgboost.XGBClasifier"), InvalidArgument, "did you mean 'XGBClassifier'"),
    (dict(target="complete"), MissingColumnError, "no target column 'complete'"),
    (dict(params={"max_dept": 3}), InvalidArgument, "did you mean 'max_depth'"),
    (dict(validation={"metric": "rmse", "min": 1}), InvalidArgument, "not computed for a classifier"),
    (dict(split={"by": "week"}), InvalidArgument, "use 'time' or 'random'"),
])
def test_bad_requests_fail_before_any_run(platform, labels, change, error, message):
    options = dict(estimator="xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed",
                   name="bad_request")
    options.update(change)
    with pytest.raises(error, match=message):
        platform.train(options.pop("estimator"), **options)
    with tracking.session(platform.settings) as client:
        assert client.get_experiment_by_name("bad_request") is None


def test_a_split_with_one_class_is_refused(platform, labels):
    late = labels["event_timestamp"] >= labels["event_timestamp"].quantile(0.8)
    one_class = labels.assign(completed=np.where(late, 1, labels["completed"]))
    with pytest.raises(TrainingError, match="test rows hold one class only"):
        platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=one_class, target="completed",
                       name="one_class")


def test_reproduce_gives_identical_metrics(platform, labels):
    original = platform.train("sklearn.ensemble.RandomForestClassifier", features=FEATURES, entity_df=labels,
                              target="completed", name="again", params={"n_estimators": 15})
    again = platform.reproduce(original.run_id)
    assert again.identical and again.same_training_set
    assert again.metrics == original.metrics and again.run_id != original.run_id


def test_reproduce_notices_changed_data(platform, labels, dataset):
    original = platform.train("xgboost.XGBClassifier", features=["driver_stats:rating"], entity_df=labels,
                              target="completed", name="drift", params={"n_estimators": 5})
    stats = dataset[0]
    late = stats.assign(rating=np.float32(1.0), event_timestamp=stats["event_timestamp"] + pd.Timedelta(minutes=1))
    platform.features.ingest("driver_stats", late.head(200))  # late data changes what the rows saw
    again = platform.reproduce(original.run_id)
    assert not again.same_training_set and not again.identical


def test_the_dask_path_trains_and_reproduces_identically(platform, labels):
    from mlplat.training.cluster import Compute

    with Compute.local(workers=2, threads=1) as compute:
        result = platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed",
                                name="distributed", params={"n_estimators": 20, "max_depth": 3},
                                client=compute.client)
        again = platform.reproduce(result.run_id, client=compute.client)
    assert result.version is not None
    assert again.identical, (again.metrics, again.original_metrics)


def test_tune_runs_every_trial_nested_and_registers_the_best(platform, labels):
    tuned = platform.tune("xgboost.XGBClassifier", {"max_depth": [1, 3], "n_estimators": [5, 20]},
                          features=FEATURES, entity_df=labels, target="completed", name="tuned")
    assert len(tuned.trials) == 4
    best = tuned.trials.loc[tuned.trials["roc_auc"].idxmax()]
    assert tuned.best_params == {"max_depth": best["max_depth"], "n_estimators": best["n_estimators"]}
    with tracking.session(platform.settings) as client:
        experiment = client.get_experiment_by_name("tuned").experiment_id
        children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{tuned.parent_run_id}'")
    assert len(children) == 5  # four trials and the final training run
    assert tuned.result.version is not None


def test_an_unreachable_tracking_server_is_explained(tmp_path, redis_url, labels, dataset):
    p = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, online_prefix="unreachable",
                       tracking=f"http://127.0.0.1:{free_port()}")
    p.features.apply([driver, driver_stats])
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="Cannot use the MLflow tracking store"):
        p.train("xgboost.XGBClassifier", features=["driver_stats:rating"], entity_df=labels, target="completed",
                name="nowhere")
    assert time.monotonic() - started < 10
    p.close()


def test_tracking_and_registry_on_postgresql(tmp_path, redis_url, postgres_url, labels, dataset):
    p = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, online_prefix="pg",
                       tracking=postgres_url.replace("/postgres", "/postgres"))
    p.features.apply([driver, driver_stats])
    p.features.ingest("driver_stats", dataset[0])
    result = p.train("xgboost.XGBClassifier", features=["driver_stats:rating"], entity_df=labels,
                     target="completed", name="on_postgres", params={"n_estimators": 5})
    assert result.version is not None
    assert p.models.get("on_postgres", alias="challenger").run_id == result.run_id
    p.close()


def test_progress_is_shown_when_asked(platform, labels, capsys):
    platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed",
                   name="watched", params={"n_estimators": 5}, progress=True)
    shown = capsys.readouterr().err
    assert "train watched" in shown and "/4" in shown and "gate and register" in shown
    platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed",
                   name="watched", params={"n_estimators": 5})
    assert "train watched" not in capsys.readouterr().err  # no terminal here: nothing by default


def test_a_version_keeps_a_drift_reference_of_its_training(platform, labels):
    result = platform.train("sklearn.ensemble.RandomForestClassifier", features=FEATURES, entity_df=labels,
                            target="completed", name="watched", params={"n_estimators": 10})
    frame = platform.features.get_training_set(labels, FEATURES)
    columns = [c for c in frame.columns if c not in labels.columns]  # the model's features
    assert platform.models.drift("watched", frame[columns], version=result.version).drifted == []
    moved = frame[columns].assign(rating=frame["rating"] - 1.0)  # every driver rated a star lower
    report = platform.models.drift("watched", moved, version=result.version)
    assert report.drifted == ["rating"] and list(report.table.index) == columns
    with pytest.raises(InvalidArgument, match="share no column"):
        platform.models.drift("watched", labels[["trip_id"]], version=result.version)
