"""The notebook templates in templates/, run as papermill jobs on a real kernel in the order a team
uses them: backfill features, train and register, batch score, evaluate."""

import ast
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics

from mlplat.demo import driver, driver_stats, make_dataset
from mlplat.errors import JobError
from mlplat.registry.artifacts import load_spec

TEMPLATES = sorted((Path(__file__).resolve().parents[2] / "templates").glob("*.ipynb"))
TEMPLATE = {path.stem: path for path in TEMPLATES}
FEATURES = ["rating", "trips_today", "acceptance_rate", "avg_speed_kmh"]


def outputs(run):
    """What an executed job notebook printed, and the HTML it displayed."""
    found = [o for c in nbformat.read(run.output, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    return ("".join(o.text for o in found if o.get("name") == "stdout"),
            "".join(o.get("data", {}).get("text/html", "") for o in found))


@pytest.fixture
def p(kernel_platform):
    return kernel_platform


def test_backfill_train_score_and_evaluate(p, tmp_path):
    stats, _, labels = make_dataset(drivers=50, customers=10, days=4, trips=600, seed=3)
    p.features.apply([driver, driver_stats])
    stats.to_csv(tmp_path / "stats.csv", index=False)
    stats.to_parquet(tmp_path / "stats.parquet")
    day = stats["event_timestamp"].dt.strftime("%Y-%m-%d")
    days = sorted(day.unique())

    # a window from CSV: the first and the last day stay out, nothing goes online
    run = p.jobs.run(TEMPLATE["feature_backfill"], parameters={
        "view": "driver_stats", "source": str(tmp_path / "stats.csv"), "start": days[1], "end": days[-1]})
    window = stats[day.isin(days[1:-1])]
    assert 0 < len(window) < len(stats)
    assert f"driver_stats v1: ingested {len(window)} rows" in outputs(run)[0]
    pd.testing.assert_frame_equal(stored(tmp_path), ordered(window))
    assert p.features.get_online_features(["driver_stats:rating"], {"driver_id": [1]}).to_dict()["rating"] == [None]

    # the rest from Parquet, open-ended, then materialised: the first day is still out
    p.jobs.run(TEMPLATE["feature_backfill"], parameters={
        "view": "driver_stats", "source": str(tmp_path / "stats.parquet"), "start": days[-1], "materialize": True})
    pd.testing.assert_frame_equal(stored(tmp_path), ordered(stats[day > days[0]]))
    latest = stats.sort_values("event_timestamp").groupby("driver_id")["rating"].last()
    online = p.features.get_online_features(["driver_stats:rating"], {"driver_id": latest.index.tolist()})
    np.testing.assert_array_equal(np.float32(online.to_dict()["rating"]), latest.to_numpy())

    # trained, gated, registered and promoted
    labels.to_parquet(tmp_path / "labels.parquet")
    trained = p.jobs.run(TEMPLATE["train_and_register"], parameters={
        "name": "trips", "estimator": "xgboost.XGBClassifier", "features": ["driver_stats:*"],
        "labels": str(tmp_path / "labels.parquet"), "target": "completed",
        "params": {"n_estimators": 10, "max_depth": 3}, "gate_metric": "roc_auc", "gate_min": 0.55, "promote": True})
    champion = p.models.get("trips")
    assert (champion.version, champion.aliases) == ("1", ["champion"])
    printed, html = outputs(trained)
    line = printed.splitlines()[0]
    assert line.startswith("trips: version 1, rejected None, metrics ")
    assert ast.literal_eval(line.partition("metrics ")[2]) == champion.metrics
    assert "registered as version 1" in html
    assert load_spec(p.settings, champion.run_id)[0].validation == {"metric": "roc_auc", "min": 0.55, "max": None}

    # independently: the champion from MLflow on its features as of each row's time
    recent = labels.tail(200).reset_index(drop=True)
    model = p.models.load("trips")
    X = p.features.get_training_set(recent, champion.features)[FEATURES].astype("float64")
    probabilities = np.asarray(model.predict(X))  # the pyfunc answers class probabilities, as serving does
    np.testing.assert_array_equal(probabilities, model.get_raw_model().predict_proba(X))
    predicted, probability = probabilities.argmax(axis=1), probabilities[:, 1]

    entities = recent.drop(columns="completed")
    entities.to_parquet(tmp_path / "entities.parquet")
    scored = p.jobs.run(TEMPLATE["batch_scoring"], parameters={
        "name": "trips", "entities": str(tmp_path / "entities.parquet"), "output": str(tmp_path / "scores.parquet")})
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert f"trips version 1 scored {len(entities)} rows" in outputs(scored)[0]
    pd.testing.assert_frame_equal(scores[entities.columns], entities)
    np.testing.assert_array_equal(scores["prediction"], predicted)
    np.testing.assert_allclose(scores["probability_1"], probability, rtol=1e-6)

    recent.to_parquet(tmp_path / "recent.parquet")
    report = p.jobs.run(TEMPLATE["evaluation_report"], parameters={
        "name": "trips", "labels": str(tmp_path / "recent.parquet")})
    printed, html = outputs(report)
    printed = printed.splitlines()
    assert printed[0] == f"trips version 1 on {len(recent)} rows:"
    y = recent["completed"]
    assert ast.literal_eval(printed[1]) == pytest.approx({
        "roc_auc": metrics.roc_auc_score(y, probability), "pr_auc": metrics.average_precision_score(y, probability),
        "accuracy": metrics.accuracy_score(y, predicted), "f1": metrics.f1_score(y, predicted),
        "log_loss": metrics.log_loss(y, probability)}, rel=1e-6)
    assert html.count("data:image/png;base64,") >= 2 and f"trips version 1 on {len(recent)} rows" in html
    assert "feature view" in html and "driver_stats v1" in html  # the lineage


def stored(tmp_path):
    """Every row in the offline store, read straight from its Parquet files."""
    return ordered(pd.read_parquet(tmp_path / "h" / "offline" / "driver_stats" / "v1"))


def ordered(frame):
    columns = ["driver_id", "event_timestamp", *FEATURES]
    frame = frame[columns].astype({"event_timestamp": "datetime64[ns, UTC]"})  # whatever unit pandas read
    return frame.sort_values(["driver_id", "event_timestamp"], ignore_index=True)


@pytest.mark.parametrize("template, typo, meant", [
    ("feature_backfill", "veiw", "view"), ("train_and_register", "gate_mni", "gate_min"),
    ("batch_scoring", "entites", "entities"), ("evaluation_report", "lables", "labels")])
def test_an_undeclared_parameter_is_refused_before_anything_runs(p, template, typo, meant):
    with pytest.raises(JobError, match=f"declares no parameter '{typo}' \\(did you mean '{meant}'\\?\\)"):
        p.jobs.run(TEMPLATE[template], parameters={typo: 1})
    assert p.jobs.history() == []


def test_templates_are_committed_clean():
    assert sorted(TEMPLATE) == ["batch_scoring", "evaluation_report", "feature_backfill", "feature_compute",
                                "monitor_check", "train_and_register"]
    for path in TEMPLATES:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.kernelspec.name == "mlplat"  # "Python 3 (mlplat)": the magics loaded
        assert [c.metadata.get("tags") for c in nb.cells[:2]] == [None, ["parameters"]]
        assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
